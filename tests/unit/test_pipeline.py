"""The training stream: exactly-once resume, equal batch counts, bad samples, security."""
from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integration.conftest import speech_like, write_shards
from wavlm_ds.config import ConfigError, DataConfig, SourceConfig
from wavlm_ds.data import EvalLoader, TrainLoader
from wavlm_ds.data.audio import encode_flac
from wavlm_ds.data.index import ShardInfo, write_index


def data_cfg(index: Path, **kw) -> DataConfig:
    base = dict(sources=(SourceConfig("s", str(index)),), num_workers=2, shuffle_buffer=8,
                bucket_batches=2, max_duration_s=2.0, min_duration_s=0.3)
    base.update(kw)
    return DataConfig(**base)


def keys_of(loader: TrainLoader, n: int) -> list[str]:
    it = iter(loader)
    return [k for _ in range(n) for k in next(it)["keys"]]


def keys_of_batches(loader: TrainLoader, n: int) -> list[list[str]]:
    it = iter(loader)
    return [next(it)["keys"] for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("c"), "t", num_shards=12, per_shard=10, seed=3,
                        seconds=(0.5, 2.5))


def test_exactly_once_resume_at_odd_count(corpus):
    cfg = data_cfg(corpus)
    for rank in (0, 1):
        full = TrainLoader(cfg, 3, rank, 2, seed=5)
        per_epoch = full.batches_per_epoch
        reference = keys_of(full, per_epoch)
        stop = 5  # odd: inside a shard (10 samples) and inside the shuffle buffer (8)
        first = TrainLoader(cfg, 3, rank, 2, seed=5)
        head = keys_of(first, stop)
        state = first.state_dict()
        assert state == {"epoch": 0, "batches_consumed": stop}
        resumed = TrainLoader(cfg, 3, rank, 2, seed=5)
        resumed.load_state_dict(state)
        tail = keys_of(resumed, per_epoch - stop)
        assert head + tail == reference
        assert len(set(k for k in reference if k)) == len([k for k in reference if k])


def test_one_set_of_workers_across_epochs_in_the_per_epoch_order(corpus, monkeypatch):
    """The stream runs epoch after epoch from one DataLoader (workers are forked once), in
    the order a loader started fresh at each epoch gives; a resume inside an epoch keeps
    that order across the next boundary, and the state rolls over to (epoch + 1, 0)."""
    import wavlm_ds.data.loader as loader_module
    made = []
    real = loader_module.DataLoader
    monkeypatch.setattr(loader_module, "DataLoader", lambda *a, **k: made.append(1) or real(*a, **k))
    cfg = data_cfg(corpus)
    full = TrainLoader(cfg, 3, 1, 2, seed=5)
    per_epoch = full.batches_per_epoch
    it = iter(full)
    stream = [next(it) for _ in range(2 * per_epoch + 3)]
    assert len(made) == 1
    assert [b["epoch"] for b in stream] == [0] * per_epoch + [1] * per_epoch + [2] * 3
    assert full.state_dict() == {"epoch": 2, "batches_consumed": 3}
    keys = [b["keys"] for b in stream]
    for epoch in (1, 2):
        fresh = TrainLoader(cfg, 3, 1, 2, seed=5)
        fresh.load_state_dict({"epoch": epoch, "batches_consumed": 0})
        n = per_epoch if epoch == 1 else 3
        assert keys_of_batches(fresh, n) == keys[epoch * per_epoch:epoch * per_epoch + n]
    resumed = TrainLoader(cfg, 3, 1, 2, seed=5)
    resumed.load_state_dict({"epoch": 0, "batches_consumed": 5})
    assert keys_of_batches(resumed, 2 * per_epoch - 5) == keys[5:2 * per_epoch]
    assert resumed.state_dict() == {"epoch": 2, "batches_consumed": 0}


def test_ranks_cover_the_epoch_once(corpus):
    cfg = data_cfg(corpus)
    loaders = [TrainLoader(cfg, 3, r, 2, seed=5) for r in (0, 1)]
    assert loaders[0].batches_per_epoch == loaders[1].batches_per_epoch
    seen = [k for L in loaders for k in keys_of(L, L.batches_per_epoch) if k]
    assert len(seen) == len(set(seen))
    assert len(seen) >= 0.8 * 120  # drops only to equalize slots (declared in stats)


