"""make_shards on a mixed directory, long-recording splits, verify, path safety."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from wavlm_ds.data.audio import decode_audio
from wavlm_ds.data.index import verify_shards
from wavlm_ds.data.shards import pack, safe_key, split_points

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_shards.py"


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def mixed_dir(root: Path) -> dict[str, float]:
    root.mkdir()
    (root / "sub").mkdir()
    sf.write(root / "a_48k_stereo.flac", tone(1.5, 48000, 2), 48000)
    sf.write(root / "b_8k.wav", (tone(2.0, 8000) * 32767).astype(np.int16), 8000, subtype="PCM_16")
    sf.write(root / "sub" / "c_24bit.wav", tone(1.0, 22050), 22050, subtype="PCM_24")
    sf.write(root / "d.ogg", tone(1.25, 16000), 16000, format="OGG", subtype="VORBIS")
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(200))
    (root / "empty.wav").write_bytes(b"")
    return {"a_48k_stereo.flac": 1.5, "b_8k.wav": 2.0, "sub/c_24bit.wav": 1.0, "d.ogg": 1.25}


def read_samples(out: Path) -> dict[str, tuple[dict, bytes]]:
    samples = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                samples[meta["source"]] = (meta, members[name[:-5] + ".flac"])
    return samples


def test_mixed_directory(tmp_path):
    expected = mixed_dir(tmp_path / "in")
    out = tmp_path / "out"
    pack(tmp_path / "in", out, max_samples=2)
    samples = read_samples(out)
    assert set(samples) == set(expected)
    for source, seconds in expected.items():
        meta, flac = samples[source]
        wav, rate = decode_audio(flac, source)
        assert rate == 16000 and wav.shape[1] == 1
        assert abs(len(wav) - seconds * 16000) <= 2 and meta["num_samples"] == len(wav)
    assert samples["a_48k_stereo.flac"][0]["orig_channels"] == 2
    assert samples["b_8k.wav"][0]["orig_sample_rate"] == 8000
    report = json.loads((out / "report.json").read_text())
    assert sorted(s["path"] for s in report["skipped"]) == ["corrupt.flac", "empty.wav"]
    index = out / "index.json"
    assert verify_shards(index) == []
    shard = sorted(out.glob("*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:-3000])  # truncated
    assert verify_shards(index)


def test_cli_exit_codes(tmp_path):
    """--strict exits 1 when an input was skipped, --verify 1 on a damaged set."""
    mixed_dir(tmp_path / "in")
    out = tmp_path / "out"
    strict = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "in"), "--out", str(out),
                             "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1 and "skipped corrupt.flac" in strict.stdout, strict.stderr
    shard = sorted(out.glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:-3000])
    verify = subprocess.run([sys.executable, str(TOOL), "--verify", str(out / "index.json")],
                            capture_output=True, text=True)
    assert verify.returncode == 1 and shard.name in verify.stdout, verify.stdout


def test_clean_cut_at_member_boundary_fails_verify(tmp_path):
    mixed_dir(tmp_path / "in")
    out = tmp_path / "out"
    pack(tmp_path / "in", out)
    shard = sorted(out.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()][:-2]  # drop a sample
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    problems = verify_shards(out / "index.json")
    assert any("samples readable" in p for p in problems)


def test_long_recording_split_in_silences(tmp_path):
    rate = 16000
    pieces = []
    for seconds in (25, 27, 10):  # each gap lies in the 5 s searched before the 30 s limit
        pieces += [tone(seconds, rate), np.zeros(rate // 2)]
    wav = np.concatenate(pieces)
    cuts = split_points(wav.astype(np.float32), 30 * rate)
    bounds = [0, *cuts, len(wav)]
    assert all(b - a <= 30 * rate for a, b in zip(bounds, bounds[1:]))
    for cut in cuts:  # every cut falls inside a silent gap
        assert np.abs(wav[cut - 10: cut + 10]).max() == 0


def test_manifest_names_cannot_escape_output(tmp_path):
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "x.wav", tone(1.0, 16000), 16000)
    manifest = tmp_path / "in" / "list.jsonl"
    rows = [{"path": "x.wav", "transcript": "hello"},
            {"path": "../../../etc/passwd", "transcript": "evil"},
            {"path": str(tmp_path / "in" / "x.wav"), "speaker": "../../root/.ssh/id"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    pack(manifest, out)
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith(str(tmp_path)) for p in written)
    for tar_path in out.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for name in tar.getnames():
                assert "/" not in name and ".." not in name
    assert safe_key("../../etc/passwd", 0).count(".") == 0


def test_report_reasons_are_reproducible(tmp_path):
    """A text file named .wav: the reason names the file and libsndfile's message, and two
    runs write the same report (no `<_io.BytesIO object at 0x...>`)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.wav").write_text("this is not audio\n" * 20)
    sf.write(tmp_path / "in" / "ok.wav", tone(1.0, 16000), 16000)
    reports = []
    for _ in range(2):
        pack(tmp_path / "in", tmp_path / "out")
        reports.append((tmp_path / "out" / "report.json").read_text())
    assert reports[0] == reports[1]
    (skip,) = json.loads(reports[0])["skipped"]
    assert skip["path"] == "notes.wav"
    assert "notes.wav" in skip["reason"] and "Format not recognised" in skip["reason"]
    assert "0x" not in skip["reason"] and "BytesIO" not in skip["reason"]
