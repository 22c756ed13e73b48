"""The embedded corpus: espeak-ng + sox, offline, speaker-disjoint splits, full metadata."""
from __future__ import annotations

import json
import tarfile

import pytest

from wavlm_ds.data.audio import decode_audio
from wavlm_ds.data.index import verify_shards
from wavlm_ds.data.synth import synth_corpus


@pytest.mark.slow
def test_tiny_corpus_builds_offline(tmp_path):
    summary = synth_corpus(tmp_path, utterances=24, noise=3)
    assert sum(r["samples"] for r in summary.values()) == 24
    speakers = {}
    for split in ("train", "validation", "test"):
        assert verify_shards(tmp_path / split / "index.json") == []
        for tar_path in (tmp_path / split).glob("*.tar"):
            with tarfile.open(tar_path) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            for name, data in members.items():
                if not name.endswith(".json"):
                    continue
                meta = json.loads(data)
                assert meta["transcript"] and meta["phonemes"] and meta["language"] in ("en", "cmn")
                assert {"voice", "pitch", "speed"} <= set(meta["synth"])
                wav, rate = decode_audio(members[name[:-5] + ".flac"], name)
                assert rate == 16000 and wav.shape[1] == 1 and len(wav) > 8000
                speakers.setdefault(split, set()).add(meta["speaker"])
    assert speakers["train"].isdisjoint(speakers["validation"] | speakers["test"])
    assert speakers["validation"].isdisjoint(speakers["test"])
    assert verify_shards(tmp_path / "noise" / "index.json") == []
