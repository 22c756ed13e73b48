"""A real HTTP server on 127.0.0.1 for the object-storage tests: http.server plus Range
requests (the stock handler ignores them, and fsspec's random access needs them), with
faults: fail the first N requests with 503, cut chosen files mid-response."""
from __future__ import annotations

import contextlib
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class FaultyRangeHandler(SimpleHTTPRequestHandler):
    server: "FaultyServer"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        with self.server.lock:
            self.server.requests += 1
            failing = self.server.requests <= self.server.fail_first
        if failing:
            self.send_error(503, "try again")
            return
        path = Path(self.translate_path(self.path.split("?", 1)[0]))
        if not path.is_file():
            self.send_error(404, "no such object")
            return
        data = path.read_bytes()
        start, end = 0, len(data)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) + 1, len(data)) if match[2] else len(data)
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if path.name in self.server.cut:  # promise everything, send half, hang up
            end = start + (end - start) // 2
            self.close_connection = True
        self.wfile.write(data[start:end])


class FaultyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, fail_first: int = 0, cut: tuple[str, ...] = ()) -> None:
        super().__init__(("127.0.0.1", 0), partial(FaultyRangeHandler, directory=str(root)))
        self.lock = threading.Lock()
        self.requests, self.fail_first, self.cut = 0, fail_first, set(cut)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serve(root: Path, fail_first: int = 0, cut: tuple[str, ...] = ()) -> Iterator[FaultyServer]:
    server = FaultyServer(root, fail_first, cut)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