def test_uneven_shards_same_batch_count(tmp_path):
    index = write_shards(tmp_path / "a", "u", num_shards=5, per_shard=4, seed=4)
    data = json.loads(index.read_text())
    data["shards"][0]["num_samples"] = 4  # keep index honest; make one shard much bigger
    extra = write_shards(tmp_path / "b", "v", num_shards=1, per_shard=30, seed=5)
    big = json.loads(extra.read_text())["shards"][0]
    (tmp_path / "a" / big["name"]).write_bytes((tmp_path / "b" / big["name"]).read_bytes())
    data["shards"].append(big)
    index.write_text(json.dumps(data))
    cfg = data_cfg(index, num_workers=1)
    counts = {r: TrainLoader(cfg, 2, r, 3, seed=1).batches_per_epoch for r in range(3)}
    assert len(set(counts.values())) == 1 and counts[0] > 0
    for r in range(3):
        loader = TrainLoader(cfg, 2, r, 3, seed=1)
        assert sum(1 for _ in zip(range(counts[r]), iter(loader))) == counts[r]
    with pytest.raises(ConfigError, match="6 shards for 4 ranks x 2 workers"):
        TrainLoader(data_cfg(index), 2, 0, 4, seed=1)
    resampled = data_cfg(index, resampled=True)
    counts = {TrainLoader(resampled, 2, r, 8, seed=1).batches_per_epoch for r in range(8)}
    assert len(counts) == 1


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path('/tmp/wavlm_ds_pipeline_pwned')}",))


def test_bad_samples_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    good = encode_flac(speech_like(rng, 1.0))
    meta = lambda k: json.dumps({"key": k, "duration_s": 1.0}).encode()  # noqa: E731
    stereo = io.BytesIO()
    import soundfile as sf
    sf.write(stereo, np.stack([speech_like(rng, 1.0)] * 2, 1), 8000, format="WAV")
    members = [("ok1.flac", good), ("ok1.json", meta("ok1")),
               ("corrupt.flac", good[:50] + bytes(500)), ("corrupt.json", meta("corrupt")),
               ("nojson.flac", good),
               ("silent.flac", encode_flac(np.zeros(16000, np.float32))), ("silent.json", meta("silent")),
               ("stereo8k.wav", stereo.getvalue()), ("stereo8k.json", meta("stereo8k")),
               ("evil.pyd", pickle.dumps(Evil())), ("evil.json", meta("evil")),
               ("huge.flac", bytes(300_000)), ("huge.json", meta("huge"))]
    shard = tmp_path / "bad-000000.tar"
    write_raw_tar(shard, members)
    write_index(tmp_path, [ShardInfo.from_file(shard, 7, 0.001)])
    cfg = data_cfg(tmp_path / "index.json", num_workers=0, max_member_bytes=100_000,
                   shuffle_buffer=1)
    loader = TrainLoader(cfg, 7, 0, 1, seed=0)
    batch = next(iter(loader))
    valid = dict(zip(batch["keys"], batch["valid"].tolist()))
    assert valid["ok1"] and valid["stereo8k"]
    assert not valid["corrupt"] and not valid["silent"]
    stats = loader.stats()
    # every skip is counted by reason, shard and key
    assert {k for k in stats if k.startswith("missing_member")} == \
        {f"missing_member:{shard}:nojson", f"missing_member:{shard}:evil"}  # evil: no audio
    assert f"member_too_large:{shard}:huge" in stats
    assert sum(v for k, v in stats.items() if k.startswith("bad_audio")) == 2
    assert not Path("/tmp/wavlm_ds_pipeline_pwned").exists()
    lengths = dict(zip(batch["keys"], batch["lengths"].tolist()))
    assert lengths["stereo8k"] == 32000  # 16000 frames written at 8 kHz = 2 s -> 32000 at 16 kHz


