"""CTC fine-tuning pieces: settings, the encoder + linear CTC head, the learning-rate
schedule and the labelled data (characters or phonemes).

As in wav2vec 2.0 / HuBERT fine-tuning: the log-Mel front end may stay frozen, the head
trains alone for the first `head_only_steps` (the encoder runs without gradients), then the
whole encoder trains with span masking at a fine-tuning rate (the project's exact-count
masker on input frames, through the encoder's own mask embedding) and layerdrop.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wavlm_ds.config import ModelConfig
from wavlm_ds.eval import EvalError
from wavlm_ds.eval.asr import FIELD, Tokenizer, Units, normalize
from wavlm_ds.eval.data import Split, label_texts
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.ops.logmel import log_mel
from wavlm_ds.ops.span_mask import span_mask


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 300  # optimizer steps in all (head-only steps included)
    head_only_steps: int = 30  # fairseq's freeze_finetune_updates
    batch_size: int = 8  # utterances per optimizer step, over all ranks
    lr: float = 2e-3  # peak learning rate
    schedule: Literal["tri_stage", "cosine"] = "tri_stage"
    warmup_ratio: float = 0.1  # tri-stage: 10 % warm-up, 40 % hold, 50 % exponential decay
    hold_ratio: float = 0.4
    final_lr_scale: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_ratio: float = 0.3  # of valid input frames (pretraining masks 0.8)
    mask_span_frames: int = 5
    layerdrop: float = 0.05
    dropout: float = 0.1  # encoder dropout and before the head
    freeze_frontend: bool = True
    units: Units = "chars"
    init: Literal["pretrained", "random"] = "pretrained"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.head_only_steps < self.steps:
            raise ValueError(f"head_only_steps={self.head_only_steps} must be in [0, steps="
                             f"{self.steps}): the encoder must train for some steps")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1)")
        if self.warmup_ratio + self.hold_ratio > 1.0:
            raise ValueError("warmup_ratio + hold_ratio must be <= 1 (the rest decays)")


def lr_scale(step: int, s: FinetuneSettings) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    tri_stage (wav2vec 2.0 fine-tuning): linear warm-up from 0.01, hold at 1, exponential
    decay to final_lr_scale. cosine: linear warm-up, cosine decay to final_lr_scale.
    """
    warm = max(1, round(s.warmup_ratio * s.steps))
    if step < warm:
        return 0.01 + 0.99 * step / warm
    if s.schedule == "tri_stage":
        hold = round(s.hold_ratio * s.steps)
        if step < warm + hold:
            return 1.0
        progress = (step - warm - hold) / max(1, s.steps - warm - hold)
        return s.final_lr_scale ** progress
    progress = (step - warm) / max(1, s.steps - warm)
    return s.final_lr_scale + (1 - s.final_lr_scale) * 0.5 * (1 + math.cos(math.pi * progress))


