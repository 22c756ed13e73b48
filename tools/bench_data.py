"""Data-path throughput: seconds of audio per second per CPU core through the real
TrainLoader (tar read + FLAC decode + crop + bucketing + collate), optionally + log-Mel.

usage: python tools/bench_data.py --speech DIR/index.json [--noise DIR/index.json]
                                  [--batches 40] [--json out.json]

Runs workers = 1 and 2 on each corpus and prints the FLAC compression ratio of each
(16-bit PCM bytes / FLAC bytes): noise compresses far worse, so it costs more to decode.
Also prints the padding fraction of one epoch of the speech corpus for several length-
bucketing windows (data.bucket_batches).
Per core = audio seconds / wall seconds / number of worker processes (the main process
only collates).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wavlm_ds.bench.data import compression_ratio, padding_fraction, throughput


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--speech", type=Path, required=True)
    p.add_argument("--noise", type=Path)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results = []
    for name, path in (("speech", args.speech), ("noise", args.noise)):
        if path is None:
            continue
        ratio = compression_ratio(path)
        for workers in (1, 2):
            for features in (False, True):
                r = throughput(path, workers, args.batches, features)
                results.append({"corpus": name, "flac_ratio": ratio, **r})
    print("| corpus | FLAC ratio | workers | + log-Mel | audio s/s | audio s per core-s |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['corpus']} | {r['flac_ratio']:.2f} | {r['workers']} | {r['features']} | "
              f"{r['audio_s_per_s']:.0f} | {r['audio_s_per_core_s']:.0f} |")
    padding = {bb: padding_fraction(args.speech, bb) for bb in (1, 8, 32)}
    print("\n| bucket_batches (demo batch 4, 6 s max) | padding fraction |\n|---|---|")
    for bb, frac in padding.items():
        print(f"| {bb} | {frac:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"throughput": results, "padding_fraction": padding},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