def test_truncated_shard_is_counted(tmp_path):
    index = write_shards(tmp_path, "tr", num_shards=1, per_shard=6, seed=2)
    shard = tmp_path / "tr-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    cfg = data_cfg(index, num_workers=0)
    loader = TrainLoader(cfg, 2, 0, 1, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(loader.batches_per_epoch)]
    assert any(k.startswith("truncated_shard") for k in loader.stats())
    assert sum(int(b["valid"].sum()) for b in batches) < 6


def test_pipe_urls_need_opt_in(corpus):
    cfg = DataConfig(sources=(SourceConfig("p", "pipe:cat /dev/null"),))
    with pytest.raises(ConfigError, match="data.allow_pipe"):
        TrainLoader(cfg, 2, 0, 1, seed=0)
    with pytest.raises(ConfigError, match="matches nothing"):
        TrainLoader(DataConfig(sources=(SourceConfig("x", "/nope/a-{0..3}.tar"),)), 2, 0, 1, 0)


def test_padding_fraction_is_low_with_bucketing(corpus):
    loader = TrainLoader(data_cfg(corpus, bucket_batches=8, shuffle_buffer=32), 3, 0, 1, seed=5)
    keys_of(loader, loader.batches_per_epoch)
    assert loader.stats()["padding_fraction"] < 0.15


def test_eval_loader_same_count_on_every_rank(corpus):
    counts = [sum(1 for _ in EvalLoader(str(corpus), 4, r, 3, 100, data_cfg(corpus))) for r in range(3)]
    assert len(set(counts)) == 1 and counts[0] > 0


def test_sidecar_labels_join_by_key_and_stay_aligned_after_cropping(tmp_path):
    """Labels = encoder-frame index (one per 20 ms); after a random crop, label t of the
    batch must equal (crop start / 320) + t, and stay within the cropped audio."""
    rng = np.random.default_rng(1)
    audio_dir, side_dir = tmp_path / "audio", tmp_path / "labels"
    audio_dir.mkdir(), side_dir.mkdir()
    members, side, durations = [], [], {}
    for i in range(6):
        key, n = f"u{i}", int(rng.uniform(3.0, 5.0) * 16000)
        t = np.arange(n) / 16000  # a chirp, so that crops differ
        wav = (0.3 * np.sin(2 * np.pi * (200 + 50 * t) * t)).astype(np.float32)
        members += [(f"{key}.flac", encode_flac(wav)),
                    (f"{key}.json", json.dumps({"duration_s": n / 16000}).encode())]
        buf = io.BytesIO()
        np.save(buf, np.arange(-(-(1 + n // 160) // 2)))
        side.append((f"{key}.labels.npy", buf.getvalue()))
        durations[key] = n
    if True:  # one sample with a wrong label count is skipped
        buf = io.BytesIO()
        np.save(buf, np.arange(5))
        side[-1] = ("u5.labels.npy", buf.getvalue())
    write_raw_tar(audio_dir / "a-000000.tar", members)
    write_raw_tar(side_dir / "a-000000.tar", side)
    write_index(audio_dir, [ShardInfo.from_file(audio_dir / "a-000000.tar", 6, 0.01)])
    cfg = data_cfg(audio_dir / "index.json", num_workers=0, max_duration_s=2.0,
                   label_member="labels.npy", label_sidecar_dir=str(side_dir), shuffle_buffer=1)
    loader = TrainLoader(cfg, 6, 0, 1, seed=3)
    batch = next(iter(loader))
    labels = batch["labels"]
    assert labels.shape == (6, -(-(1 + batch["audio"].shape[1] // 160) // 2))
    valid = dict(zip(batch["keys"], batch["valid"].tolist()))
    assert valid == {f"u{i}": i != 5 for i in range(6)}  # u5: wrong label count, skipped
    for row, key in enumerate(batch["keys"]):
        if not valid[key]:
            assert (labels[row] == -1).all()
            continue
        got = labels[row][labels[row] >= 0]
        start = int(got[0]) * 320
        assert torch.equal(got, torch.arange(int(got[0]), int(got[0]) + len(got)))
        assert len(got) == -(-(1 + int(batch["lengths"][row]) // 160) // 2)
        assert start + int(batch["lengths"][row]) <= durations[key]
    assert any(k.startswith("label_mismatch") for k in loader.stats())
