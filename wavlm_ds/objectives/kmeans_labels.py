"""k-means targets for `objective.name: kmeans`: fit on frame features, write label sidecars.

The library behind tools/kmeans_labels.py (its docstring has the options and the output
layout). Features per 20 ms encoder frame are the normalized, stacked log-Mel of the whole
utterance (HuBERT's first iteration) or a layer of an exported encoder (its refinement);
sklearn's MiniBatchKMeans is fitted on a seeded sample of the training shards, then every
sample of every shard gets label_frames(n) labels in a sidecar tar of the same file name,
which the data pipeline joins by key (data.label_sidecar_dir). The objective that trains on
them is objectives/kmeans.py.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from wavlm_ds.data.audio import AudioError, check_waveform, decode_audio, to_mono_16k
from wavlm_ds.data.pipeline import AUDIO_EXTS, label_frames, read_tar
from wavlm_ds.data.spec import Shard, expand_spec
from wavlm_ds.eval.upstream import LOGMEL, Upstream, encoder_upstream, extract, logmel_upstream

LABEL_MEMBER = "labels.npy"
FRAME_STACK = 2  # the pipeline's label rate: 20 ms = 2 log-Mel frames
MAX_MEMBER_BYTES = 1 << 30


class KMeansError(ValueError):
    """Bad input for the tool; the message names the numbers and the fix."""


def list_shards(specs: list[str]) -> list[list[Shard]]:
    """The shards of each spec; sidecars are joined by file name, so names must be unique."""
    groups = [expand_spec(spec, allow_pipe=False, key="SHARDS") for spec in specs]
    shards = [s for group in groups for s in group]
    names = Counter(Path(s.url).name for s in shards)
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise KMeansError(f"shard file name {dup[0]} occurs {names[dup[0]]} times; sidecar "
                          "shards are matched by file name, so label each set into its own --out")
    return groups


def shard_audio(url: str, stats: Counter) -> Iterator[tuple[str, np.ndarray]]:
    """(key, mono 16 kHz float32) of each decodable sample; failures are counted."""
    for raw in read_tar(url, MAX_MEMBER_BYTES, stats):
        ext = next((e for e in AUDIO_EXTS if e in raw), None)
        if ext is None:
            stats["skipped_samples"] += 1
            continue
        where = f"{url}:{raw['__key__']}"
        try:
            wav = to_mono_16k(*decode_audio(raw[ext], where))
            check_waveform(wav, where)
        except AudioError as err:
            stats["skipped_samples"] += 1
            tqdm.write(f"[kmeans_labels] skipped {where}: {err}")
            continue
        yield raw["__key__"], wav
    if stats[f"truncated_shard:{url}"]:  # read_tar's count: missing, damaged or cut short
        stats["unreadable_shards"] += 1


def shard_features(upstream: Upstream, layer: int | None, url: str, stats: Counter,
                   batch_seconds: float) -> tuple[list[str], list[int], list[np.ndarray]]:
    """(keys, sample counts, (T_i, dim) float32 features) of one shard."""
    items = list(shard_audio(url, stats))
    if not items:
        return [], [], []
    keys, wavs = [k for k, _ in items], [w for _, w in items]
    feats = extract(upstream, keys, wavs, batch_seconds, Path(url).name, layer)
    return keys, [len(w) for w in wavs], [f[0].numpy() for f in feats.layers]


def fit_sample(upstream: Upstream, layer: int | None, shards: list[Shard], num_shards: int,
               max_frames: int, seed: int, stats: Counter, batch_seconds: float
               ) -> tuple[np.ndarray, dict]:
    """Frames (N, dim) from a seeded sample of shards, at most max_frames (drawn uniformly)."""
    chosen = random.Random(seed).sample(shards, min(num_shards, len(shards)))
    pieces, samples = [], 0
    for shard in tqdm(chosen, desc="fit features", unit="shard"):
        _, _, feats = shard_features(upstream, layer, shard.url, stats, batch_seconds)
        pieces += feats
        samples += len(feats)
    frames = np.concatenate(pieces) if pieces else np.zeros((0, 1), np.float32)
    available = len(frames)
    if available > max_frames:
        frames = frames[np.random.default_rng(seed).choice(available, max_frames, replace=False)]
    return frames, {"shards": len(chosen), "samples": samples, "frames_available": available,
                    "frames_used": len(frames)}


def fit_kmeans(frames: np.ndarray, k: int, seed: int, where: dict):
    from sklearn.cluster import MiniBatchKMeans
    if k < 2:
        raise KMeansError(f"--k {k}: need at least 2 clusters")
    if len(frames) < k:
        raise KMeansError(f"k-means on too few frames: k={k} clusters but only {len(frames)} "
                          f"frames from {where['samples']} readable samples of {where['shards']} "
                          "shards; lower --k or fit on more shards (--fit-shards)")
    model = MiniBatchKMeans(n_clusters=k, batch_size=max(1024, 4 * k), n_init=3,
                            max_iter=100, random_state=seed)
    return model.fit(frames)


def labels_npy(labels: np.ndarray, k: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, labels.astype(np.int16 if k <= np.iinfo(np.int16).max else np.int32))
    return buf.getvalue()


def frame_labels(model, feats: np.ndarray, num_samples: int) -> np.ndarray:
    """Nearest centroid per frame, on the pipeline's grid: label_frames(n) labels (kaldi
    log-Mel snips edges and has up to 2 frames fewer: the last label is repeated)."""
    labels = model.predict(feats)
    want = label_frames(num_samples)
    return np.pad(labels, (0, max(0, want - len(labels))), mode="edge")[:want]


def write_sidecar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Atomically (temp file + rename): a crash never leaves a half-written sidecar."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def label_shards(upstream: Upstream, layer: int | None, model, shards: list[Shard], out: Path,
                 k: int, stats: Counter, batch_seconds: float) -> dict:
    written = Counter()
    for shard in tqdm(shards, desc="label shards", unit="shard"):
        keys, lengths, feats = shard_features(upstream, layer, shard.url, stats, batch_seconds)
        if not keys:
            tqdm.write(f"[kmeans_labels] {shard.url}: no readable sample, no sidecar written")
            continue
        members = [(f"{key}.{LABEL_MEMBER}", labels_npy(frame_labels(model, f, n), k))
                   for key, n, f in zip(keys, lengths, feats)]
        write_sidecar(out / Path(shard.url).name, members)
        written["shards"] += 1
        written["samples"] += len(members)
        written["frames"] += sum(label_frames(n) for n in lengths)
    return dict(written)


def build_upstream(features: str, layer: int | None, logmel_mode: str) -> Upstream:
    if features == LOGMEL:
        if layer is not None:
            raise KMeansError("--layer applies to an encoder export, not to --features logmel")
        return logmel_upstream(FRAME_STACK, logmel_mode)
    if layer is None:
        raise KMeansError(f"--features {features}: give --layer (0 = block input, i = block i)")
    upstream = encoder_upstream(Path(features))
    if upstream.stack != FRAME_STACK:
        raise KMeansError(f"{features}: model.frame_stack={upstream.stack}, but label sidecars "
                          f"are read at 20 ms (frame_stack {FRAME_STACK})")
    return upstream


def label_corpus(specs: list[str], out: Path, k: int = 100, features: str = LOGMEL,
                 layer: int | None = None, logmel_mode: str = "htk", fit_shards: int = 16,
                 max_fit_frames: int = 500_000, batch_seconds: float = 60.0, seed: int = 0,
                 command: str = "") -> dict:
    """Fit on a sample of the first spec's shards, label every shard of every spec, write
    the sidecars, centroids.npy and kmeans.json under `out`; returns the summary."""
    t0 = time.time()
    groups = list_shards(specs)
    shards = [s for group in groups for s in group]
    upstream = build_upstream(features, layer, logmel_mode)
    stats: Counter = Counter()
    frames, fit = fit_sample(upstream, layer, groups[0], fit_shards, max_fit_frames, seed, stats,
                             batch_seconds)
    model = fit_kmeans(frames, k, seed, fit)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "centroids.npy", model.cluster_centers_.astype(np.float32))
    label_stats: Counter = Counter()  # the fit pass read some shards already: count once
    written = label_shards(upstream, layer, model, shards, out, k, label_stats, batch_seconds)
    summary = {
        "tool": "kmeans_labels", "command": command,
        "k": k, "features": {"source": features, "layer": layer,
                             "logmel_mode": upstream.logmel_mode, "dim": int(frames.shape[1])},
        "inertia": float(model.inertia_), "inertia_per_frame": float(model.inertia_) / len(frames),
        "fit": fit, "seed": seed, "label_member": LABEL_MEMBER, "written": written,
        "shards": len(shards), "unreadable_shards": label_stats["unreadable_shards"],
        "skipped_samples": label_stats["skipped_samples"],
        "skip_reasons": {key: v for key, v in label_stats.items()
                         if key not in ("unreadable_shards", "skipped_samples")},
        "elapsed_s": time.time() - t0}
    (out / "kmeans.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_summary(s: dict, out: Path) -> None:
    print("\n| k-means labels | value |\n|---|---|")
    for name, value in (("k", s["k"]), ("features", f"{s['features']['source']}"
                        + (f" layer {s['features']['layer']}" if s["features"]["layer"] is not None
                           else "") + f" ({s['features']['dim']} dims)"),
                        ("fit frames", f"{s['fit']['frames_used']} of {s['fit']['frames_available']}"
                         f" ({s['fit']['samples']} samples, {s['fit']['shards']} shards)"),
                        ("inertia per frame", f"{s['inertia_per_frame']:.3f}"),
                        ("labelled", f"{s['written'].get('samples', 0)} samples in "
                         f"{s['written'].get('shards', 0)} of {s['shards']} shards"),
                        ("skipped", f"{s['unreadable_shards']} unreadable shards, "
                         f"{s['skipped_samples']} samples"),
                        ("elapsed", f"{s['elapsed_s']:.1f} s")):
        print(f"| {name} | {value} |")
    print(f"\n[kmeans_labels] wrote {out} (sidecars, centroids.npy, kmeans.json); train with "
          f"--set objective.name=kmeans --set objective.num_classes={s['k']} "
          f"--set data.label_member={LABEL_MEMBER} --set data.label_sidecar_dir={out}")
