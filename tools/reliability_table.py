"""RELIABILITY.md's table from the fault-injection report(s) the suite writes.

usage: python tools/reliability_table.py runs/reliability/report.jsonl [CI_REPORT.jsonl]

One row per fault: cases tried (and, given a second report from a CI-count run, how many
of them CI runs), what survived per case, what was lost, and the pytest command that
reproduces it. Reports come from `make reliability-full` (WAVLM_DS_RELIABILITY_REPORT).
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

T = "tests/reliability/"
TESTS = {  # fault text prefix -> test that produces its rows
    "corrupt shards": "test_fuzz.py::test_every_bad_sample_is_skipped_and_counted",
    "fuzzed corpus": "test_fuzz.py::test_fuzzed_corpus_through_loader_ranks_stay_in_step",
    "decoder fuzz": "test_fuzz.py::test_decoder_fuzz_never_crashes",
    "SIGKILL one rank at a step": "test_kill.py::test_kill_rank_and_resume",
    "SIGKILL during checkpoint save": "test_kill.py::test_kill_during_save",
    "NaN/inf loss on one rank": "test_numerics_security.py::test_nonfinite_steps_are_skipped_everywhere",
    "K non-finite": "test_numerics_security.py::test_abort_after_k_consecutive_nonfinite_steps",
    "malicious pickles": "test_numerics_security.py::test_malicious_files_are_refused",
    "SIGTERM to the node launcher": "test_signals_and_disk.py::test_sigterm_to_launcher",
    "disk full": "test_signals_and_disk.py::test_disk_full_during_save",
    "two nodes": "test_signals_and_disk.py::test_two_nodes_without_ssh",
}


def command(fault: str) -> str:
    test = next((t for k, t in TESTS.items() if fault.startswith(k)), None)
    return f"`.venv/bin/python -m pytest {T}{test}`" if test else "-"


def grouped(path: Path) -> OrderedDict:
    groups: OrderedDict = OrderedDict()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        groups.setdefault(row["fault"], []).append(row)
    return groups


def table(full: Path, ci: Path | None) -> str:
    rows, ci_rows = grouped(full), grouped(ci) if ci else {}
    out = ["| fault | cases | survived | lost | command |", "|---|---|---|---|---|"]
    for fault, cases in rows.items():
        count = f"{len(cases)} ({len(ci_rows.get(fault, []))} in CI)" if ci else str(len(cases))
        if len(cases) == 1:
            count = cases[0]["case"] + (f"; CI: {ci_rows[fault][0]['case']}"
                                        if ci and fault in ci_rows
                                        and ci_rows[fault][0]["case"] != cases[0]["case"] else "")
        survived = "<br>".join(f"{c['case']}: {c['survived']}" if len(cases) > 1
                               else c["survived"] for c in cases)
        lost = "<br>".join(dict.fromkeys(c["lost"] for c in cases))
        out.append(f"| {fault} | {count} | {survived} | {lost} | {command(fault)} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(table(Path(argv[0]), Path(argv[1]) if len(argv) > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
