"""tools/export.py hf: the directory loads with AutoModel/AutoFeatureExtractor
(trust_remote_code) in a fresh process without wavlm_ds, and its hidden states equal
load_pretrained's (fp32, <= 1e-5) on a padded batch with an attention mask."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tests.unit.exports import speech_batch, tiny_export  # noqa: E402
from wavlm_ds.export import export_hf_from  # noqa: E402
from wavlm_ds.ops.logmel import log_mel  # noqa: E402
from wavlm_ds.pretrained import load_pretrained  # noqa: E402

# Runs with `python -S`: site-packages is put on sys.path by hand, so no .pth file runs
# and the editable install of wavlm_ds is not importable.
FRESH = """
import sys
sys.path[:0] = [sys.argv[1]]
import importlib.util
assert importlib.util.find_spec("wavlm_ds") is None, "wavlm_ds must not be importable here"
import torch
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained(sys.argv[2], trust_remote_code=True)
wavs = [w.numpy() for w in torch.load(sys.argv[3])]
batch = extractor(wavs, sampling_rate=16000, padding=True, return_tensors="pt")
with torch.no_grad():
    out = model(**batch, output_hidden_states=True)
torch.save({"hidden": list(out.hidden_states), "last": out.last_hidden_state,
            "frame_lengths": out.frame_lengths, "attention_mask": batch["attention_mask"],
            "module": type(model).__module__}, sys.argv[4])
"""


def reference_layers(export: Path, wav: torch.Tensor) -> list[torch.Tensor]:
    """load_pretrained's hidden states of one unpadded utterance: block input, blocks
    1..N-1, final output (N + 1 tensors (T, D))."""
    encoder, cfg = load_pretrained(export)
    feats, frames = log_mel(wav[None], torch.tensor([len(wav)]), mode=cfg.data.logmel_mode)
    with torch.no_grad():
        out = encoder(feats, frames, output_hidden_states=True)
    return [h[0] for h in out.layer_outputs[:-1]] + [out.hidden[0]]


@pytest.mark.parametrize("mode", ["htk", "kaldi"])
def test_fresh_process_matches_load_pretrained(mode, tmp_path):
    export = tiny_export(tmp_path / "export", logmel_mode=mode)
    hf_dir = tmp_path / "hf"
    export_hf_from(export, hf_dir)
    code = (hf_dir / "modeling_wavlm_ds.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+wavlm_ds", code, re.M)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_wavlm_ds.WavLMDSModel"
    assert (hf_dir / "model.safetensors").is_file() and not list(hf_dir.glob("*.bin"))
    wavs = speech_batch()
    torch.save(wavs, tmp_path / "wavs.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    site = str(Path(torch.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-S", "-c", FRESH, site, str(hf_dir),
                           str(tmp_path / "wavs.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["module"].startswith("transformers_modules")
    assert list((tmp_path / "hf_home").rglob("modeling_wavlm_ds.py"))  # cached under HF_HOME
    assert got["attention_mask"].sum(-1).tolist() == [len(w) for w in wavs]
    assert torch.equal(got["hidden"][-1], got["last"])
    for row, wav in enumerate(wavs):
        want = reference_layers(export, wav)
        T = want[0].shape[0]
        assert int(got["frame_lengths"][row]) == T and len(got["hidden"]) == len(want)
        for layer, ref in enumerate(want):
            diff = (got["hidden"][layer][row, :T] - ref).abs().max().item()
            assert diff <= 1e-5, (mode, row, layer, diff)
            assert not got["hidden"][layer][row, T:].any()  # padding stays zero


def test_export_from_another_config_version_names_the_key(tmp_path):
    export = tiny_export(tmp_path / "export")
    cfg = json.loads((export / "config.json").read_text())
    cfg["model"]["rotary_dim"] = 64  # a key this version does not know
    (export / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="rotary_dim") as info:
        export_hf_from(export, tmp_path / "hf")
    assert "config.json" in str(info.value)
