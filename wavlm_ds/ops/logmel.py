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
variance over its valid frames; padded frames are exactly 0. Digital silence gives finite
features thanks to the log floor (and normalizes to 0). That full-segment normalization is
the source document's, and it is what the pretraining *targets*, the k-means features and
frozen-upstream evaluation (no mask) use. The model's *input* during pretraining and masked
evaluation must not see statistics of masked frames (each normalized row sums to zero per
bin, so the visible frames would carry the masked frames' mean): `engine.prepare_micro`
calls log_mel with normalize=False and then `normalize_per_segment(..., include=unmasked
valid frames)`; `window_samples` names the audio samples those frames read.

Implementation: the reference gathers every frame with one index tensor (per-row reflect
or snip), windows it, applies torch.fft.rfft and one mel matmul; the fast htk path frames
the interior straight from an unfold view, works in cache-sized blocks of frames on CPU
(rfft, re*re + im*im, mel matmul, log) and gathers only the frames that touch a row's start
or end (see `_log_mel_htk_fast`). No Python loop over rows and no host sync on CUDA (value
checks become device asserts there). On CUDA, once the GPU self-test passed, htk mode runs
the fused Triton kernel of ops/triton_logmel.py (framing, windowed DFT as matmuls, power,
mel, log in one pass).
"""
from __future__ import annotations

import torch

from wavlm_ds.ops.checks import assert_on_device
from wavlm_ds.ops.mel_constants import HOP, HTK_FLOOR, N_MELS, WIN, mel_constants

NORM_EPS = 1e-5


def num_frames(lengths: torch.Tensor, mode: str = "htk") -> torch.Tensor:
    """Frames per row: htk 1 + S // 160; kaldi 1 + (S - 400) // 160 (0 if S < 400)."""
    if mode == "htk":
        return 1 + torch.div(lengths, HOP, rounding_mode="floor")
    if mode == "kaldi":
        return torch.where(lengths >= WIN, 1 + torch.div(lengths - WIN, HOP, rounding_mode="floor"),
                           torch.zeros_like(lengths))
    raise ValueError(f"mode={mode!r}: use 'htk' or 'kaldi'")


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
    lo, hi = torch.aminmax(audio) if audio.numel() else (audio.new_zeros(()), audio.new_zeros(()))
    # one pass, no temporaries: NaN propagates into both, +-inf shows in one of them
    ok = ((lengths >= minimum).all() & (lengths <= audio.shape[1]).all()
          & torch.isfinite(lo) & torch.isfinite(hi))

    def describe() -> str:
        bad = ~torch.isfinite(audio).all(dim=1) | (lengths < minimum) | (lengths > audio.shape[1])
        return (f"log_mel: rows {bad.nonzero().flatten().tolist()} have non-finite samples or a "
                f"length outside [{minimum}, {audio.shape[1]}] (mode {mode}); "
                f"lengths={lengths.tolist()}")

    assert_on_device(ok, describe, "log_mel: lengths out of range or non-finite audio")


def _frame_indices(lengths: torch.Tensor, frames: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, F, 400) sample index of every tap of frames `frames` ((F,) or (B, F)), reflected
    at each row's own end in htk mode."""
    taps = torch.arange(WIN, device=lengths.device)
    start = frames * HOP - (WIN // 2 if mode == "htk" else 0)
    idx = start[..., None] + taps  # (F, 400) or (B, F, 400)
    if idx.ndim == 2:
        idx = idx[None].expand(lengths.shape[0], -1, -1)
    last = (lengths - 1).clamp(min=0)[:, None, None]
    idx = idx.abs()  # reflect at 0 (excluding the edge sample, as numpy/torch "reflect")
    idx = torch.where(idx > last, 2 * last - idx, idx)  # reflect at the row's last sample
    return idx.clamp(min=0)


def _gather_frames(audio: torch.Tensor, lengths: torch.Tensor, frames: torch.Tensor,
                   mode: str) -> torch.Tensor:
    idx = _frame_indices(lengths, frames, mode)  # (B, F, 400)
    return audio.gather(1, idx.reshape(audio.shape[0], -1)).view(*idx.shape)


def _log_mel_reference(audio: torch.Tensor, lengths: torch.Tensor, T: int, mode: str
                       ) -> torch.Tensor:
    """Every frame gathered explicitly (any mode): the oracle for the fast path."""
    frames = _gather_frames(audio, lengths, torch.arange(T, device=audio.device), mode)
    return _log_power_mel(frames, mode)  # (B, T, 80)


CHUNK_FRAMES = 1024  # frames per block on CPU: ~1.6 MB of windowed frames, cache-sized


def _log_mel_htk_fast(audio: torch.Tensor, lengths: torch.Tensor,
                      frame_lengths: torch.Tensor) -> torch.Tensor:
    """The fastest pure-torch htk path; no reflect-pad copy, no complex abs().

    Interior frames (window inside the tensor: frame t covers samples [160 t - 200,
    160 t + 200), interior for 2 <= t < t_end) come straight from an unfold view of the
    audio; per block of ~1024 frames (on CPU; one block on other devices): window, one
    rfft, power as re*re + im*im (a mul and an in-place addcmul on the real view, where
    torchaudio's complex abs() then pow(2) pays a hypot per bin), one mel matmul, log in
    place. Blocking keeps every temporary cache-sized and reused by the allocator: whole-
    batch temporaries (20 MB each at 8 x 16 s) page-fault afresh on every call, which
    cost more than the FFT itself here. Then the frames that reach past a row's start or
    end (the 2 head frames, the tensor's last frames and each row's last 3) are gathered
    with per-row reflection and overwrite their slots, so samples past a row's length
    never reach its valid frames.
    """
    window, fb, _ = mel_constants("htk", audio.device)
    B, S = audio.shape
    T = 1 + S // HOP
    out = audio.new_empty(B, T, N_MELS)
    t_end = max(2, (S - WIN // 2) // HOP + 1)
    if t_end > 2:
        view = audio[:, 2 * HOP - WIN // 2:].unfold(1, WIN, HOP)  # frame 2 + i
    step = max(1, CHUNK_FRAMES // B) if audio.device.type == "cpu" else max(1, t_end - 2)
    for c0 in range(2, t_end, step):
        c1 = min(c0 + step, t_end)
        out[:, c0:c1] = _log_power_mel(view[:, c0 - 2:c1 - 2], "htk")
    tail = (frame_lengths[:, None] - torch.arange(3, 0, -1, device=audio.device)).clamp(min=0)
    # head and tensor-end frames; aranges, not torch.tensor(list): no host-to-device copy
    edge = torch.cat([torch.arange(min(2, T), device=audio.device),
                      torch.arange(min(t_end, T), T, device=audio.device)])
    idx = torch.cat([edge.expand(B, -1), tail], dim=1)  # (B, E)
    fixed = _log_power_mel(_gather_frames(audio, lengths, idx, "htk"), "htk")
    return out.scatter_(1, idx[..., None].expand(-1, -1, N_MELS), fixed)


def mel_power(frames: torch.Tensor, mode: str = "htk") -> torch.Tensor:
    """Frames (..., 400) -> mel power (..., 80): window, rfft, re*re + im*im, mel matmul."""
    window, fb, n_fft = mel_constants(mode, frames.device)
    if mode == "kaldi":
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - 0.97 * prev  # pre-emphasis, first sample replicated
    spec = torch.view_as_real(torch.fft.rfft(frames * window, n=n_fft))  # (..., bins, 2)
    power = torch.mul(spec[..., 0], spec[..., 0]).addcmul_(spec[..., 1], spec[..., 1])
    return power @ fb


def _log_power_mel(frames: torch.Tensor, mode: str) -> torch.Tensor:
    """Frames (..., 400) -> log mel (..., 80)."""
    floor = HTK_FLOOR if mode == "htk" else torch.finfo(torch.float32).eps
    return mel_power(frames, mode).clamp_(min=floor).log_()


def _valid(frame_lengths: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1.0 on each row's valid frames, 0.0 on padding."""
    return (torch.arange(T, device=frame_lengths.device) < frame_lengths[:, None]).to(dtype)


def normalize_per_segment(feats: torch.Tensor, frame_lengths: torch.Tensor,
                          include: torch.Tensor | None = None) -> torch.Tensor:
    """Zero mean, unit variance per row and mel bin over a set of frames; all other -> 0.

    feats (B, T, 80); the statistics come from each row's valid frames, or, with `include`
    (B, T) bool, from the frames it marks (the model's input: the unmasked valid frames, so
    the input carries nothing about masked content). Frames outside the set are exactly 0.
    Defined for every set: a row with no frame in it is all 0; with one frame, that frame
    normalizes to 0 (variance 0, eps keeps rsqrt finite); a constant row (digital silence)
    normalizes to 0.

    Values are first shifted by the row's first frame in the set (so a constant row, such
    as digital silence at the log floor, is exactly 0 whatever fp32 summation does), then
    two passes (mean, then variance of the centred values: no cancellation). The masked
    sums are (B, 1, T) x (B, T, 80) batched matmuls, and the other frames are zeroed by a
    multiply (a broadcast `where` is several times slower on CPU); every implementation
    fills padded frames with finite values, so 0 * x is exact.
    """
    keep = (_valid(frame_lengths, feats.shape[1], feats.dtype) if include is None
            else include.to(feats.dtype))  # (B, T)
    weights = keep[:, None, :]  # (B, 1, T)
    count = keep.sum(dim=1).clamp(min=1)[:, None, None]  # (B, 1, 1)
    first = keep.argmax(dim=1)[:, None, None].expand(-1, 1, feats.shape[2])  # 0 if none
    shifted = feats - feats.gather(1, first)  # (B, T, 80)
    mean = torch.bmm(weights, shifted) / count  # (B, 1, 80)
    centered = shifted - mean
    var = torch.bmm(weights, centered.square()) / count
    return centered.mul_(torch.rsqrt(var + NORM_EPS)).mul_(keep[..., None])


def resolve_impl(mode: str, device: torch.device) -> str:
    """What impl='auto' runs for `mode` on `device`: 'triton' where the gate allows it, else
    'torch' for htk (the gathered 'reference' is kaldi mode's one implementation)."""
    if mode == "htk" and device.type == "cuda":
        from wavlm_ds.ops import triton_logmel
        from wavlm_ds.ops.gpu_gate import cuda_fast_path_enabled
        if triton_logmel.available() and cuda_fast_path_enabled("logmel_triton", device):
            return "triton"
    return "torch" if mode == "htk" else "reference"


def log_mel(audio: torch.Tensor, lengths: torch.Tensor, mode: str = "htk",
            normalize: bool = True, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Batched log-Mel; see the module docstring.

    impl: 'reference' gathers every frame explicitly; 'torch' uses torch.stft for htk mode
    (kaldi mode has one implementation, the gathered one); 'triton' is the fused kernel
    (htk, CUDA, or CPU under TRITON_INTERPRET=1); 'auto' picks 'triton' on a CUDA device
    whose self-test proved it (wavlm_ds.ops.gpu_gate, op 'logmel_triton') or when
    model.fast_paths is 'force', else 'torch' (see `resolve_impl`).
    """
    if mode not in ("htk", "kaldi"):
        raise ValueError(f"mode={mode!r}: use 'htk' or 'kaldi'")
    if impl not in ("auto", "torch", "reference", "triton"):
        raise ValueError(f"impl={impl!r}: use 'auto', 'torch', 'reference' or 'triton'")
    if impl == "triton" and mode != "htk":
        raise ValueError("impl='triton' computes htk mode only; use impl='auto' for kaldi")
    if impl == "auto":
        impl = resolve_impl(mode, audio.device)
    _check(audio, lengths, mode)
    frame_lengths = num_frames(lengths, mode)
    S = audio.shape[1]
    T = 1 + S // HOP if mode == "htk" else 1 + (S - WIN) // HOP  # the padded row's frames
    if impl == "triton":
        from wavlm_ds.ops.triton_logmel import log_mel_htk_triton
        feats = log_mel_htk_triton(audio, lengths, T)
    elif mode == "htk" and impl != "reference":
        feats = _log_mel_htk_fast(audio, lengths, frame_lengths)
    else:
        feats = _log_mel_reference(audio, lengths, T, mode)
    if normalize:
        feats = normalize_per_segment(feats, frame_lengths)
    else:
        feats = feats.mul_(_valid(frame_lengths, T, feats.dtype)[..., None])
    return feats, frame_lengths


def window_samples(frames: torch.Tensor, lengths: torch.Tensor, num_samples: int,
                   mode: str = "htk") -> torch.Tensor:
    """(B, S) bool: the samples that the 25 ms windows of the frames marked in `frames`
    (B, T) bool read, each row reflected at its own ends as log_mel does.

    So audio outside this set cannot change those frames' features (tested from the
    waveform in tests/unit/test_no_leak.py). Costs one (B, T, 400) index tensor.
    """
    B, T = frames.shape
    idx = _frame_indices(lengths, torch.arange(T, device=frames.device), mode)  # (B, T, 400)
    hits = frames[..., None].expand(-1, -1, WIN).reshape(B, -1).to(torch.float32)
    seen = torch.zeros(B, num_samples, device=frames.device)
    return seen.scatter_add_(1, idx.reshape(B, -1), hits) > 0
