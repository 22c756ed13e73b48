"""Fused log-Mel (htk mode) as one Triton kernel for CUDA.

One program computes BLOCK_T frames of one row: it builds each frame's sample indices in
registers (centre padding by reflection at 0 and at the row's *own* last sample, exactly
as the reference `_frame_indices`), multiplies the frames by the windowed DFT basis (cos
and sin, 400 x 201, as matmuls over 400 taps in BLOCK_K slices), squares and sums to the
power spectrum one BLOCK_F slice of bins at a time, multiplies that slice into the mel
filterbank and accumulates, then takes log(max(x, 1e-10)). The (B, T, 201) spectrogram is
never written to memory: only the (B, T, 80) result is.

Matmuls use `input_precision="tf32x3"` (fp32-accurate on tensor cores); everything is fp32.
The kernel runs on CUDA once tools/gpu_selftest.py passed (op 'logmel') or when forced; on
CPU it runs only under TRITON_INTERPRET=1, which the unit test uses (fp32, small shapes).
Per-segment normalization stays in torch (ops/logmel.py) on the (B, T, 80) output.
"""
from __future__ import annotations

import functools

import torch

from wavlm_ds.ops.mel_constants import HOP, N_BINS, N_MELS, WIN, mel_constants

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = None



def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _logmel_htk_kernel(audio_ptr, lengths_ptr, cos_ptr, sin_ptr, fb_ptr, out_ptr,
                           T, stride_ab, stride_ob, stride_ot,
                           WIN_: tl.constexpr, HOP_: tl.constexpr, NBINS: tl.constexpr,
                           NMEL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_F: tl.constexpr, BLOCK_M: tl.constexpr):
        b = tl.program_id(0)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        last = tl.maximum(tl.load(lengths_ptr + b).to(tl.int32) - 1, 0)
        m = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_T, BLOCK_M), dtype=tl.float32)
        for f0 in range(0, NBINS, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            re = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
            im = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
            for k0 in range(0, WIN_, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                idx = t[:, None] * HOP_ - WIN_ // 2 + k[None, :]
                idx = tl.abs(idx)  # reflect at 0
                idx = tl.where(idx > last, 2 * last - idx, idx)  # reflect at the row's end
                idx = tl.maximum(idx, 0)
                x = tl.load(audio_ptr + b * stride_ab + idx,
                            mask=(t[:, None] < T) & (k[None, :] < WIN_), other=0.0)
                basis_mask = (k[:, None] < WIN_) & (f[None, :] < NBINS)
                c = tl.load(cos_ptr + k[:, None] * NBINS + f[None, :], mask=basis_mask, other=0.0)
                s = tl.load(sin_ptr + k[:, None] * NBINS + f[None, :], mask=basis_mask, other=0.0)
                re += tl.dot(x.to(tl.float32), c.to(tl.float32), input_precision="tf32x3")
                im += tl.dot(x.to(tl.float32), s.to(tl.float32), input_precision="tf32x3")
            power = re * re + im * im
            fb = tl.load(fb_ptr + f[:, None] * NMEL + m[None, :],
                         mask=(f[:, None] < NBINS) & (m[None, :] < NMEL), other=0.0)
            acc += tl.dot(power, fb.to(tl.float32), input_precision="tf32x3")
        out = tl.log(tl.maximum(acc, 1e-10))
        tl.store(out_ptr + b * stride_ob + t[:, None] * stride_ot + m[None, :], out,
                 mask=(t[:, None] < T) & (m[None, :] < NMEL))


@functools.lru_cache(maxsize=4)
def _basis(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windowed DFT basis (400, 201) cos and sin, and the htk mel filterbank (201, 80)."""
    window, fb, _ = mel_constants("htk", device)
    k = torch.arange(WIN, dtype=torch.float64)[:, None]
    f = torch.arange(N_BINS, dtype=torch.float64)[None, :]
    angle = 2 * torch.pi * ((k * f) % WIN) / WIN  # exact phase: k*f mod N before scaling
    w = window.double().cpu()[:, None]
    cos = (w * torch.cos(angle)).float().contiguous().to(device)
    sin = (w * torch.sin(angle)).float().contiguous().to(device)
    return cos, sin, fb.float().contiguous().to(device)


def log_mel_htk_triton(audio: torch.Tensor, lengths: torch.Tensor, T: int,
                       block_t: int = 32, block_k: int = 32, block_f: int = 64) -> torch.Tensor:
    """(B, S) fp32 audio, (B,) lengths -> (B, T, 80) log power mel, htk framing, reflected at
    each row's own end (the reference's semantics); not normalized, padding not zeroed."""
    if triton is None:
        raise RuntimeError("log-Mel impl 'triton' needs the triton package")
    audio = audio.contiguous()
    B = audio.shape[0]
    cos, sin, fb = _basis(audio.device)
    out = torch.empty(B, T, N_MELS, dtype=torch.float32, device=audio.device)
    grid = (B, triton.cdiv(T, block_t))
    _logmel_htk_kernel[grid](audio, lengths.to(torch.int32).contiguous(), cos, sin, fb, out,
                             T, audio.stride(0), out.stride(0), out.stride(1),
                             WIN_=WIN, HOP_=HOP, NBINS=N_BINS, NMEL=N_MELS, BLOCK_T=block_t,
                             BLOCK_K=block_k, BLOCK_F=block_f, BLOCK_M=128)
    return out
