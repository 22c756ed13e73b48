"""Corrupt-shard and decoder fuzzing (issue 9, item 4): every bad sample is skipped and
counted exactly, no worker dies, features stay finite, ranks stay in step."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tests.integration.conftest import speech_like
from tests.reliability.conftest import FULL
from wavlm_ds.config import DataConfig, SourceConfig
from wavlm_ds.data import TrainLoader
from wavlm_ds.data.audio import encode_flac
from wavlm_ds.data.index import ShardInfo, write_index
from wavlm_ds.data.pipeline import decode_crop, read_samples
from wavlm_ds.launch import ROOT, launcher_env
from wavlm_ds.ops.logmel import log_mel

SR = 16000
DEFECTS = ["none", "none", "bitflip", "cut_audio", "zero_bytes", "all_zero", "no_json",
           "no_audio", "bad_json", "huge", "nan_wav", "garbage"]
MAX_MEMBER = 200_000


def wav_bytes(x: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype=subtype)
    return buf.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Bit flips, header scribbles, cuts or splices: what bad disks and bad copies do."""
    b = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
        for _ in range(rng.integers(1, 32)):
            i = rng.integers(len(b))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        for _ in range(rng.integers(1, 8)):
            b[rng.integers(min(64, len(b)))] = int(rng.integers(256))
    elif kind == 2:
        b = b[: rng.integers(len(b))]
    else:
        i, j = sorted(rng.integers(len(b), size=2))
        b = b[:i] + b[j:] + b[i:j]
    return bytes(b)


