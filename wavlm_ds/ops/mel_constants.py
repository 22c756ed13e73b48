"""The log-Mel framing constants and filterbanks that both log-Mel paths share.

16 kHz audio, 25 ms window (400 samples), 10 ms hop (160), 80 mel bins. htk mode: periodic
Hann window, 400-point FFT (201 bins), torchaudio's htk mel scale without norm; kaldi mode:
povey window (Hann^0.85), 512-point FFT, kaldi's mel banks from 20 Hz. `ops/logmel.py` (the
torch paths) and `ops/triton_logmel.py` (the fused CUDA kernel) both read them from here.
"""
from __future__ import annotations

import functools

import torch

SAMPLE_RATE, WIN, HOP, N_MELS = 16000, 400, 160, 80
N_BINS = WIN // 2 + 1  # htk: bins of the 400-point FFT
HTK_FLOOR = 1e-10  # log(max(power, floor)) in htk mode


@functools.lru_cache(maxsize=8)
def mel_constants(mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(window (400,), mel filterbank (n_fft//2 + 1, 80), n_fft) for a mode, cached per device."""
    import torchaudio

    if mode == "htk":
        window = torch.hann_window(WIN, periodic=True, dtype=torch.float64)
        fb = torchaudio.functional.melscale_fbanks(N_BINS, 0.0, SAMPLE_RATE / 2, N_MELS,
                                                   SAMPLE_RATE, norm=None, mel_scale="htk")
        n_fft = WIN
    else:
        window = torch.hann_window(WIN, periodic=False, dtype=torch.float64).pow(0.85)
        bins, _ = torchaudio.compliance.kaldi.get_mel_banks(N_MELS, 512, float(SAMPLE_RATE),
                                                            20.0, 0.0, 100.0, -500.0, 1.0)
        fb = torch.nn.functional.pad(bins, (0, 1)).T  # (257, 80)
        n_fft = 512
    return window.float().to(device), fb.float().to(device), n_fft
