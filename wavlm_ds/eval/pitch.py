"""F0 reference from Praat (parselmouth), aligned to a probe's frame grid, and its self-check.

Frame grid. `log_mel(mode="htk")` gives 1 + S // 160 frames for S samples: input frame i
is centred on sample 160 i (t = 10 ms x i; kaldi mode snips edges, t = 12.5 ms + 10 ms x i).
The encoder stacks `stack` (=2) input frames without overlap, so encoder frame k is
centred on t = hop x (stack k + (stack - 1) / 2), i.e. 20 ms x k + 5 ms (htk). The
log-Mel baseline is stacked the same way (see upstream.py), so both systems are scored on
the *same* frames against the *same* reference.

Reference value at a frame centre: Praat's pitch track (autocorrelation method, 10 ms time
step) read exactly as Praat's own `Get value at time` (linear): the nearest Praat frame
decides voicing, its voiced neighbour (if any) is interpolated. Unvoiced = 0 Hz.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import parselmouth

from wavlm_ds.eval import EvalError

SR = 16000


@dataclass(frozen=True)
class TrackerConfig:
    time_step_s: float = 0.01
    floor_hz: float = 60.0  # espeak voices and adult speech sit well inside 60-500 Hz
    ceiling_hz: float = 500.0


def praat_track(audio: np.ndarray, sr: int, cfg: TrackerConfig = TrackerConfig()
                ) -> tuple[np.ndarray, np.ndarray]:
    """(times_s, f0_hz) of Praat's frames; f0 = 0 where Praat says unvoiced."""
    # Praat's AC method needs three periods of the floor; shorter audio has no pitch frames.
    if audio.size < int(3.0 / cfg.floor_hz * sr) + 2:
        return np.zeros(0), np.zeros(0)
    snd = parselmouth.Sound(np.asarray(audio, np.float64), sampling_frequency=sr)
    pitch = snd.to_pitch_ac(time_step=cfg.time_step_s, pitch_floor=cfg.floor_hz,
                            pitch_ceiling=cfg.ceiling_hz)
    return np.asarray(pitch.xs()), np.nan_to_num(pitch.selected_array["frequency"])


def frame_centers(num_frames: int, hop_s: float = 0.01, stack: int = 2,
                  offset_s: float = 0.0) -> np.ndarray:
    """Centre times (s) of `num_frames` frames made of `stack` input frames each.

    offset_s: centre of input frame 0 (0 for htk log-Mel; 12.5 ms for kaldi's snip_edges).
    """
    return offset_s + hop_s * (stack * np.arange(num_frames) + (stack - 1) / 2)


