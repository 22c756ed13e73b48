"""wavlm_ds/objectives/kmeans_labels.py (tools/kmeans_labels.py): fit, sidecar labels on the pipeline's grid, join through the real
pipeline after cropping, encoder-layer features, bad inputs."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integration.conftest import write_shards
from wavlm_ds.config import DataConfig, RunConfig, SourceConfig
from wavlm_ds.data import TrainLoader
from wavlm_ds.data.audio import decode_audio, to_mono_16k
from wavlm_ds.data.pipeline import label_frames, read_tar
from wavlm_ds.eval import EvalError
from wavlm_ds.eval.upstream import logmel_upstream
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.objectives.kmeans_labels import KMeansError, label_corpus
from wavlm_ds.presets import debug
from wavlm_ds.pretrained import save_export

TOOL = Path(__file__).resolve().parents[2] / "tools" / "kmeans_labels.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("km")
    return {"train": write_shards(root / "train", "tr", num_shards=3, per_shard=4, seed=11,
                                  seconds=(2.0, 4.0)),
            "valid": write_shards(root / "valid", "va", num_shards=1, per_shard=3, seed=12)}


@pytest.fixture(scope="module")
def labelled(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("labels")
    summary = label_corpus([str(corpus["train"]), str(corpus["valid"])], out, k=8, seed=1)
    return out, summary


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def audio_of(shard: Path) -> dict[str, np.ndarray]:
    from collections import Counter
    return {raw["__key__"]: to_mono_16k(*decode_audio(raw["flac"], raw["__key__"]))
            for raw in read_tar(str(shard), 1 << 30, Counter())}


def test_sidecars_hold_one_nearest_centroid_label_per_encoder_frame(corpus, labelled):
    out, summary = labelled
    centroids = np.load(out / "centroids.npy")
    assert centroids.shape == (8, 160) and summary["k"] == 8
    assert summary["features"] == {"source": "logmel", "layer": None, "logmel_mode": "htk",
                                   "dim": 160}
    assert summary["fit"]["shards"] == 3 and summary["fit"]["samples"] == 12  # train only
    assert summary["written"]["shards"] == 4 and summary["written"]["samples"] == 15
    assert summary["inertia"] > 0 and summary["unreadable_shards"] == 0
    assert json.loads((out / "kmeans.json").read_text())["fit"] == summary["fit"]
    upstream = logmel_upstream(2, "htk")
    for shard in sorted(corpus["train"].parent.glob("*.tar")) + sorted(corpus["valid"].parent.glob("*.tar")):
        members, audio = tar_members(out / shard.name), audio_of(shard)
        assert set(members) == {f"{k}.labels.npy" for k in audio}
        key, wav = next(iter(audio.items()))
        labels = np.load(io.BytesIO(members[f"{key}.labels.npy"]), allow_pickle=False)
        assert labels.dtype == np.int16 and len(labels) == label_frames(len(wav))
        assert labels.min() >= 0 and labels.max() < 8
        feats, _ = upstream(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        dist = ((feats[0, 0].numpy()[:, None, :] - centroids[None]) ** 2).sum(-1)
        assert (dist.argmin(1) == labels).mean() > 0.98  # float ties aside: the nearest centroid
    assert len(set(np.concatenate([np.load(io.BytesIO(b)) for b in
                                   tar_members(out / "tr-000000.tar").values()]))) >= 4


def test_labels_join_and_stay_aligned_through_the_pipeline_after_cropping(corpus, labelled):
    """The real TrainLoader with 1.5 s random crops: each row's labels are the sidecar's
    labels from the crop's 20 ms offset on (found by locating the cropped audio)."""
    out, _ = labelled
    cfg = DataConfig(sources=(SourceConfig("s", str(corpus["train"])),), num_workers=0,
                     shuffle_buffer=1, bucket_batches=1, max_duration_s=1.5, min_duration_s=0.5,
                     label_member="labels.npy", label_sidecar_dir=str(out))
    loader = TrainLoader(cfg, 4, 0, 1, seed=9)
    it = iter(loader)
    shards = sorted(corpus["train"].parent.glob("*.tar"))
    audio = {k: w for s in shards for k, w in audio_of(s).items()}
    full = {k[:-len(".labels.npy")]: np.load(io.BytesIO(b)) for s in shards
            for k, b in tar_members(out / s.name).items()}
    offsets = set()
    for _ in range(loader.batches_per_epoch):
        batch = next(it)
        assert batch["valid"].all()
        for row, key in enumerate(batch["keys"]):
            n = int(batch["lengths"][row])
            crop = batch["audio"][row, :n].numpy()
            start = next(s for s in range(0, len(audio[key]) - n + 1, 320)
                         if np.array_equal(audio[key][s:s + n], crop))
            count = label_frames(n)
            got = batch["labels"][row].numpy()
            assert (got[count:] == -1).all()
            assert np.array_equal(got[:count], full[key][start // 320:start // 320 + count])
            offsets.add(start)
    assert len(offsets) > 3  # crops really moved
    assert not any(k.startswith(("label_mismatch", "missing_labels")) for k in loader.stats())


def test_encoder_layer_features(corpus, tmp_path):
    cfg = RunConfig(model=debug())
    encoder = WavLMEncoder(cfg.model)
    export = save_export(tmp_path / "export", {f"encoder.{k}": v for k, v in
                                              encoder.state_dict().items()}, cfg)
    valid = [str(corpus["valid"])]
    summary = label_corpus(valid, tmp_path / "out", k=4, features=str(export), layer=1)
    assert summary["features"]["dim"] == cfg.model.model_dim
    assert np.load(tmp_path / "out" / "centroids.npy").shape == (4, cfg.model.model_dim)
    with pytest.raises(EvalError, match="layer 9 does not exist; it has 4 layer outputs"):
        label_corpus(valid, tmp_path / "o2", k=4, features=str(export), layer=9)
    with pytest.raises(KMeansError, match="give --layer"):
        label_corpus(valid, tmp_path / "o3", features=str(export))


def test_too_few_frames_is_an_error_with_the_numbers(corpus, tmp_path):
    proc = subprocess.run([sys.executable, str(TOOL), str(corpus["valid"]), "--out", str(tmp_path),
                           "--k", "100000"], capture_output=True, text=True)
    err = proc.stderr
    assert proc.returncode == 2, err
    assert "k-means on too few frames: k=100000 clusters but only" in err
    assert "from 3 readable samples of 1 shards" in err


def test_unreadable_shard_is_skipped_and_counted(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in corpus["train"].parent.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "tr-000001.tar").write_bytes(b"not a tar" * 100)
    summary = label_corpus([str(src / "index.json")], tmp_path / "out", k=4)
    assert summary["unreadable_shards"] == 1
    assert summary["written"] == {"shards": 2, "samples": 8,
                                  "frames": summary["written"]["frames"]}
    assert not (tmp_path / "out" / "tr-000001.tar").exists()
    assert any(k.startswith("truncated_shard") for k in summary["skip_reasons"])


def test_duplicate_shard_names_are_refused(corpus, tmp_path):
    with pytest.raises(KMeansError, match="tr-000000.tar occurs 2 times"):
        label_corpus([str(corpus["train"]), str(corpus["train"].parent / "tr-000000.tar")], tmp_path)
