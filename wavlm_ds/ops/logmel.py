"""Batched log-Mel features on the training device, with per-segment normalization.

log_mel(audio (B, S) fp32, lengths (B,)) -> (feats (B, T, 80) fp32, frame_lengths (B,)).
16 kHz, 25 ms window (400 samples), 10 ms hop (160), 80 mel bins; always fp32 whatever the
model's dtype. Two modes:

* ``htk``: torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)
  then log(max(x, 1e-10)). center=True with reflect padding: frames = 1 + S // 160. The
  reflection happens at each row's own end (as if the row were run alone), so samples past
  a row's length never reach its valid frames.
* ``kaldi``: torchaudio.compliance.kaldi.fbank(num_mel_bins=80, dither=0): DC removal,
  pre-emphasis 0.97, povey window, 512-point FFT, mel bins 20 Hz..Nyquist, log(max(x, eps)).
  snip_edges=True: frames = 1 + (S - 400) // 160; a row shorter than one window (400
  samples) has no frame and is an error.

Then, with normalize=True, each row is normalized per mel bin to zero mean and unit
variance over its valid frames only; padded frames are exactly 0. Digital silence gives
finite features thanks to the log floor (and normalizes to 0).

Implementation: frames are gathered with one index tensor (per-row reflect or snip),
windowed, transformed with torch.fft.rfft, projected with one mel matmul. No Python loop
over rows and no host sync on CUDA (value checks become device asserts there).
"""
from __future__ import annotations

import functools

import torch

SAMPLE_RATE, WIN, HOP, N_MELS = 16000, 400, 160, 80
HTK_FLOOR = 1e-10
NORM_EPS = 1e-5


def num_frames(lengths: torch.Tensor, mode: str = "htk") -> torch.Tensor:
    """Frames per row: htk 1 + S // 160; kaldi 1 + (S - 400) // 160 (0 if S < 400)."""
    if mode == "htk":
        return 1 + torch.div(lengths, HOP, rounding_mode="floor")
    if mode == "kaldi":
        return torch.where(lengths >= WIN, 1 + torch.div(lengths - WIN, HOP, rounding_mode="floor"),
                           torch.zeros_like(lengths))
    raise ValueError(f"mode={mode!r}: use 'htk' or 'kaldi'")


