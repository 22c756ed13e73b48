"""The s3prl upstream: the real s3prl Featurizer runs over it (weighted sum trainable), and
its hidden states equal load_pretrained's on the same audio; the torch.hub entry loads it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

interfaces = pytest.importorskip("s3prl.upstream.interfaces")

from tests.unit.exports import speech_batch, tiny_export  # noqa: E402
from wavlm_ds.hub.s3prl_expert import UpstreamExpert  # noqa: E402
from wavlm_ds.ops.logmel import log_mel  # noqa: E402
from wavlm_ds.pretrained import load_pretrained  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_featurizer_over_expert_matches_load_pretrained(tmp_path):
    export = tiny_export(tmp_path / "export")
    expert = UpstreamExpert(str(export))
    assert expert.get_downsample_rates("hidden_states") == 320
    featurizer = interfaces.Featurizer(expert, "hidden_states", upstream_device="cpu")
    wavs = speech_batch()
    with torch.no_grad():
        states = expert(wavs)
    encoder, _ = load_pretrained(export)
    num_layers = encoder.cfg.num_layers
    assert featurizer.layer_num == len(states["hidden_states"]) == num_layers + 2
    for row, wav in enumerate(wavs):
        feats, frames = log_mel(wav[None], torch.tensor([len(wav)]))
        with torch.no_grad():
            ref = encoder(feats, frames, output_hidden_states=True)
        want = ref.layer_outputs + [ref.hidden]  # block input, each block, final LayerNorm
        T = int(ref.lengths[0])
        for layer, w in enumerate(want):
            got = states["hidden_states"][layer][row]
            assert (got[:T] - w[0]).abs().max().item() <= 1e-5, (row, layer)
            assert not got[T:].any()
    features = featurizer(wavs, expert(wavs))  # weighted sum, cut to round(len / 320)
    assert [f.shape for f in features] == [(round(len(w) / 320), encoder.cfg.model_dim)
                                           for w in wavs]
    sum(f.sum() for f in features).backward()
    assert featurizer.weights.grad is not None and featurizer.weights.grad.abs().sum() > 0


def test_torch_hub_entry(tmp_path):
    export = tiny_export(tmp_path / "export")
    expert = torch.hub.load(str(ROOT), "wavlm_ds_local", str(export), source="local")
    assert isinstance(expert, UpstreamExpert)
    out = expert([torch.zeros(8000) + 0.01 * torch.randn(8000)])
    assert out["last_hidden_state"].shape[:2] == (1, 26)


def test_missing_export_names_the_file(tmp_path):
    with pytest.raises(Exception, match="model.safetensors is missing"):
        UpstreamExpert(str(tmp_path))