def sample_members(key: str, defect: str, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    wav = speech_like(rng, float(rng.uniform(0.6, 1.5)))
    audio, ext = encode_flac(wav), "flac"
    meta = json.dumps({"key": key, "duration_s": len(wav) / SR}).encode()
    if defect == "bitflip":
        audio = mutate(audio, rng)
    elif defect == "cut_audio":
        audio = audio[: rng.integers(1, len(audio))]
    elif defect == "zero_bytes":
        audio = b""
    elif defect == "all_zero":
        audio = encode_flac(np.zeros_like(wav))
    elif defect == "bad_json":
        meta = b"{not json"
    elif defect == "huge":
        audio = bytes(MAX_MEMBER + 1)
    elif defect == "nan_wav":
        bad = wav.copy()
        bad[rng.integers(len(bad))] = np.nan
        audio, ext = wav_bytes(bad, "FLOAT"), "wav"
    elif defect == "garbage":
        audio = rng.bytes(int(rng.integers(10, 5000)))
    members = [(f"{key}.{ext}", audio), (f"{key}.json", meta)]
    if defect == "no_json":
        members = members[:1]
    elif defect == "no_audio":
        members = members[1:]
    return members


def write_fuzzed_shard(path: Path, n: int, rng: np.random.Generator, cut: bool) -> list[str]:
    """n samples with random defects; optionally cut at a random byte. Returns the defects."""
    defects = [DEFECTS[i] for i in rng.integers(len(DEFECTS), size=n)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, defect in enumerate(defects):
            for name, data in sample_members(f"{path.stem}s{i:03d}", defect, rng):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[: rng.integers(512, len(data))] if cut else data)
    return defects


SKIPS = ("missing_member", "bad_json", "too_short", "member_too_large", "bad_audio",
         "lost_samples")


def skipped(stats: Counter) -> int:
    return sum(v for k, v in stats.items() if k.split(":")[0] in SKIPS)


SHARD_CASES = 300 if FULL else 40


def test_every_bad_sample_is_skipped_and_counted(tmp_path, record):
    """Each shard: 12 samples with random defects, a third of the shards cut at a random
    byte. ok + skipped (by reason) + lost == 12 exactly, whatever the damage."""
    rng = np.random.default_rng(2026)
    cfg = DataConfig(max_member_bytes=MAX_MEMBER, min_duration_s=0.3)
    reasons: Counter = Counter()
    for case in range(SHARD_CASES):
        path = tmp_path / f"f{case:04d}.tar"
        defects = write_fuzzed_shard(path, 12, rng, cut=case % 3 == 0)
        stats: Counter = Counter()
        ok = 0
        for smp in read_samples(str(path), cfg, stats, expected=12):
            wav = decode_crop(smp, cfg, 0, 0, stats)
            if wav is not None:
                assert np.isfinite(wav).all() and len(wav) > 0
                ok += 1
        assert ok + skipped(stats) == 12, (case, defects, dict(stats))
        if case % 3:  # intact tar: every defect that cannot decode is refused
            must_fail = sum(d not in ("none", "bitflip", "cut_audio") for d in defects)
            assert skipped(stats) >= must_fail, (case, defects, dict(stats))
        reasons.update(k.split(":")[0] for k, v in stats.items() for _ in range(v))
    record(fault="corrupt shards (truncated tars, bit flips, missing/empty/huge members, "
           "silence, NaN, garbage)", case=f"{SHARD_CASES} shards x 12 samples",
           survived="ok + skipped + lost = 12 for every shard: " + ", ".join(
               f"{k} {v}" for k, v in sorted(reasons.items())), lost="only the bad samples")


def test_fuzzed_corpus_through_loader_ranks_stay_in_step(tmp_path, record):
    """2 ranks x 2 workers over fuzzed shards: every rank yields its full epoch, no worker
    dies, log-Mel features are finite, and the counts add up to the corpus."""
    rng = np.random.default_rng(7)
    infos = []
    for s in range(8):
        path = tmp_path / f"fz-{s:06d}.tar"
        write_fuzzed_shard(path, 12, rng, cut=s in (2, 5))
        infos.append(ShardInfo.from_file(path, num_samples=12, hours=0.01))
    index = write_index(tmp_path, infos)
    cfg = DataConfig(sources=(SourceConfig("fz", str(index)),), num_workers=2, shuffle_buffer=4,
                     bucket_batches=2, max_duration_s=2.0, min_duration_s=0.3,
                     max_member_bytes=MAX_MEMBER)
    ok, stats = 0, Counter()
    counts = []
    for rank in (0, 1):
        loader = TrainLoader(cfg, 2, rank, 2, seed=3)
        it = iter(loader)
        batches = [next(it) for _ in range(loader.batches_per_epoch)]
        counts.append(len(batches))
        for b in batches:
            feats, _ = log_mel(b["audio"], b["lengths"])
            assert torch_finite(feats)
            ok += int(b["valid"].sum())
        stats.update(loader.stats())
    assert counts[0] == counts[1] == 24
    assert ok + skipped(stats) == 8 * 12, dict(stats)
    record(fault="fuzzed corpus through the loader (2 ranks x 2 workers)", case="8 shards, 2 cut",
           survived=f"both ranks 24 batches, {ok} good rows, {skipped(stats)} counted skips",
           lost="only the bad samples")


def torch_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


DECODE_CASES = 4000 if FULL else 400


def test_decoder_fuzz_never_crashes(tmp_path, record):
    """Mutated FLAC / 16-bit WAV / float WAV bytes through libsndfile in a child process:
    each is decoded to finite audio or refused with AudioError; the child never dies."""
    rng = np.random.default_rng(11)
    wav = speech_like(rng, 0.5)
    seeds = [encode_flac(wav), wav_bytes(wav), wav_bytes(wav, "FLOAT")]
    cases = tmp_path / "cases"
    cases.mkdir()
    for i in range(DECODE_CASES):
        (cases / f"{i:05d}.bin").write_bytes(mutate(seeds[i % 3], rng))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fuzz_decode_worker.py")),
                           str(cases)], capture_output=True, text=True, cwd=ROOT,
                          env=launcher_env({"PYTHONPATH": str(ROOT)}), timeout=600)
    lines = proc.stdout.split("\n")
    assert proc.returncode == 0, f"decoder crashed (exit {proc.returncode}) on {lines[-1]!r}: " \
                                 f"{proc.stderr[-2000:]}"
    outcomes = Counter(line.split()[1] for line in lines if line.strip())
    assert sum(outcomes.values()) == DECODE_CASES
    record(fault="decoder fuzz (mutated FLAC/WAV through libsndfile)", case=f"{DECODE_CASES} inputs",
           survived=f"no crash; {outcomes['ok']} decoded finite, {outcomes['refused']} refused",
           lost="-")
