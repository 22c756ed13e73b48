"""WavLM's utterance mixing (denoising augmentation), batched on the training device.

With probability p per row, a crop of another utterance of the batch (SNR U(mix_snr_db),
at most mix_max_fraction of the primary's length) or of a noise sample (SNR
U(noise_snr_db)) is added at a random offset. Only the input changes: the caller keeps the
clean audio as the target. All choices come from the generator passed in; no Python loop
over rows, no host sync.

The gain. The SNR is set against the primary's power over `power_samples` (B, S) bool: in
pretraining, the samples that unmasked frames' windows read (`ops.logmel.window_samples`),
so the gain, and through it the model's input, carries nothing about the masked audio.
This departs from WavLM's recipe, which uses the whole utterance's power; without a mask
(default) the valid samples are used, as WavLM does. Defined results: a primary with zero
power over those samples (all silent, or every frame masked) gets gain 0, i.e. no
interferer (an SNR against silence is undefined); an interferer crop with zero power adds
nothing; a louder interferer (negative SNR) is added as drawn, finite.
"""
from __future__ import annotations

import torch

from wavlm_ds.config import DataConfig


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _add_crops(audio: torch.Tensor, lengths: torch.Tensor, source: torch.Tensor,
               source_len: torch.Tensor, apply: torch.Tensor, snr_db: torch.Tensor,
               max_fraction: float, gen: torch.Generator, power_samples: torch.Tensor
               ) -> torch.Tensor:
    """audio (B, S) += scaled crop of source row b (source (B, S2), source_len (B,)); the
    gain sets the SNR against audio's power over power_samples (B, S) bool."""
    B, S = audio.shape
    dev = audio.device
    u = torch.rand(B, 3, generator=gen, device=dev)
    span = torch.minimum((u[:, 0] * max_fraction * lengths).long(), source_len).clamp(min=1)
    src_start = (u[:, 1] * (source_len - span + 1).clamp(min=1)).long()
    dst_start = (u[:, 2] * (lengths - span + 1).clamp(min=1)).long()
    t = torch.arange(S, device=dev)
    inside = (t[None] >= dst_start[:, None]) & (t[None] < (dst_start + span)[:, None])  # (B, S)
    idx = (src_start[:, None] + t[None] - dst_start[:, None]).clamp(0, source.shape[1] - 1)
    crop = torch.where(inside, source.gather(1, idx), 0.0)  # (B, S)
    p_sig = (audio.square() * power_samples).sum(1) / power_samples.sum(1).clamp(min=1)
    p_crop = crop.square().sum(1) / span
    scale = torch.sqrt(p_sig / (p_crop.clamp(min=1e-10) * 10 ** (snr_db / 10)))
    scale = torch.where(apply & (p_crop > 0) & (p_sig > 0), scale, 0.0)
    return audio + scale[:, None] * crop


def mix_utterances(audio: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator,
                   cfg: DataConfig, noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                   power_samples: torch.Tensor | None = None) -> torch.Tensor:
    """Return a mixed copy of audio (B, S); rows not chosen are unchanged.

    power_samples (B, S) bool: the samples whose power sets each row's gain (default: the
    valid samples, t < lengths); see the module docstring.
    """
    B, S = audio.shape
    dev = audio.device
    if power_samples is None:
        power_samples = torch.arange(S, device=dev)[None] < lengths[:, None]
    apply = torch.rand(B, generator=generator, device=dev) < cfg.mix_prob
    if B < 2 and noise is None:
        return audio.clone()
    use_noise = (torch.rand(B, generator=generator, device=dev) < 0.5) if noise is not None else \
        torch.zeros(B, dtype=torch.bool, device=dev)
    shift = torch.randint(1, max(B, 2), (B,), generator=generator, device=dev)
    partner = (torch.arange(B, device=dev) + shift) % B  # always another row
    mixed = _add_crops(audio, lengths, audio[partner], lengths[partner], apply & ~use_noise,
                       _uniform(generator, B, *cfg.mix_snr_db, dev), cfg.mix_max_fraction,
                       generator, power_samples)
    if noise is not None:
        noise_audio, noise_len = noise
        pick = torch.randint(0, noise_audio.shape[0], (B,), generator=generator, device=dev)
        mixed = _add_crops(mixed, lengths, noise_audio[pick], noise_len[pick], apply & use_noise,
                           _uniform(generator, B, *cfg.noise_snr_db, dev), 1.0, generator,
                           power_samples)
    return mixed
