"""Start-up checks of the GPU path, the CUDA RNG in the trainer state, model vs hardware
FLOPs, and the host-known masked count."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from wavlm_ds import engine as E
from wavlm_ds.config import ConfigError, ModelConfig, RunConfig, load_config
from wavlm_ds.model.flops import forward_flops, micro_batch_flops
from wavlm_ds.ops.span_mask import span_mask

CPU = torch.device("cpu")


def cfg_with(**model) -> RunConfig:
    return dataclasses.replace(RunConfig(), model=dataclasses.replace(ModelConfig(), **model))


def test_settings_a_cpu_cannot_honour_fail_at_start_up(monkeypatch):
    with pytest.raises(ConfigError, match="model.fast_paths: force needs a CUDA GPU"):
        E.check_device_config(cfg_with(fast_paths="force"), CPU)
    with pytest.raises(ConfigError, match="model.attention_impl: flex trains only on CUDA"):
        E.check_device_config(cfg_with(attention_impl="flex", attention_dropout=0.0), CPU)
    monkeypatch.setattr(E, "compile_support_problem", lambda device: "no compiler here")
    with pytest.raises(ConfigError, match="model.compile: true, but no compiler here; fix"):
        E.check_device_config(cfg_with(compile=True), CPU)
    E.check_device_config(cfg_with(), CPU)  # the defaults are fine


def test_fused_paths_without_dropout_refuse_attention_dropout():
    for impl in ("flex", "blocked"):
        with pytest.raises(ConfigError, match="has no attention dropout.*fix: set model"):
            load_config(None, [f"model.attention_impl={impl}", "model.attention_dropout=0.1"])
    load_config(None, ["model.attention_impl=sdpa", "model.attention_dropout=0.1"])


def test_resolve_writes_the_choice_into_the_config():
    cfg, info = E.resolve_fast_paths(cfg_with(attention_dropout=0.0), CPU)
    assert cfg.model.attention_impl == "blocked" == info["attention_impl"]
    assert info["logmel_impl"] == "torch" and info["compile"] is False
    cfg, info = E.resolve_fast_paths(cfg_with(attention_dropout=0.0, compile=True), CPU)
    assert cfg.model.attention_impl == "sdpa"


def test_cuda_rng_is_saved_and_restored(monkeypatch):
    cuda = torch.device("cuda", 0)
    store = {"state": torch.arange(8, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: store["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device=None: store.update(state=state.clone()))
    state = E.rng_state(cuda)
    assert set(state) == {"rng_cpu", "rng_cuda"}
    store["state"] = torch.zeros(8, dtype=torch.uint8)  # the stream moved on
    E.set_rng_state(state, cuda)
    assert torch.equal(store["state"], torch.arange(8, dtype=torch.uint8))
    assert set(E.rng_state(CPU)) == {"rng_cpu"}
    with pytest.raises(E.CheckpointError, match="no CUDA RNG state"):
        E.set_rng_state({"rng_cpu": torch.get_rng_state()}, cuda)


def test_host_count_equals_the_masks_count():
    cfg = RunConfig()
    lengths = torch.tensor([16000, 9123, 30000, 401])
    batch = {"lengths": lengths, "valid": torch.tensor([True, True, False, True])}
    frames, seconds, count = E.host_batch_info(batch, cfg)
    mask = span_mask(frames, int(frames.max()), cfg.masking.mask_ratio, cfg.masking.mask_span_frames,
                     torch.Generator().manual_seed(0))
    assert count == int(mask[batch["valid"]].sum())
    assert seconds == pytest.approx((16000 + 9123 + 401) / 16000)


def test_model_flops_count_valid_frames_and_layers_that_ran():
    m = ModelConfig(num_layers=4)
    model, hardware = micro_batch_flops(m, [100, 60], padded_frames=100, num_rows=3, layers_run=3)
    assert model == 3 * (forward_flops(m, 100, 1, 3) + forward_flops(m, 60, 1, 3))
    assert hardware == 3 * forward_flops(m, 100, 3, 3)
    assert model < hardware
    ckpt = dataclasses.replace(m, activation_checkpointing=True)
    _, recomputed = micro_batch_flops(ckpt, [100], 100, 1, 4)
    blocks = forward_flops(m, 100, 1, 4) - forward_flops(m, 100, 1, 0)
    assert recomputed == 3 * forward_flops(m, 100, 1, 4) + blocks


def test_shipped_deepspeed_env_parses_as_deepspeed_reads_it():
    """DeepSpeed 0.19.8's runner splits every line of .deepspeed_env at '=' (a blank or
    comment line crashes it) and exports it to every node of a multi-node launch."""
    from wavlm_ds.launch import ROOT
    lines = (ROOT / ".deepspeed_env").read_text().splitlines()
    assert lines
    for line in lines:
        key, value = line.split("=", maxsplit=1)
        assert key and key == key.strip() and value and not line.startswith("#")


def test_recipe_config_compiles_and_demo_does_not():
    from wavlm_ds.launch import ROOT
    assert load_config(ROOT / "configs" / "wavlm_large_plus.yaml").model.compile is True
    assert load_config(ROOT / "configs" / "demo.yaml").model.compile is False
