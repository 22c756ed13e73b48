"""Opening shard bytes: local paths, `pipe:` commands and fsspec URLs (s3://, gs://, https://).

Local paths stay plain files. URLs go through fsspec (cloud back ends are the optional
`.[cloud]` extra: s3fs, gcsfs; `https://` needs aiohttp, from `fsspec[http]`); opening a URL
is retried `OPEN_RETRIES` times with exponential backoff on transient errors (a missing
object or a refused permission is not transient: it fails at once). A stream that breaks
mid-tar is not retried: the reader counts the shard as truncated and its samples as lost.
A `pipe:` command's exit status is checked when its stream ends: non-zero raises PipeError
with the tail of its stderr. Every byte read is counted in `stats["bytes_read"]`.

Names in logs and stat keys go through `redact`: no user:password@ and no query string
(presigned URLs carry their signature there) ever reaches a log line.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import tempfile
import time
from collections import Counter
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
OPEN_RETRIES = 4
BACKOFF_S = 0.25  # first wait; doubled after every failed attempt
STDERR_TAIL = 800  # bytes of a failed pipe: command's stderr kept for the error
T = TypeVar("T")


class PipeError(OSError):
    """A `pipe:` command exited with a non-zero status."""


def is_url(spec: str) -> bool:
    return "://" in spec and not spec.startswith("pipe:")


def redact(text: str) -> str:
    """`text` without URL credentials: user:password@ and ?query strings become ***."""
    text = re.sub(r"([a-zA-Z][\w+.-]*://)[^/@\s'\"]+@", r"\1***@", text)
    return re.sub(r"(://[^\s'\"]*?)\?[^\s'\"]*", r"\1?***", text)


def redact_config(config: dict) -> dict:
    """A config dict with every string redacted (what the run directory and checkpoints keep)."""
    return json.loads(redact(json.dumps(config)))


def _transient(err: BaseException) -> bool:
    return not isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError,
                                NotADirectoryError, ValueError))


def with_retries(action: Callable[[], T], url: str, stats: Counter | None = None,
                 retries: int = OPEN_RETRIES) -> T:
    """`action()`, retried with backoff on transient errors; the last error is raised."""
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as err:
            if attempt == retries or not _transient(err):
                raise
            if stats is not None:
                stats[f"retries:{redact(url)}"] += 1
            log.warning("%s: %s (%s), retry %d of %d", redact(url), type(err).__name__,
                        redact(str(err)), attempt + 1, retries)
            time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


class CountingReader:
    """A binary stream that adds the bytes it returns to stats["bytes_read"]."""

    def __init__(self, raw: BinaryIO, stats: Counter) -> None:
        self.raw, self.stats = raw, stats

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.stats["bytes_read"] += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _fsspec_open(url: str, start: int) -> Any:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    # block_size=0 streams (one request, no read-ahead cache). From an offset, HTTP streams
    # with a Range header; other back ends seek a random-access file (range requests).
    if not url.startswith(("http://", "https://")):
        f = fs.open(path, "rb", block_size=None if start else 0)
        if start:
            f.seek(start)
        return f
    # A size hint skips fsspec's HEAD request, which reports every failure (a 503 too) as
    # FileNotFoundError; the GET itself raises 404 as FileNotFoundError, other statuses as
    # errors that with_retries retries.
    headers = {"Range": f"bytes={start}-"} if start else {}
    return fs.open(path, "rb", block_size=0, size=1, headers=headers)


@contextlib.contextmanager
def open_shard(url: str, stats: Counter, start: int = 0) -> Iterator[CountingReader]:
    """A readable stream of `url` from byte `start` (0 for pipe: commands)."""
    if url.startswith("pipe:"):
        with _pipe(url[5:], stats) as stream:
            yield stream
        return
    if is_url(url):
        f = with_retries(lambda: _fsspec_open(url, start), url, stats)
    else:
        f = open(url, "rb")
        f.seek(start)
    with f:
        yield CountingReader(f, stats)


@contextlib.contextmanager
def _pipe(command: str, stats: Counter) -> Iterator[CountingReader]:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=err)
        failure = None
        try:
            yield CountingReader(proc.stdout, stats)
        except GeneratorExit:  # the reader stopped early: nothing to report
            proc.kill()
            proc.wait()
            proc.stdout.close()
            raise
        except Exception as exc:  # e.g. an empty or cut tar: the exit status says more
            failure = exc
        # Drain (a complete tar's trailing padding) so the command can exit by itself.
        while proc.poll() is None and proc.stdout.read(1 << 16):
            pass
        proc.stdout.close()
        code = proc.wait()
        if code != 0:
            err.seek(max(0, err.seek(0, 2) - STDERR_TAIL))
            tail = err.read().decode(errors="replace").strip()
            raise PipeError(f"pipe command exited with status {code}: {redact(tail)}") from failure
        if failure is not None:
            raise failure


def read_range(url: str, start: int, end: int, stats: Counter) -> bytes:
    """Bytes [start, end) of a local file or URL (one range request, retried)."""
    if is_url(url):
        import fsspec

        def fetch() -> bytes:
            fs, path = fsspec.core.url_to_fs(url)
            return fs.cat_file(path, start=start, end=end)
        data = with_retries(fetch, url, stats)
    else:
        with open(url, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    stats["bytes_read"] += len(data)
    return data


def read_bytes(url: str) -> bytes:
    """A whole small file (an index): local, or a URL with retries."""
    if not is_url(url):
        with open(url, "rb") as f:
            return f.read()
    import fsspec

    def fetch() -> bytes:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.cat_file(path)
    return with_retries(fetch, url)


def parent_url(url: str) -> str:
    """The directory part of a path or URL, without the trailing slash."""
    return url.rsplit("/", 1)[0] if "/" in url else "."
