"""The F0 reference (Praat via parselmouth) on synthetic harmonic tones with known contours.

Stated bound, checked here before the tracker is trusted on speech: on 10 ms frames away
from voicing boundaries, RMSE <= 2 Hz and <= 15 cents per contour (measured: glide 0.02 Hz /
0.3 cents, steps 0.002 Hz / 0.03 cents, 5 Hz vibrato 0.6 Hz / 6.3 cents, the window
smoothing the fast modulation) and V/UV error <= 2 %.
"""
from __future__ import annotations

import numpy as np
import pytest

from wavlm_ds.eval import EvalError
from wavlm_ds.eval.f0 import F0Counts
from wavlm_ds.eval.pitch import (SR, cents, frame_centers, harmonic_signal, on_grid,
                                 reference_f0, synthetic_contours, tracker_self_check)


def test_tracker_self_check_within_bound() -> None:
    report = tracker_self_check()
    for name, r in report.items():
        assert r["frames"] > 80, name
        assert r["rmse_hz"] <= 2.0, (name, r)
        assert r["rmse_cents"] <= 15.0, (name, r)
        assert r["vuv_error"] <= 0.02, (name, r)


@pytest.mark.parametrize("noise_db", [-40.0, -20.0])
def test_reference_on_20ms_grid_is_aligned(noise_db: float) -> None:
    """A 90->300 Hz glide rises 1200 cents/s: a 5 ms grid offset would cost ~6 cents."""
    contour = synthetic_contours()["glide"]
    wav = harmonic_signal(contour, noise_db=noise_db)
    frames = -(-(1 + wav.size // 160) // 2)
    ref = reference_f0(wav, frames, stack=2)
    truth = np.interp(frame_centers(frames, stack=2), np.arange(contour.size) / SR, contour)
    both = (ref > 0) & (truth > 0)
    assert both.sum() >= 55
    assert np.sqrt(np.mean(cents(ref[both], truth[both]) ** 2)) < 3.0
    assert np.mean((ref > 0) != (truth > 0)) <= 0.03


def test_frame_centers() -> None:
    assert np.allclose(frame_centers(3, 0.01, 2), [0.005, 0.025, 0.045])
    assert np.allclose(frame_centers(3, 0.01, 1), [0.0, 0.01, 0.02])


def test_on_grid_reads_like_praat_get_value_at_time() -> None:
    """Praat (Sampled_getValueAtX, linear): the nearest frame decides voicing; a voiced far
    neighbour is interpolated, an unvoiced one is ignored; beyond half a step: undefined."""
    times = np.array([0.0, 0.01, 0.02, 0.03])
    f0 = np.array([100.0, 200.0, 0.0, 300.0])
    got = on_grid(times, f0, np.array([0.005, 0.0125, 0.015, 0.025, 0.03, 0.034, 0.036, -0.006]))
    assert got == pytest.approx([150.0, 200.0, 0.0, 300.0, 300.0, 300.0, 0.0, 0.0])


def test_on_grid_equals_parselmouth_get_value_at_time() -> None:
    import parselmouth
    contour = synthetic_contours()["vibrato"]
    contour[SR // 2:SR // 2 + 1600] = 0.0  # a 100 ms gap: voicing edges inside the track
    wav = harmonic_signal(contour).astype(np.float64)
    pitch = parselmouth.Sound(wav, SR).to_pitch_ac(time_step=0.01, pitch_floor=60.0,
                                                    pitch_ceiling=500.0)
    centers = frame_centers(-(-(1 + wav.size // 160) // 2))
    ours = on_grid(np.asarray(pitch.xs()), np.nan_to_num(pitch.selected_array["frequency"]),
                   centers)
    praat = np.nan_to_num(np.array([pitch.get_value_at_time(t) for t in centers]))
    assert (praat > 0).sum() > 50 and (praat == 0).sum() > 10
    np.testing.assert_allclose(ours, praat, atol=1e-9)


def test_unvoiced_only_audio_gives_clear_error_not_nan() -> None:
    noise = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    silence = np.zeros(SR // 2, np.float32)
    refs = [reference_f0(a, 25, stack=2) for a in (noise, silence)]
    assert all((r == 0).all() for r in refs)
    counts = F0Counts.of([np.full(25, 100.0)] * 2, [np.zeros(25, bool)] * 2, refs)
    with pytest.raises(EvalError, match="no voiced frame"):
        counts.metrics(100, 0, "test split")
    assert reference_f0(np.zeros(100, np.float32), 1).tolist() == [0.0]  # too short for Praat