def on_grid(times: np.ndarray, f0: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Praat's track read at `centers` exactly as Praat's `Get value at time` (linear).

    The nearest Praat frame decides voicing; if the other neighbour is voiced too, the
    value is interpolated between them, else the nearest frame's value is used. Outside
    the analysed range (more than half a step beyond the first/last frame): unvoiced (0).
    """
    if times.size == 0:
        return np.zeros(centers.size)
    step = times[1] - times[0] if times.size > 1 else 1.0
    pos = (centers - times[0]) / step
    left = np.floor(pos).astype(int)
    phase = pos - left
    near = np.where(phase < 0.5, left, left + 1)
    far = np.where(phase < 0.5, left + 1, left)
    weight = np.where(phase < 0.5, phase, 1.0 - phase)  # towards the far frame
    f_near = f0[np.clip(near, 0, times.size - 1)]
    f_far = f0[np.clip(far, 0, times.size - 1)]
    voiced = (pos >= -0.5) & (pos <= times.size - 0.5) & (near >= 0) & (near < times.size) \
        & (f_near > 0)
    far_ok = (far >= 0) & (far < times.size) & (f_far > 0)
    value = np.where(far_ok, f_near + weight * (f_far - f_near), f_near)
    return np.where(voiced, value, 0.0)


def reference_f0(audio: np.ndarray, num_frames: int, hop_s: float = 0.01, stack: int = 2,
                 cfg: TrackerConfig = TrackerConfig(), sr: int = SR,
                 offset_s: float = 0.0) -> np.ndarray:
    """(num_frames,) reference F0 in Hz (0 = unvoiced) on the probe's frame grid."""
    times, f0 = praat_track(audio, sr, cfg)
    return on_grid(times, f0, frame_centers(num_frames, hop_s, stack, offset_s))


def cents(pred_hz: np.ndarray, ref_hz: np.ndarray) -> np.ndarray:
    """Signed pitch difference in cents (both arguments > 0)."""
    return 1200.0 * np.log2(pred_hz / ref_hz)


# ---------------------------------------------------------------------------------------
# Self-check on synthetic harmonic signals with known F0 contours.


def harmonic_signal(f0_per_sample: np.ndarray, sr: int = SR, noise_db: float = -40.0,
                    seed: int = 0) -> np.ndarray:
    """Harmonics (amplitude 1/k, below 0.45 sr) of a per-sample F0 contour; 0 Hz = silence."""
    phase = 2 * math.pi * np.cumsum(f0_per_sample) / sr
    wav = np.zeros_like(phase)
    top = int(0.45 * sr / max(float(f0_per_sample[f0_per_sample > 0].min(initial=sr)), 1.0))
    for k in range(1, top + 1):
        wav += np.where(k * f0_per_sample < 0.45 * sr, np.sin(k * phase) / k, 0.0)
    wav *= f0_per_sample > 0
    wav = 0.5 * wav / max(np.abs(wav).max(), 1e-9)
    noise = np.random.default_rng(seed).standard_normal(wav.size) * 0.5 * 10 ** (noise_db / 20)
    return (wav + noise).astype(np.float32)


def synthetic_contours(sr: int = SR) -> dict[str, np.ndarray]:
    """Per-sample F0 contours (Hz, 0 = silence): a glide, vibrato and steps, with pauses."""
    t = np.arange(int(1.2 * sr)) / sr
    pause = np.zeros(int(0.3 * sr))
    glide = 90.0 * (300.0 / 90.0) ** (t / t[-1])  # exponential 90 -> 300 Hz
    vibrato = 180.0 * 2 ** (0.25 * np.sin(2 * math.pi * 5.0 * t))  # +-3 semitones at 5 Hz
    steps = np.repeat([110.0, 220.0, 165.0, 130.0], t.size // 4)
    return {name: np.concatenate([pause, c, pause])
            for name, c in (("glide", glide), ("vibrato", vibrato), ("steps", steps))}


def tracker_self_check(cfg: TrackerConfig = TrackerConfig(), sr: int = SR,
                       edge_s: float = 0.03) -> dict[str, dict[str, float]]:
    """Praat against the true contours, on 10 ms frames.

    RMSE (Hz, cents) over frames voiced in truth and in Praat's track, excluding frames
    within `edge_s` of a voicing boundary or a step (where the truth itself is ambiguous);
    V/UV error over all frames outside those edges.
    """
    report = {}
    for name, contour in synthetic_contours(sr).items():
        times, f0 = praat_track(harmonic_signal(contour, sr), sr, cfg)
        true = np.interp(times, np.arange(contour.size) / sr, contour)
        change = np.flatnonzero(np.abs(np.diff(contour)) > 1.0) / sr  # boundaries, steps
        away = np.all(np.abs(times[:, None] - change[None, :]) > edge_s, axis=1)
        both = away & (true > 0) & (f0 > 0)
        err_hz = f0[both] - true[both]
        report[name] = {
            "rmse_hz": float(np.sqrt(np.mean(err_hz ** 2))),
            "rmse_cents": float(np.sqrt(np.mean(cents(f0[both], true[both]) ** 2))),
            "vuv_error": float(np.mean((true[away] > 0) != (f0[away] > 0))),
            "frames": int(both.sum())}
    return report


TRACKER_BOUND_CENTS = 15.0  # measured worst case ~7.5 cents (5 Hz vibrato), see the test


def checked_tracker(cfg: TrackerConfig, bound_cents: float = TRACKER_BOUND_CENTS) -> dict:
    """Run the synthetic-tone self-check; refuse a tracker setting that fails it."""
    check = tracker_self_check(cfg)
    worst = max(r["rmse_cents"] for r in check.values())
    if worst > bound_cents:
        raise EvalError(f"pitch tracker self-check failed: RMSE {worst:.1f} cents > "
                        f"{bound_cents} on synthetic tones ({check}); check "
                        "--floor-hz/--ceiling-hz")
    return check
