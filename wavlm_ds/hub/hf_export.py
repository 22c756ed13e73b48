"""Export an encoder for transformers: remote code + config.json + model.safetensors.

`export_hf(export_dir, out)` rebuilds the encoder with `load_pretrained`, copies its weights
into `hf/modeling_wavlm_ds.WavLMDSModel` (same parameter names under `encoder.`, plus the
log-Mel window and filterbank as buffers) and saves it with `save_pretrained`; the classes
are registered with `register_for_auto_class`, so transformers writes `auto_map` and copies
the remote code file. The feature extractor is transformers' own Wav2Vec2FeatureExtractor
with normalization off (the model normalizes its log-Mel itself): it only pads and returns
the attention mask.
"""
from __future__ import annotations

from pathlib import Path

import torch

from wavlm_ds.config import ConfigError
from wavlm_ds.hub.hf.modeling_wavlm_ds import WavLMDSConfig, WavLMDSModel
from wavlm_ds.ops.mel_constants import mel_constants
from wavlm_ds.pretrained import load_pretrained


def hf_config(encoder: torch.nn.Module, logmel_mode: str) -> WavLMDSConfig:
    m = encoder.cfg
    return WavLMDSConfig(
        num_mel_bins=m.num_mel_bins, frame_stack=m.frame_stack, frontend_dim=m.frontend_dim,
        model_dim=m.model_dim, num_layers=m.num_layers, num_heads=m.num_heads,
        ffn_dim=m.ffn_dim, conv_pos_kernel=m.conv_pos_kernel, conv_pos_groups=m.conv_pos_groups,
        num_buckets=m.num_buckets, max_distance=m.max_distance, logmel_mode=logmel_mode,
        pos_norm=isinstance(getattr(encoder, "pos_norm", None), torch.nn.LayerNorm))


def build_hf_model(export_dir: Path) -> WavLMDSModel:
    """The transformers model holding an export's weights (eval mode, fp32)."""
    encoder, cfg = load_pretrained(export_dir)
    model = WavLMDSModel(hf_config(encoder, cfg.data.logmel_mode)).eval()
    missing, unexpected = model.encoder.load_state_dict(encoder.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError(f"{export_dir}: the encoder does not fit the transformers model "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]}); "
                          "wavlm_ds/hub/hf/modeling_wavlm_ds.py must follow wavlm_ds/model/")
    window, fb, _ = mel_constants(cfg.data.logmel_mode, torch.device("cpu"))
    model.logmel.window.copy_(window)
    model.logmel.mel_fb.copy_(fb)
    return model


def export_hf(export_dir: Path, out: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor
    model = build_hf_model(Path(export_dir))
    WavLMDSConfig.register_for_auto_class()
    WavLMDSModel.register_for_auto_class("AutoModel")
    model.save_pretrained(out, safe_serialization=True)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=False, return_attention_mask=True).save_pretrained(out)
    return Path(out)
