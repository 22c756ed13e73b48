"""Text normalization, per-utterance error counts (jiwer) and bootstrap confidence intervals.

Corpus-level rates are ratios of sums over utterances (errors / reference tokens), exactly
what `jiwer.wer(list, list)` computes. Keeping the per-utterance numerator and denominator
lets the bootstrap resample *utterances* (the unit that is independent), not frames or words.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import jiwer
import numpy as np

from wavlm_ds.eval import EvalError

STRESS_MARKS = "ˈˌ"  # IPA stress: espeak places them inconsistently, not a phone of its own


def normalize_text(text: str) -> str:
    """Lower-case; keep letters, digits and apostrophes; everything else separates words."""
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(ch if (ch.isalnum() or ch == "'") else " " for ch in text)
    return " ".join(kept.split())


def normalize_phonemes(text: str) -> str:
    """IPA string: drop stress marks and punctuation-like separators, collapse spaces."""
    text = unicodedata.normalize("NFC", text)
    kept = "".join(" " if ch in ",.;:!?()[]{}\"_-" else ch for ch in text if ch not in STRESS_MARKS)
    return " ".join(kept.split())


@dataclass(frozen=True)
class ErrorCounts:
    """Per-utterance edit operations and reference lengths (words or characters)."""

    errors: np.ndarray  # (N,) substitutions + deletions + insertions
    ref_len: np.ndarray  # (N,) reference tokens

    @property
    def rate(self) -> float:
        total = int(self.ref_len.sum())
        if total == 0:
            raise EvalError("every reference is empty: an error rate is undefined "
                            "(check the transcripts of the test split)")
        return float(self.errors.sum() / total)


def _count(refs: Sequence[str], hyps: Sequence[str], unit: str) -> ErrorCounts:
    if len(refs) != len(hyps):
        raise EvalError(f"{len(refs)} references but {len(hyps)} hypotheses")
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    tokens = (lambda s: s.split()) if unit == "word" else (lambda s: list(s))
    errors, ref_len = [], []
    for ref, hyp in zip(refs, hyps):
        r, h = tokens(ref), tokens(hyp)
        if not r or not h:  # jiwer refuses empty strings; the edit distance is the other length
            errors.append(len(r) + len(h))
        else:
            out = process(ref, hyp)
            errors.append(out.substitutions + out.deletions + out.insertions)
        ref_len.append(len(r))
    return ErrorCounts(np.asarray(errors, np.float64), np.asarray(ref_len, np.float64))


def word_errors(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Word edit counts; WER = errors.sum() / ref_len.sum() (same as jiwer.wer on lists)."""
    return _count(refs, hyps, "word")


def char_errors(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Character edit counts, spaces included (same as jiwer.cer on lists)."""
    return _count(refs, hyps, "char")


# ---------------------------------------------------------------------------------------
# Bootstrap over utterances (percentile intervals).


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    resamples: int  # resamples whose denominator was > 0 (those with none are skipped)

    def as_dict(self) -> dict:
        return {"value": self.value, "ci_lo": self.lo, "ci_hi": self.hi,
                "resamples": self.resamples}


def _index_chunks(n: int, resamples: int, seed: int, chunk: int = 128) -> Iterator[np.ndarray]:
    """(k, n) utterance indices drawn with replacement, in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, resamples - start), n))


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2
    lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, *, transform: Callable = lambda x: x,
                    resamples: int = 1000, level: float = 0.95, seed: int = 0,
                    what: str = "metric") -> Estimate:
    """CI of transform(sum(num) / sum(den)) over utterances resampled with replacement.

    `transform` must be monotone (e.g. sqrt for an RMSE from squared errors), so the
    interval of the transformed ratio is the transformed interval.
    """
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if num.size == 0 or den.sum() <= 0:
        raise EvalError(f"{what}: nothing to average over ({num.size} utterances, "
                        f"denominator {den.sum():g}); the test split is empty or has no "
                        "scorable frames/tokens")
    stats = []
    for idx in _index_chunks(num.size, resamples, seed):
        n, d = num[idx].sum(1), den[idx].sum(1)
        stats.append(n[d > 0] / d[d > 0])
    boot = transform(np.concatenate(stats))
    lo, hi = _percentiles(boot, level)
    return Estimate(float(transform(num.sum() / den.sum())), lo, hi, int(boot.size))


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], *,
                      transform: Callable = lambda x: x, resamples: int = 1000,
                      level: float = 0.95, seed: int = 0) -> Estimate:
    """CI of metric(a) - metric(b) with the *same* utterance resamples for both systems.

    a, b: (num, den) per utterance of two systems on the same test utterances in the same
    order. Pairing removes the between-utterance variance both share, so this interval is
    what says whether a difference is real, not whether the two marginal CIs overlap.
    """
    return paired_mean_difference([a], [b], transform=transform, resamples=resamples,
                                  level=level, seed=seed)


def paired_mean_difference(a: Sequence[tuple[np.ndarray, np.ndarray]],
                           b: Sequence[tuple[np.ndarray, np.ndarray]], *,
                           transform: Callable = lambda x: x, resamples: int = 1000,
                           level: float = 0.95, seed: int = 0) -> Estimate:
    """CI of mean_k [metric(a_k) - metric(b_k)] over K pairs of systems (e.g. K seeds of a
    fine-tuning run and of its baseline), every pair scored on the same test utterances in
    the same order: one utterance resample is applied to all 2K systems at once. The
    interval covers test-utterance sampling; the spread between the K pairs shows in them."""
    if len(a) != len(b) or not a:
        raise EvalError(f"paired bootstrap needs as many baseline runs as runs: {len(a)} vs {len(b)}")
    systems = [[(np.asarray(n, np.float64), np.asarray(d, np.float64)) for n, d in side]
               for side in (a, b)]
    sizes = {n.shape for side in systems for n, _ in side}
    if len(sizes) != 1:
        raise EvalError(f"paired bootstrap needs the same utterances in every run: sizes {sizes}")
    if any(d.sum() <= 0 for side in systems for _, d in side):
        raise EvalError("paired bootstrap: a system has no scorable frames/tokens")
    n_utts = next(iter(sizes))[0]
    stats = []
    for idx in _index_chunks(n_utts, resamples, seed):
        dens = [[d[idx].sum(1) for _, d in side] for side in systems]
        ok = np.all([den > 0 for side in dens for den in side], axis=0)
        rates = [[transform(n[idx].sum(1)[ok] / den[ok]) for (n, _), den in zip(side, sd)]
                 for side, sd in zip(systems, dens)]
        stats.append(np.mean([ra - rb for ra, rb in zip(*rates)], axis=0))
    boot = np.concatenate(stats)
    lo, hi = _percentiles(boot, level)
    value = np.mean([transform(na.sum() / da.sum()) - transform(nb.sum() / db.sum())
                     for (na, da), (nb, db) in zip(*systems)])
    return Estimate(float(value), lo, hi, int(boot.size))
