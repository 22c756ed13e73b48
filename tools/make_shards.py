"""Pack audio into webdataset tar shards of 16 kHz mono FLAC + JSON metadata, with an index.

usage: python tools/make_shards.py INPUT_DIR_OR_MANIFEST [SUPERVISIONS] --out DIR
           [--prefix train] [--max-duration-s 30] [--max-samples-per-shard 1000]
           [--max-shard-bytes 1e9] [--workers 4] [--strict]
       python tools/make_shards.py --recipe {librispeech,commonvoice,voxpopuli,aishell,none}
           CORPUS_ROOT --out DIR [--language en]
       python tools/make_shards.py --verify DIR/index.json
       python tools/make_shards.py --reindex DIR/index.json   (older sets: add sample indexes)

Input: a directory (searched recursively for .wav .flac .ogg .mp3), a manifest (.tsv with
a header, or .jsonl) with `path` and optional `transcript`, `speaker`, `language`, or
lhotse manifests: a RecordingSet and a SupervisionSet (.jsonl.gz), or a CutSet. Each
lhotse supervision becomes one sample cut at its time span, with its text, speaker and
language; recordings without supervisions are treated like directory files.

--recipe runs lhotse's corpus recipe on CORPUS_ROOT first (manifests go to DIR/manifests)
and writes one shard set per split, DIR/<split>/. Expected layouts:
  librispeech  <part>/SPEAKER/CHAPTER/*.flac + SPEAKER-CHAPTER.trans.txt (part: train-clean-100, ...)
  commonvoice  <lang>/clips/*.mp3 + <lang>/{train,dev,test}.tsv (the release's columns)
  voxpopuli    raw_audios/<lang>/<year>/*.ogg + asr_<lang>.tsv.gz placed in CORPUS_ROOT
               (transcribed `asr` task only; unlabelled VoxPopuli audio: --recipe none)
  aishell      data_aishell/transcript/aishell_transcript_v0.8.txt + data_aishell/wav/{train,dev,test}/SPK/*.wav
  none         any directory (today's directory mode), e.g. untranscribed conversational speech
Any rate, channel count, int or float samples: downmixed and resampled to 16 kHz mono.
Recordings longer than --max-duration-s are split at the quietest 20 ms frame of the last
5 s before the limit (supervised spans are kept whole: their transcript covers all of it).
Unreadable inputs are skipped and listed with their reason in DIR/report.json (exit code 1
with --strict). Keys are derived from sanitized relative paths plus a hash, so nothing is
ever written outside DIR whatever the input names are.
Beside each shard, a sample index (`train-000000.idx.json`: byte offsets, sizes and
durations of its samples) lets a resumed reader skip to its position without reading tars.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavlm_ds.data.index import reindex, verify_shards
from wavlm_ds.data.lhotse_io import RECIPES, CorpusError
from wavlm_ds.data.shards import pack


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", type=Path, nargs="?", help="directory, manifest, or CORPUS_ROOT")
    p.add_argument("supervisions", type=Path, nargs="?", help="lhotse SupervisionSet manifest")
    p.add_argument("--recipe", choices=RECIPES, help="run lhotse's recipe on INPUT first")
    p.add_argument("--language", default="en", help="VoxPopuli language (--recipe voxpopuli)")
    p.add_argument("--out", type=Path)
    p.add_argument("--prefix", default="train")
    p.add_argument("--max-duration-s", type=float, default=30.0)
    p.add_argument("--max-samples-per-shard", type=int, default=1000)
    p.add_argument("--max-shard-bytes", type=float, default=1e9)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--strict", action="store_true", help="exit 1 if any input was skipped")
    p.add_argument("--verify", type=Path, help="re-read shards against this index.json")
    p.add_argument("--reindex", type=Path, help="add per-sample indexes (resume without "
                   "reading tar bytes) to the shards of this older index.json")
    args = p.parse_args(argv)
    if args.reindex:
        print(f"{reindex(args.reindex)}: sample indexes written")
        return 0
    if args.verify:
        problems = verify_shards(args.verify)
        print("\n".join(problems) or f"{args.verify}: all shards complete")
        return 1 if problems else 0
    if args.input is None or args.out is None:
        p.error("INPUT and --out are required (or use --verify)")
    try:
        reports = pack(args.input, args.out, args.prefix, args.recipe, args.supervisions,
                       args.language, args.max_duration_s, args.max_samples_per_shard,
                       int(args.max_shard_bytes), args.workers)
    except CorpusError as err:
        print(f"make_shards: {err}", file=sys.stderr)
        return 2
    for out, report in reports:
        print(f"{out}: {report['samples']} samples, {report['hours']:.3f} h in "
              f"{report['shards']} shards; {len(report['skipped'])} inputs skipped "
              f"(see {out / 'report.json'})")
        for item in report["skipped"]:
            print(f"  skipped {item['path']}: {item['reason']}")
    return 1 if args.strict and any(r["skipped"] for _, r in reports) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