class CTCModel(nn.Module):
    """Waveforms -> log-Mel -> encoder -> dropout -> Linear(D, vocab): CTC logits."""

    def __init__(self, encoder: WavLMEncoder, vocab_size: int, logmel_mode: str,
                 s: FinetuneSettings) -> None:
        super().__init__()
        self.encoder, self.logmel_mode, self.s = encoder, logmel_mode, s
        self.dropout = nn.Dropout(s.dropout)
        with torch.random.fork_rng():
            torch.manual_seed(s.seed + 1)
            self.ctc_head = nn.Linear(encoder.cfg.model_dim, vocab_size)
        if s.freeze_frontend:
            encoder.frontend.requires_grad_(False)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor, train_encoder: bool = True,
                mask_gen: torch.Generator | None = None,
                layerdrop_gen: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S), lengths (B,) -> logits (B, T_enc, V), encoder lengths (B,)."""
        feats, frame_lengths = log_mel(audio, lengths, mode=self.logmel_mode)  # (B, T_in, 80)
        mask = None
        if self.training and self.s.mask_ratio > 0:
            mask = span_mask(frame_lengths, feats.shape[1], self.s.mask_ratio,
                             self.s.mask_span_frames, generator=mask_gen)
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            out = self.encoder(feats, frame_lengths, mask=mask, layerdrop_generator=layerdrop_gen)
        return self.ctc_head(self.dropout(out.hidden)), out.lengths


def finetune_encoder(encoder: WavLMEncoder | None, model_cfg: ModelConfig, s: FinetuneSettings
                     ) -> WavLMEncoder:
    """The encoder at fine-tuning dropout/layerdrop: the pretrained weights, or (encoder
    None) a fresh random initialization of the same architecture, seeded from s.seed."""
    cfg = dataclasses.replace(model_cfg, dropout=s.dropout, layerdrop=s.layerdrop,
                              attention_dropout=0.0, activation_checkpointing=False)
    with torch.random.fork_rng():
        torch.manual_seed(s.seed)
        fresh = WavLMEncoder(cfg)
    if encoder is not None:
        fresh.load_state_dict(encoder.state_dict())
    return fresh


@dataclass
class Labelled:
    """Audio + normalized text + token ids of one split; `skipped` counts what was left out."""
    keys: list[str]
    audio: list[np.ndarray]
    texts: list[str]
    targets: list[torch.Tensor]
    speakers: list[str]
    skipped: dict[str, int | str]


def build_tokenizer(train: Split, units: Units, vocab: Sequence[str] | None) -> Tokenizer:
    """A given vocabulary, or every symbol of the normalized training transcripts."""
    if vocab is not None:
        return Tokenizer(list(vocab))
    tok = Tokenizer.from_texts([normalize(t, units) for t in label_texts(train, FIELD[units])])
    if len(tok) < 2:
        raise EvalError(f"{train.source}: the training transcripts are empty after normalization")
    return tok


def labelled(split: Split, tok: Tokenizer, units: Units, train: bool) -> Labelled:
    """Normalize and encode a split. Training utterances with symbols outside the vocabulary
    are skipped (counted, first one named); test ones are kept: those symbols cannot be
    produced and count as errors."""
    texts = [normalize(t, units) for t in label_texts(split, FIELD[units])]
    out = Labelled([], [], [], [], [], {"oov_utterances": 0})
    for utt, text in zip(split.utterances, texts):
        oov = sorted({c for c in text.replace(" ", "") if c not in tok.ids})
        if oov:
            out.skipped["oov_utterances"] += 1
            out.skipped.setdefault("first_oov", f"{utt.key} in {utt.shard}: {''.join(oov)!r}")
            if train:
                continue
        out.keys.append(utt.key)
        out.audio.append(utt.audio)
        out.texts.append(text)
        out.targets.append(torch.tensor(tok.encode(text), dtype=torch.long))
        out.speakers.append(str(utt.meta.get("speaker", "")))
    if not out.keys:
        raise EvalError(f"{split.name} split {split.source!r}: every utterance has symbols "
                        f"outside the vocabulary ({out.skipped['first_oov']}); give a --vocab "
                        "that covers the corpus, or fine-tune on its own transcripts")
    return out


def pad_batch(audio: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono waveforms -> (B, S) zero-padded float32, lengths (B,)."""
    lengths = torch.tensor([len(a) for a in audio])
    batch = torch.zeros(len(audio), int(lengths.max()))
    for row, a in enumerate(audio):
        batch[row, :len(a)] = torch.from_numpy(np.asarray(a, np.float32))
    return batch, lengths


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, targets: Sequence[torch.Tensor]
             ) -> torch.Tensor:
    """Mean CTC loss over the batch; an utterance too short for its labels gives zero."""
    logp = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    return F.ctc_loss(logp, torch.cat(list(targets)), lengths,
                      torch.tensor([len(t) for t in targets]), blank=0, reduction="mean",
                      zero_infinity=True)
