"""Frozen upstream features: every layer of an exported encoder, or normalized log-Mel.

Both upstreams produce frames on the same grid: the encoder stacks `frame_stack` (=2)
10 ms log-Mel frames into one 20 ms frame; the log-Mel baseline stacks the same frames the
same way (2 x 80 -> 160 dims, zero-padded at the end like the encoder's ceil(T_in / 2)), so
ASR and F0 probes see the same frame rate and the F0 reference is identical for both.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from wavlm_ds.eval import EvalError
from wavlm_ds.model.frontend import encoder_lengths, stack_frames

LOGMEL = "logmel"
HOP_S = 0.01  # log-Mel hop: 160 samples at 16 kHz
WIN_S = 0.025  # log-Mel window: 400 samples


@dataclass
class Features:
    """Per-utterance frozen features, kept on the CPU.

    layers[i]: (L, T_i, D) float32 for utterance i (L = 1 for log-Mel).
    """

    name: str
    keys: list[str]
    layers: list[torch.Tensor]
    stack: int  # input frames per feature frame
    logmel_mode: str = "htk"
    hop_s: float = HOP_S
    info: dict = field(default_factory=dict)

    @property
    def frame_s(self) -> float:
        return self.hop_s * self.stack

    @property
    def num_layers(self) -> int:
        return int(self.layers[0].shape[0])

    @property
    def dim(self) -> int:
        return int(self.layers[0].shape[-1])


class Upstream:
    """Callable (audio (B, S) f32, lengths (B,)) -> (layers (L, B, T, D), frame_lengths (B,))."""

    def __init__(self, name: str, stack: int, logmel_mode: str,
                 encoder: torch.nn.Module | None = None, info: dict | None = None) -> None:
        self.name, self.stack, self.logmel_mode, self.encoder = name, stack, logmel_mode, encoder
        self.info = info or {}

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers(audio, lengths)

    def layers(self, audio: torch.Tensor, lengths: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """__call__ without inference mode, for callers that need autograd (s3prl's
        Featurizer trains layer weights on these; fine-tuning trains the encoder)."""
        from wavlm_ds.ops.logmel import log_mel
        feats, frame_lengths = log_mel(audio, lengths, mode=self.logmel_mode)  # (B, T_in, 80)
        if self.encoder is None:  # the encoder front end's own stacking, without its weights
            return (stack_frames(feats, self.stack)[None],
                    encoder_lengths(frame_lengths, self.stack))
        out = self.encoder(feats, frame_lengths, mask=None, output_hidden_states=True)
        layers = list(out.layer_outputs or [])
        # The encoder's final output may carry a last LayerNorm that no block output has.
        if not layers or not torch.equal(layers[-1], out.hidden):
            layers.append(out.hidden)
        return torch.stack([h.float() for h in layers]), out.lengths


def first_center_s(logmel_mode: str) -> float:
    """Centre of input frame 0: htk pads half a window (t = 0); kaldi snips edges (12.5 ms)."""
    return 0.0 if logmel_mode == "htk" else WIN_S / 2


def num_frames(samples: int, stack: int, logmel_mode: str = "htk") -> int:
    """Probe frames of an utterance: log-Mel frames of its mode, stacked by `stack`."""
    from wavlm_ds.ops.logmel import num_frames as mel_frames
    return math.ceil(int(mel_frames(torch.tensor(samples), logmel_mode)) / stack)


def logmel_upstream(stack: int = 2, logmel_mode: str = "htk") -> Upstream:
    return Upstream(LOGMEL, stack, logmel_mode,
                    info={"upstream": LOGMEL, "stack": stack, "logmel_mode": logmel_mode})


def encoder_upstream(export_dir: Path, name: str | None = None) -> Upstream:
    """An exported encoder (model.safetensors + config.json), frozen, fp32, eval mode."""
    from wavlm_ds.config import ConfigError
    from wavlm_ds.pretrained import load_pretrained
    try:
        encoder, cfg = load_pretrained(export_dir)
    except (ConfigError, FileNotFoundError) as err:
        raise EvalError(f"upstream {export_dir}: {err}") from None
    except RuntimeError as err:  # load_state_dict: size mismatch between config and weights
        raise EvalError(f"upstream {export_dir}: model.safetensors does not match the model "
                        f"section of its config.json: {str(err).strip().splitlines()[-1].strip()}"
                        ) from None
    encoder.requires_grad_(False)
    m = cfg.model
    info = {"upstream": str(export_dir), "preset": m.preset, "num_layers": m.num_layers,
            "model_dim": m.model_dim, "frame_stack": m.frame_stack,
            "logmel_mode": cfg.data.logmel_mode, "objective": cfg.objective.name,
            "max_steps": cfg.training.max_steps, "pretrain_hours": _pretrain_hours(cfg),
            "parameters": sum(p.numel() for p in encoder.parameters())}
    return Upstream(name or Path(export_dir).name, m.frame_stack, cfg.data.logmel_mode,
                    encoder, info)


def _pretrain_hours(cfg) -> float | None:
    """Hours of the pretraining sources when each is an index.json still on disk, else None."""
    from wavlm_ds.data.index import sources_hours
    total, missing = sources_hours(cfg.data.sources)
    return total if cfg.data.sources and not missing else None


def load_upstream(spec: str, exporter: Callable[[Path, Path], Path] | None = None,
                  stack: int = 2, logmel_mode: str = "htk") -> Upstream:
    """`logmel`, an export dir, or (with `exporter(src, out_dir)`) a run/checkpoint dir.

    A live DeepSpeed checkpoint is exported to a temporary directory first; the caller
    passes tools/export.py's functions as `exporter`, since this package never imports tools.
    """
    if spec == LOGMEL:
        return logmel_upstream(stack, logmel_mode)
    path = Path(spec)
    if not path.exists():
        raise EvalError(f"upstream {spec}: no such directory (give an export dir, a run dir, "
                        "a checkpoint dir, or `logmel` for the baseline)")
    if (path / "model.safetensors").is_file() or exporter is None:
        return encoder_upstream(path)
    with tempfile.TemporaryDirectory(prefix="wavlm_eval_export_") as tmp:
        exported = exporter(path, Path(tmp))
        upstream = encoder_upstream(exported, name=path.name)
    upstream.info["upstream"] = str(path)
    return upstream


def _batches(lengths: Sequence[int], max_samples: int) -> list[list[int]]:
    """Indices sorted by length, grouped so that batch x longest <= max_samples."""
    order = np.argsort(lengths, kind="stable")
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > max_samples:
            batches.append(cur)
            cur = []
        cur.append(int(i))
    return batches + ([cur] if cur else [])


def extract(upstream: Upstream, keys: Sequence[str], audios: Sequence[np.ndarray],
            batch_seconds: float = 60.0, desc: str = "features",
            layer: int | None = None) -> Features:
    """Run the frozen upstream over mono 16 kHz utterances; return per-utterance layers
    (only layer `layer` when given, e.g. for k-means targets, to keep memory at one layer)."""
    if not audios:
        raise EvalError(f"{desc}: no utterances to extract features from")
    keep = slice(None) if layer is None else slice(layer, layer + 1)
    lengths = [int(a.shape[0]) for a in audios]
    out: list[torch.Tensor | None] = [None] * len(audios)
    batches = _batches(lengths, int(batch_seconds * 16000))
    for batch in tqdm(batches, desc=f"{desc} [{upstream.name}]", unit="batch", leave=False):
        S = max(lengths[i] for i in batch)
        wav = torch.zeros(len(batch), S)
        for row, i in enumerate(batch):
            wav[row, :lengths[i]] = torch.from_numpy(np.asarray(audios[i], np.float32))
        layers, frame_lengths = upstream(wav, torch.tensor([lengths[i] for i in batch]))
        if layer is not None and not 0 <= layer < layers.shape[0]:
            raise EvalError(f"{upstream.name}: layer {layer} does not exist; it has "
                            f"{layers.shape[0]} layer outputs (0 = block input, "
                            f"{layers.shape[0] - 1} = last)")
        for row, i in enumerate(batch):
            out[i] = layers[keep, row, :int(frame_lengths[row])].clone()  # (L, T_i, D)
    expected = [num_frames(n, upstream.stack, upstream.logmel_mode) for n in lengths]
    got = [int(t.shape[1]) for t in out]
    if got != expected:
        bad = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        raise EvalError(f"{upstream.name}: utterance {keys[bad]} gave {got[bad]} frames, expected "
                        f"{expected[bad]} ({upstream.logmel_mode} log-Mel frames / "
                        f"{upstream.stack}); the F0 reference grid assumes that framing")
    return Features(upstream.name, list(keys), out, upstream.stack, upstream.logmel_mode, HOP_S,
                    dict(upstream.info))
