"""Shared fixtures for launcher tests: a tiny synthetic corpus and a runner for train.py."""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from wavlm_ds.data.audio import encode_flac
from wavlm_ds.data.index import ShardInfo, write_index
from wavlm_ds.launch import ROOT, run_training, train_command
from wavlm_ds.precision import apply_precision, choose_cpu_precision

SR = 16000


# Dropout, layerdrop and mixing on, 2 DataLoader workers: resume must still be bitwise.
COMMON = ["model.dropout=0.1", "model.layerdrop=0.2", "data.mix_prob=0.5",
          "data.num_workers=2", "training.eval_every_steps=1000", "data.max_duration_s=3.0"]


def ds_config(stage: int = 2, precision: str = "bf16", **changes) -> dict:
    """ds_configs/cpu_smoke.json at test size, in an explicit precision, never `auto` (whose
    choice differs between CPUs): "bf16" (the recipe's: the tests of bf16 semantics,
    test_trainer's shared reference runs, and each dtype-dependent test beside an fp32 twin)
    or "fp32" (the launcher and fault tests whose subject is not the number format: fast on
    every CPU, where emulated bf16 on AVX2 would spend seconds per step)."""
    ds = json.loads((ROOT / "ds_configs" / "cpu_smoke.json").read_text())
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: use bf16 or fp32")
    ds = apply_precision(ds, choose_cpu_precision(precision))
    ds.update(train_batch_size=16, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=4)
    ds["zero_optimization"]["stage"] = stage
    if stage == 0:  # DeepSpeed 0.19.8 has no bf16 + fp32-accumulation mode without ZeRO
        ds.pop("data_types", None)
    ds["scheduler"]["params"].update(total_num_steps=40, warmup_num_steps=4)
    ds.update(changes)
    return ds


def speech_like(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Voiced segments (harmonics of a gliding f0 under a formant-ish envelope) with pauses."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * math.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * math.pi * np.cumsum(f0) / SR
    formant = rng.uniform(400, 1200)
    wav = sum(np.exp(-((k * f0 - formant) / 600) ** 2) * np.sin(k * phase) for k in range(1, 20))
    syllables = (np.sin(2 * math.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)) > -0.3)
    wav = wav * syllables + 0.01 * rng.standard_normal(n)
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


def write_shards(out: Path, prefix: str, num_shards: int, per_shard: int, seed: int,
                 seconds: tuple[float, float] = (1.0, 3.0), noise: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    infos = []
    for s in range(num_shards):
        path = out / f"{prefix}-{s:06d}.tar"
        total = 0.0
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{prefix}{s:03d}x{i:03d}"
                n = rng.uniform(*seconds)
                wav = (0.1 * rng.standard_normal(int(n * SR))).astype(np.float32) if noise \
                    else speech_like(rng, n)
                total += len(wav) / SR
                meta = {"key": key, "duration_s": len(wav) / SR, "sample_rate": SR,
                        "num_samples": len(wav)}
                for name, data in ((f"{key}.flac", encode_flac(wav)),
                                   (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        infos.append(ShardInfo.from_file(path, num_samples=per_shard, hours=total / 3600))
    return write_index(out, infos)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    return {"train": write_shards(root / "train", "train", num_shards=8, per_shard=12, seed=1),
            "valid": write_shards(root / "valid", "valid", num_shards=2, per_shard=8, seed=2),
            "noise": write_shards(root / "noise", "noise", num_shards=2, per_shard=4, seed=3,
                                  noise=True)}


def corpus_overrides(corpus: dict[str, Path]) -> list[str]:
    """--set items pointing the demo config at the test corpus (never at runs/demo)."""
    return [f"data.sources=[{{name: tiny, shards: {corpus['train']}}}]",
            f"data.valid_shards={corpus['valid']}", f"data.noise_shards={corpus['noise']}",
            "logging.progress_bar=false"]


def launch(run_dir: Path, corpus: dict[str, Path], overrides: list[str], ds_config: dict,
           env: dict[str, str] | None = None, resume: str = "auto") -> int:
    """Run train.py through the real deepspeed launcher on hostfiles/localhost (2 ranks)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = run_dir / f"ds_{len(list(run_dir.glob('launch_ds_*.log')))}.json"
    ds_path.write_text(json.dumps(ds_config))
    base = corpus_overrides(corpus)
    cmd = train_command(ROOT / "configs" / "demo.yaml", ds_path, run_dir, base + overrides, resume)
    log = run_dir / f"launch_{ds_path.stem}.log"
    return run_training(cmd, log, env=env, timeout_s=900)


def optimizer_state_files(checkpoint: Path) -> list[str]:
    """The per-rank ZeRO optimizer state files of a checkpoint directory (DeepSpeed prefixes
    them with bf16_ in bf16 runs), rank order."""
    names = sorted(p.name for p in checkpoint.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    assert names, f"no ZeRO optimizer state in {checkpoint}"
    return names


def metrics(run_dir: Path, split: str = "train") -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]
