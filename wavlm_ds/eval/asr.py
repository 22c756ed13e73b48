"""CTC probe for ASR (SUPERB "ASR" task, small): characters or phonemes, greedy decoding.

Units. `chars`: the normalized transcript (lower case, letters/digits/apostrophes), one
token per character, word boundaries as "|". `phonemes`: the sample's "phonemes" field
(IPA from espeak-ng) with stress marks removed, one token per Unicode code point, word
boundaries as "|"; its "WER" is then a phoneme-word error rate and its "CER" the phone
(symbol) error rate. The vocabulary is built from the training split only; symbols that
appear only in the test split cannot be produced and count as errors, as they should.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from wavlm_ds.eval import EvalError
from wavlm_ds.eval.metrics import (ErrorCounts, bootstrap_ratio, char_errors, normalize_phonemes,
                                   normalize_text, word_errors)
from wavlm_ds.eval.probe import ProbeSettings, build_probe, predict, train_probe
from wavlm_ds.eval.upstream import Features

Units = Literal["chars", "phonemes"]
BLANK = "<blank>"
SPACE = "|"
FIELD = {"chars": "transcript", "phonemes": "phonemes"}


def normalize(text: str, units: Units) -> str:
    return normalize_text(text) if units == "chars" else normalize_phonemes(text)


class Tokenizer:
    """Symbol <-> id; id 0 is the CTC blank."""

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = [BLANK, *symbols]
        self.ids = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "Tokenizer":
        return cls(sorted({SPACE if ch == " " else ch for t in texts for ch in t}))

    def encode(self, text: str) -> list[int]:
        return [self.ids[s] for s in (SPACE if ch == " " else ch for ch in text) if s in self.ids]

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.symbols[i] for i in ids if i != 0).replace(SPACE, " ")
        return " ".join(text.split())

    def __len__(self) -> int:
        return len(self.symbols)


def greedy_decode(logits: torch.Tensor) -> list[int]:
    """(T, V) -> ids: best path, repeats merged, blanks dropped."""
    best = torch.unique_consecutive(logits.argmax(-1))
    return [int(i) for i in best if int(i) != 0]


@dataclass
class AsrResult:
    refs: list[str]
    hyps: list[str]
    words: ErrorCounts
    chars: ErrorCounts
    layer_weights: list[float]
    train_curve: list[float]
    vocab: list[str]
    too_short_for_ctc: int  # training utterances with fewer frames than CTC needs

    def summary(self) -> dict:
        return {"wer": self.words.rate, "cer": self.chars.rate, "vocab": self.vocab,
                "layer_weights": self.layer_weights, "train_loss_curve": self.train_curve,
                "train_too_short_for_ctc": self.too_short_for_ctc,
                "examples": [{"ref": r, "hyp": h} for r, h in list(zip(self.refs, self.hyps))[:5]]}


def _ctc_frames_needed(ids: list[int]) -> int:
    """CTC needs a frame per label plus a blank between equal neighbours."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def run_asr(train: Features, train_texts: Sequence[str], test: Features,
            test_texts: Sequence[str], settings: ProbeSettings,
            units: Units = "chars") -> AsrResult:
    """Train the CTC probe on `train`, decode `test` greedily, count word/char errors."""
    train_norm = [normalize(t, units) for t in train_texts]
    refs = [normalize(t, units) for t in test_texts]
    tok = Tokenizer.from_texts(train_norm)
    if len(tok) < 2:
        raise EvalError("the training transcripts are empty after normalization: no vocabulary")
    targets = [torch.tensor(tok.encode(t), dtype=torch.long) for t in train_norm]
    too_short = sum(_ctc_frames_needed(t.tolist()) > x.shape[1]
                    for t, x in zip(targets, train.layers))

    def ctc_loss(out: torch.Tensor, lengths: torch.Tensor, idx: list[int]) -> torch.Tensor:
        logp = F.log_softmax(out, dim=-1).transpose(0, 1)  # (T, B, V)
        tgt = [targets[i] for i in idx]
        # zero_infinity: an utterance too short for its label sequence gives no gradient
        # instead of an infinite loss (counted in `too_short_for_ctc`).
        return F.ctc_loss(logp, torch.cat(tgt), lengths, torch.tensor([len(t) for t in tgt]),
                          blank=0, reduction="mean", zero_infinity=True)

    probe = build_probe(train.layers, len(tok), settings)
    curve = train_probe(probe, train.layers, ctc_loss, settings, desc=f"asr probe [{train.name}]")
    outs = predict(probe, test.layers, settings.batch_size)
    hyps = [tok.decode(greedy_decode(o)) for o in outs]
    return AsrResult(refs, hyps, word_errors(refs, hyps), char_errors(refs, hyps),
                     probe.mix.weights(), curve, tok.symbols[1:], int(too_short))


def asr_metrics(res: AsrResult, resamples: int, seed: int) -> dict:
    """WER and CER of a probe run with their bootstrap intervals over test utterances."""
    return {name: bootstrap_ratio(c.errors, c.ref_len, resamples=resamples, seed=seed,
                                  what=name.upper()).as_dict()
            for name, c in (("wer", res.words), ("cer", res.chars))}
