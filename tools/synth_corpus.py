"""Synthesize the embedded demo corpus with espeak-ng + sox, and pack it into shards.

usage: python tools/synth_corpus.py --out DIR [--utterances 400] [--noise 16] [--workers 2]

English and Mandarin sentences (Mandarin as tone-numbered pinyin read by the
`cmn-latn-pinyin` voice; plain `cmn` misreads characters in this build) are built from
embedded word lists by a seeded generator, then spoken by 16 speakers (voice variant x
pitch x speed). espeak-ng writes 22.05 kHz WAV; `sox -R` (deterministic) normalizes the
level. Metadata per utterance: transcript, IPA phonemes (`espeak-ng -q --ipa`), speaker,
language and the synthesis settings. Splits are by speaker: 12 train, 2 validation,
2 test. Output: DIR/{train,validation,test}/ (shards + index.json) and, with --noise N,
DIR/noise/ with N noise recordings (white, pink, brown) for the mixing augmentation.
Needs no network.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wavlm_ds.data.synth import synth_corpus


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--utterances", type=int, default=400)
    p.add_argument("--noise", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--samples-per-shard", type=int, default=20)
    args = p.parse_args(argv)
    summary = synth_corpus(args.out, args.utterances, args.noise, args.workers, args.seed,
                           args.samples_per_shard)
    print(json.dumps({s: {"samples": r["samples"], "hours": round(r["hours"], 4),
                          "shards": r["shards"], "skipped": len(r["skipped"])}
                      for s, r in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