@functools.lru_cache(maxsize=8)
def _constants(mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(window (400,), mel filterbank (n_fft//2 + 1, 80), n_fft) for a mode, cached per device."""
    import torchaudio

    if mode == "htk":
        window = torch.hann_window(WIN, periodic=True, dtype=torch.float64)
        fb = torchaudio.functional.melscale_fbanks(WIN // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS,
                                                   SAMPLE_RATE, norm=None, mel_scale="htk")
        n_fft = WIN
    else:
        window = torch.hann_window(WIN, periodic=False, dtype=torch.float64).pow(0.85)
        bins, _ = torchaudio.compliance.kaldi.get_mel_banks(N_MELS, 512, float(SAMPLE_RATE),
                                                            20.0, 0.0, 100.0, -500.0, 1.0)
        fb = torch.nn.functional.pad(bins, (0, 1)).T  # (257, 80)
        n_fft = 512
    return window.float().to(device), fb.float().to(device), n_fft


def _check(audio: torch.Tensor, lengths: torch.Tensor, mode: str) -> None:
    if audio.ndim != 2:
        raise ValueError(f"audio: expected (B, S), got shape {tuple(audio.shape)}")
    if audio.dtype != torch.float32:
        raise ValueError(f"audio: expected float32 samples in [-1, 1], got {audio.dtype}; "
                         "convert int PCM with x / 32768")
    if lengths.ndim != 1 or lengths.shape[0] != audio.shape[0] or lengths.is_floating_point():
        raise ValueError(f"lengths: expected an integer tensor of shape ({audio.shape[0]},), "
                         f"got {lengths.dtype} {tuple(lengths.shape)}")
    minimum = WIN if mode == "kaldi" else 1
    ok = (lengths >= minimum).all() & (lengths <= audio.shape[1]).all() & torch.isfinite(audio).all()
    if audio.device.type != "cpu":
        torch._assert_async(ok, "log_mel: lengths out of range or non-finite audio")
    elif not bool(ok):
        bad = ~torch.isfinite(audio).all(dim=1) | (lengths < minimum) | (lengths > audio.shape[1])
        raise ValueError(f"log_mel: rows {bad.nonzero().flatten().tolist()} have non-finite "
                         f"samples or a length outside [{minimum}, {audio.shape[1]}] (mode "
                         f"{mode}); lengths={lengths.tolist()}")


def _frame_indices(lengths: torch.Tensor, T: int, mode: str) -> torch.Tensor:
    """(B, T, 400) sample index of every frame tap, reflected at each row's own end (htk)."""
    device = lengths.device
    taps = torch.arange(WIN, device=device)
    start = torch.arange(T, device=device) * HOP - (WIN // 2 if mode == "htk" else 0)
    idx = start[:, None] + taps[None, :]  # (T, 400)
    idx = idx[None].expand(lengths.shape[0], -1, -1)
    last = (lengths - 1).clamp(min=0)[:, None, None]
    idx = idx.abs()  # reflect at 0 (excluding the edge sample, as numpy/torch "reflect")
    idx = torch.where(idx > last, 2 * last - idx, idx)  # reflect at the row's last sample
    return idx.clamp(min=0)


def _power_mel(frames: torch.Tensor, mode: str) -> torch.Tensor:
    window, fb, n_fft = _constants(mode, frames.device)
    if mode == "kaldi":
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - 0.97 * prev  # pre-emphasis, first sample replicated
    spec = torch.fft.rfft(frames * window, n=n_fft)  # (B, T, n_fft//2 + 1)
    power = spec.real.square() + spec.imag.square()
    mel = power @ fb  # (B, T, 80)
    floor = HTK_FLOOR if mode == "htk" else torch.finfo(torch.float32).eps
    return torch.log(mel.clamp(min=floor))


def normalize_per_segment(feats: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per row and mel bin over valid frames; padding -> 0."""
    valid = (torch.arange(feats.shape[1], device=feats.device) < frame_lengths[:, None])[..., None]
    count = frame_lengths.clamp(min=1).to(feats.dtype)[:, None, None]
    x = torch.where(valid, feats, 0.0)
    mean = x.sum(dim=1, keepdim=True) / count
    centered = torch.where(valid, feats - mean, 0.0)
    var = centered.square().sum(dim=1, keepdim=True) / count
    return centered * torch.rsqrt(var + NORM_EPS)


def log_mel(audio: torch.Tensor, lengths: torch.Tensor, mode: str = "htk",
            normalize: bool = True, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Batched log-Mel; see the module docstring. impl: 'auto' | 'torch'."""
    if mode not in ("htk", "kaldi"):
        raise ValueError(f"mode={mode!r}: use 'htk' or 'kaldi'")
    if impl not in ("auto", "torch"):
        raise ValueError(f"impl={impl!r}: use 'auto' or 'torch'")
    _check(audio, lengths, mode)
    frame_lengths = num_frames(lengths, mode)
    T = int(num_frames(torch.tensor(audio.shape[1]), mode))
    idx = _frame_indices(lengths, T, mode)  # (B, T, 400)
    frames = audio.gather(1, idx.reshape(audio.shape[0], -1)).view(*idx.shape)  # (B, T, 400)
    feats = _power_mel(frames, mode)
    if normalize:
        feats = normalize_per_segment(feats, frame_lengths)
    else:
        valid = torch.arange(T, device=audio.device) < frame_lengths[:, None]
        feats = torch.where(valid[..., None], feats, 0.0)
    return feats, frame_lengths
