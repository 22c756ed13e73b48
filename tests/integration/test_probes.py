"""End to end: eval_asr / eval_f0 / eval_report on a tiny labelled shard set and a random
debug-preset encoder export; finite numbers out, clear messages for bad input."""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from wavlm_ds.launch import ROOT

pytestmark = pytest.mark.slow

SR = 16000
WORDS = {"red": "ɹˈɛd", "blue": "blˈuː", "green": "ɡɹˈiːn", "cat": "kˈæt", "dog": "dˈɑːɡ",
         "sun": "sˈʌn", "moon": "mˈuːn", "tree": "tɹˈiː"}  # espeak-ng IPA
TINY = ["--epochs", "2", "--hidden", "8", "--batch-size", "4", "--resamples", "50"]


def voiced_utterance(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Harmonics of a slowly moving F0 with pauses: Praat finds voiced and unvoiced frames."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(100, 200) * (1 + 0.1 * np.sin(2 * math.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * math.pi * np.cumsum(f0) / SR
    wav = sum(np.sin(k * phase) / k for k in range(1, 12))
    wav = wav * (np.sin(2 * math.pi * 1.5 * t) > -0.3) + 0.003 * rng.standard_normal(t.size)
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


def write_split(out: Path, name: str, n: int, seed: int, transcripts: bool = True,
                audio_fn=voiced_utterance) -> Path:
    """One tar of `<key>.flac` + `<key>.json` members, the layout tools/make_shards.py writes."""
    from wavlm_ds.data.audio import encode_flac
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tarfile.open(out / f"{name}-000000.tar", "w") as tar:
        for i in range(n):
            key = f"{name}{i:04d}"
            meta = {"speaker": f"{name}-spk{i % 2}", "language": "en"}
            if transcripts:
                words = rng.choice(list(WORDS), size=rng.integers(1, 4))
                meta["transcript"] = " ".join(words)
                meta["phonemes"] = " ".join(WORDS[w] for w in words)
            for member, data in ((f"{key}.flac", encode_flac(audio_fn(rng, rng.uniform(0.6, 1.2)))),
                                 (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_split(root / "train", "train", 12, seed=1)
    write_split(root / "test", "test", 6, seed=2)
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    import torch
    from wavlm_ds.config import RunConfig
    from wavlm_ds.model import WavLMEncoder
    from wavlm_ds.pretrained import save_export
    cfg = RunConfig()  # the debug preset
    torch.manual_seed(0)
    encoder = WavLMEncoder(cfg.model)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    return save_export(tmp_path_factory.mktemp("export") / "debug", state, cfg)


def run_tool(tool: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def finite_numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in finite_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in finite_numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.parametrize("upstream", ["export", "logmel"])
def test_asr_and_f0_probes_give_finite_results(upstream, corpus, export, tmp_path) -> None:
    up = export if upstream == "export" else "logmel"
    units = "chars" if upstream == "export" else "phonemes"  # both unit kinds, once each
    common = ["--upstream", up, "--train", corpus / "train", "--test", corpus / "test", *TINY]
    asr = run_tool("eval_asr.py", *common, "--units", units, "--out", tmp_path / "asr.json")
    assert asr.returncode == 0, asr.stderr
    f0 = run_tool("eval_f0.py", *common, "--out", tmp_path / "f0.json")
    assert f0.returncode == 0, f0.stderr
    a, f = (json.loads((tmp_path / n).read_text()) for n in ("asr.json", "f0.json"))
    for result in (a, f):
        assert all(math.isfinite(x) for x in finite_numbers(result))
    assert a["test"]["utterances"] == 6 and a["metrics"]["wer"]["value"] >= 0
    assert a["units"] == units and ("ˈ" not in "".join(a["vocab"]))
    cer = a["metrics"]["cer"]
    assert cer["ci_lo"] <= cer["value"] <= cer["ci_hi"]
    assert f["metrics"]["f0_rmse_hz"]["value"] > 0 and 0 <= f["metrics"]["vuv_error"]["value"] <= 1
    assert abs(sum(a["layer_weights"]) - 1) < 1e-5
    if upstream == "export":
        assert len(a["layer_weights"]) >= 2  # every layer of the encoder is offered to the probe


def test_report_writes_table_and_json(corpus, export, tmp_path) -> None:
    res = run_tool("eval_report.py", "--upstream", export, "--corpus", corpus,
                   "--out-dir", tmp_path, *TINY)
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "results.md").read_text()
    assert f"| pretrained (`{export}`)" in md and "| log-Mel baseline |" in md and "Verdict" in md
    assert "nan" not in md.lower()
    report = json.loads((tmp_path / "results.json").read_text())
    assert all(math.isfinite(x) for x in finite_numbers(report))
    assert set(report["difference"]) == {"WER %", "CER %", "F0-RMSE Hz", "F0-RMSE cents",
                                         "GPE %", "V/UV error %"}


def test_shards_without_transcripts(tmp_path, export) -> None:
    write_split(tmp_path / "train", "train", 3, seed=3, transcripts=False)
    res = run_tool("eval_asr.py", "--upstream", "logmel", "--train", tmp_path / "train",
                   "--test", tmp_path / "train", *TINY)
    assert res.returncode == 2
    assert "no 'transcript'" in res.stderr and "make_shards" in res.stderr


def test_empty_split(tmp_path, corpus) -> None:
    (tmp_path / "empty").mkdir()
    res = run_tool("eval_asr.py", "--upstream", "logmel", "--train", corpus / "train",
                   "--test", tmp_path / "empty", *TINY)
    assert res.returncode == 2 and "test split" in res.stderr and "no shards" in res.stderr
    with tarfile.open(tmp_path / "empty" / "x.tar", "w"):
        pass
    res = run_tool("eval_f0.py", "--upstream", "logmel", "--train", corpus / "train",
                   "--test", tmp_path / "empty", *TINY)
    assert res.returncode == 2 and "no usable utterances" in res.stderr


def test_unvoiced_only_audio(tmp_path) -> None:
    def noise(rng, seconds):
        return (0.05 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    write_split(tmp_path / "noise", "noise", 4, seed=4, audio_fn=noise)
    res = run_tool("eval_f0.py", "--upstream", "logmel", "--train", tmp_path / "noise",
                   "--test", tmp_path / "noise", *TINY)
    assert res.returncode == 2 and "no voiced frame" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_config_that_does_not_match_weights(tmp_path, export, corpus) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    cfg = json.loads((export / "config.json").read_text())
    cfg["model"]["model_dim"] *= 2
    (bad / "config.json").write_text(json.dumps(cfg))
    res = run_tool("eval_asr.py", "--upstream", bad, "--train", corpus / "train",
                   "--test", corpus / "test", *TINY)
    assert res.returncode == 2 and "does not match" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_live_checkpoint_goes_through_the_exporter(tmp_path, export) -> None:
    from wavlm_ds.eval.upstream import load_upstream
    calls = []

    def exporter(src: Path, out: Path) -> Path:  # stands in for tools/export.py's export_model
        calls.append(src)
        for name in ("model.safetensors", "config.json"):
            (out / name).write_bytes((export / name).read_bytes())
        return out
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    up = load_upstream(str(run_dir), exporter)
    assert calls == [run_dir] and up.info["upstream"] == str(run_dir) and up.encoder is not None


def test_directory_that_is_neither_export_nor_checkpoint(tmp_path, corpus) -> None:
    res = run_tool("eval_asr.py", "--upstream", tmp_path, "--train", corpus / "train",
                   "--test", corpus / "test", *TINY)
    assert res.returncode == 2 and "not a usable checkpoint" in res.stderr, res.stderr
