"""WER / CER of wavlm_ds.eval.metrics on hand-made strings, against jiwer and by hand."""
from __future__ import annotations

import jiwer
import numpy as np
import pytest

from wavlm_ds.eval import EvalError
from wavlm_ds.eval.asr import Tokenizer, greedy_decode
from wavlm_ds.eval.metrics import (bootstrap_ratio, char_errors, normalize_phonemes,
                                   normalize_text, paired_difference, word_errors)

REFS = ["the cat sat on the mat", "hello world", "a b c d", "speech is fun"]
HYPS = ["the cat sat on mat", "hello there world", "a x c d e", "speech is fun"]


def test_wer_matches_jiwer_and_hand_count() -> None:
    w = word_errors(REFS, HYPS)
    # by hand: 1 deletion | 1 insertion | 1 substitution + 1 insertion | 0
    assert w.errors.tolist() == [1, 1, 2, 0]
    assert w.ref_len.tolist() == [6, 2, 4, 3]
    assert w.rate == pytest.approx(4 / 15)
    assert w.rate == pytest.approx(jiwer.wer(REFS, HYPS))


def test_cer_matches_jiwer() -> None:
    c = char_errors(REFS, HYPS)
    assert c.rate == pytest.approx(jiwer.cer(REFS, HYPS))
    assert c.errors[3] == 0 and c.ref_len[1] == len("hello world")
    for r, h, e in zip(REFS, HYPS, c.errors):
        assert e == pytest.approx(jiwer.cer(r, h) * len(r))


def test_empty_hypothesis_and_reference_edge_cases() -> None:
    w = word_errors(["one two three", ""], ["", "extra"])
    assert w.errors.tolist() == [3, 1]  # 3 deletions; 1 insertion against nothing
    assert w.rate == pytest.approx(4 / 3)
    with pytest.raises(EvalError, match="every reference is empty"):
        _ = word_errors([""], ["x"]).rate
    with pytest.raises(EvalError, match="references but"):
        word_errors(["a"], ["a", "b"])


def test_normalize_text() -> None:
    assert normalize_text("Hello, World!  It's  FINE.") == "hello world it's fine"
    assert normalize_text("  ") == ""


def test_normalize_phonemes_drops_stress_keeps_length_marks() -> None:
    assert normalize_phonemes("həlˈoʊ, wˈɜːld.") == "həloʊ wɜːld"
    tok = Tokenizer.from_texts([normalize_phonemes("wˈɜːld")])
    assert tok.decode(tok.encode("wɜːld")) == "wɜːld"


def test_tokenizer_roundtrip_and_greedy_ctc() -> None:
    tok = Tokenizer.from_texts(["ab ba"])
    assert tok.symbols == ["<blank>", "a", "b", "|"]
    ids = tok.encode("ab ba")
    assert tok.decode(ids) == "ab ba"
    # frames: a a blank b | | b blank a a -> "ab ba"; repeats merge, blanks split
    path = [1, 1, 0, 2, 3, 3, 2, 0, 1, 1]
    logits = np.full((len(path), 4), -5.0)
    logits[np.arange(len(path)), path] = 5.0
    import torch
    assert tok.decode(greedy_decode(torch.tensor(logits))) == "ab ba"


def test_bootstrap_interval_contains_point_and_pairing_cancels_shared_noise() -> None:
    rng = np.random.default_rng(0)
    n = 200
    ref_len = rng.integers(5, 30, n).astype(float)
    hard = rng.uniform(0.0, 0.6, n)  # utterance difficulty shared by both systems
    err_a = np.round(ref_len * hard)
    err_b = err_a + (rng.uniform(size=n) < 0.5)  # b: ~0.5 more errors per utterance
    est = bootstrap_ratio(err_a, ref_len, resamples=500, seed=1)
    assert est.lo <= est.value <= est.hi and est.resamples == 500
    diff = paired_difference((err_a, ref_len), (err_b, ref_len), resamples=500, seed=1)
    assert diff.hi < 0  # a is reliably better although its marginal CI overlaps b's
    b = bootstrap_ratio(err_b, ref_len, resamples=500, seed=1)
    assert b.lo < est.hi
    with pytest.raises(EvalError, match="nothing to average"):
        bootstrap_ratio(np.zeros(0), np.zeros(0))
