"""CTC fine-tuning pieces: settings, the encoder + linear CTC head, the optimizer's
learning-rate groups and schedule, and the labelled data (characters or phonemes).

As in wav2vec 2.0 / HuBERT / WavLM fine-tuning (fairseq): the log-Mel front end stays
frozen, the head trains alone for the first `head_only_steps` (the encoder runs without
gradients), then the encoder trains too, at a lower peak lr than the head's (and, with
layer_decay < 1, lower still toward the input), under a tri-stage schedule, with time
masking (the project's exact-count span masker on input frames, through the encoder's own
mask embedding), channel masking of the projected frames and layerdrop. The model with
the best validation CER is the one kept (wavlm_ds.finetune.loop).
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
from wavlm_ds.engine import decays
from wavlm_ds.eval import EvalError
from wavlm_ds.eval.asr import FIELD, Tokenizer, Units, normalize
from wavlm_ds.eval.data import SR, Split, label_texts
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.ops.logmel import log_mel
from wavlm_ds.ops.span_mask import span_mask

NO_DECAY = ("bias", "norm", "embedding", "gate_const")


@dataclass(frozen=True)
class FinetuneSettings:
    """Defaults and where they come from: docs/finetune.md (fairseq's wav2vec 2.0 base_10m /
    base_1h and HuBERT base_10h fine-tuning configs, s3prl's ASR downstream), scaled to a
    0.5M-parameter model trained for hundreds of steps instead of 13k-25k."""
    steps: int = 300  # most optimizer steps (head-only ones included); early stopping may end sooner
    head_only_steps: int = 50  # fairseq's freeze_finetune_updates (10k of 13k for 10 min / 1 h)
    batch_size: int = 8  # utterances per optimizer step, over all ranks
    lr: float = 3e-2  # the head's peak learning rate
    encoder_lr_scale: float = 0.1  # the encoder's peak lr = lr * encoder_lr_scale
    layer_decay: float = 1.0  # block i of L: encoder lr * layer_decay ** (L - i); 1 = off
    schedule: Literal["tri_stage", "cosine"] = "tri_stage"
    warmup_ratio: float = 0.1  # tri-stage: 10 % warm-up, 40 % hold, 50 % exponential decay
    hold_ratio: float = 0.4
    final_lr_scale: float = 0.05
    weight_decay: float = 0.0  # fairseq's and s3prl's Adam: none
    grad_clip: float = 1.0  # s3prl's gradient_clipping
    mask_ratio: float = 0.3  # of valid input frames (fairseq 0.65 of spans ~ 49 % of frames)
    mask_span_frames: int = 10  # input frames of 10 ms (fairseq: 10 encoder frames of 20 ms)
    mask_channel_ratio: float = 0.25  # of the D channels of the projected frames (fairseq 0.25)
    mask_channel_span: int = 8  # channels (fairseq: 64 of 768; 8 of 96 is the same share)
    layerdrop: float = 0.05  # fairseq 0.1 of 12 layers; 4 layers here
    dropout: float = 0.1  # encoder dropout and before the head
    freeze_frontend: bool = True  # fairseq's feature_grad_mult 0.0
    valid_every_steps: int = 25  # validation CER from the end of the head-only phase on
    patience: int = 4  # stop after this many validations without a better CER; 0: never stop
    min_steps_ratio: float = 0.5  # never stop before this share of `steps` (tri-stage's hold
    # ends at 0.5: a random init still on CTC's all-blank plateau is not stopped at peak lr)
    units: Units = "chars"
    init: Literal["pretrained", "random"] = "pretrained"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.head_only_steps < self.steps:
            raise ValueError(f"head_only_steps={self.head_only_steps} must be in [0, steps="
                             f"{self.steps}): the encoder must train for some steps")
        for name in ("mask_ratio", "mask_channel_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.warmup_ratio + self.hold_ratio > 1.0:
            raise ValueError("warmup_ratio + hold_ratio must be <= 1 (the rest decays)")
        if not (0 < self.encoder_lr_scale and 0 < self.layer_decay <= 1):
            raise ValueError(f"encoder_lr_scale={self.encoder_lr_scale} must be > 0 and "
                             f"layer_decay={self.layer_decay} in (0, 1]")
        if not 0.0 <= self.min_steps_ratio <= 1.0:
            raise ValueError(f"min_steps_ratio={self.min_steps_ratio} must be in [0, 1]")
        if self.valid_every_steps < 1 or self.patience < 0:
            raise ValueError(f"valid_every_steps={self.valid_every_steps} must be >= 1 and "
                             f"patience={self.patience} >= 0 (0 trains every step)")


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
        """audio (B, S), lengths (B,) -> logits (B, T_enc, V), encoder lengths (B,).
        In training, mask_gen draws the time mask (B, T_in) and then the channel mask (B, D)."""
        feats, frame_lengths = log_mel(audio, lengths, mode=self.logmel_mode)  # (B, T_in, 80)
        mask = channels = None
        if self.training and self.s.mask_ratio > 0:
            mask = span_mask(frame_lengths, feats.shape[1], self.s.mask_ratio,
                             self.s.mask_span_frames, generator=mask_gen)
        if self.training and self.s.mask_channel_ratio > 0:
            dim = self.encoder.cfg.model_dim
            channels = span_mask(torch.full_like(frame_lengths, dim), dim,
                                 self.s.mask_channel_ratio, self.s.mask_channel_span,
                                 generator=mask_gen)  # (B, D)
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            out = self.encoder(feats, frame_lengths, mask=mask, layerdrop_generator=layerdrop_gen,
                               channel_mask=channels)
        return self.ctc_head(self.dropout(out.hidden)), out.lengths


def encoder_lr_scale(name: str, num_layers: int, s: FinetuneSettings) -> float:
    """The multiplier of the head's lr for encoder parameter `name` (relative to the
    encoder): block i (1-based) gets encoder_lr_scale * layer_decay ** (L - i), the final
    LayerNorm the top block's, everything below the blocks (front end, positional conv,
    the shared relative-position table) layer_decay ** L."""
    if name.startswith("blocks."):
        depth = int(name.split(".")[1]) + 1
    elif name.startswith("final_norm."):
        depth = num_layers
    else:
        depth = 0
    return s.encoder_lr_scale * s.layer_decay ** (num_layers - depth)


def optimizer_groups(model: CTCModel, s: FinetuneSettings) -> list[dict]:
    """AdamW groups by (lr multiplier, weight decay): the head at 1, each encoder parameter
    at encoder_lr_scale(...); `lr_scale` is read by the loop every step."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    layers = model.encoder.cfg.num_layers
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = (encoder_lr_scale(name.removeprefix("encoder."), layers, s)
                 if name.startswith("encoder.") else 1.0)
        wd = s.weight_decay if decays(name, param, NO_DECAY) else 0.0
        groups.setdefault((scale, wd), []).append(param)
    return [{"params": p, "lr_scale": scale, "weight_decay": wd}
            for (scale, wd), p in sorted(groups.items(), reverse=True)]


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

    def subset(self, indices: Sequence[int]) -> "Labelled":
        """The utterances at `indices`, in that order."""
        pick = [[getattr(self, f)[i] for i in indices]
                for f in ("keys", "audio", "texts", "targets", "speakers")]
        return Labelled(*pick, dict(self.skipped))

    @property
    def minutes(self) -> float:
        return sum(len(a) for a in self.audio) / SR / 60


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
