"""Downstream evaluation of frozen encoders (SUPERB-style probes) and the log-Mel baseline.

data.py      labelled shards (tar members `<key>.flac` + `<key>.json`) -> Utterance list
upstream.py  frozen features: every layer of an exported encoder, or normalized log-Mel
probe.py     softmax-weighted layer sum, linear / BiLSTM downstream heads, training loop
asr.py       CTC probe on characters or phonemes, greedy decoding, WER / CER
pitch.py     Praat (parselmouth) F0 reference, aligned to the probe's frame grid
f0.py        frame-level F0 + voicing probe, F0-RMSE (Hz, cents), V/UV error
metrics.py   text normalization, per-utterance error counts, bootstrap confidence intervals

The tools `tools/eval_asr.py`, `tools/eval_f0.py` and `tools/eval_report.py` are thin CLIs
over these modules; this package never imports `tools/`.
"""
from __future__ import annotations


class EvalError(ValueError):
    """Bad evaluation input (data, checkpoint, split); the message names the problem."""
