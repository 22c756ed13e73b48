"""What both probes share: the softmax-weighted layer sum, the downstream heads, the loop.

SUPERB protocol: the upstream is frozen; a learned softmax over its layers mixes them into
one sequence, and a small downstream (linear, or a 2-layer BiLSTM) maps it to the task.
Each layer is first standardized with per-dimension statistics of the *training* split, so
the softmax weights compare what layers encode rather than their scales (a linear probe
is invariant to that affine map; it only conditions the optimization).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm import tqdm


@dataclass(frozen=True)
class ProbeSettings:
    downstream: Literal["linear", "bilstm"] = "bilstm"
    hidden: int = 128  # BiLSTM units per direction
    epochs: int = 20
    batch_size: int = 8  # utterances; small batches = more steps on a small corpus
    lr: float = 3e-3
    grad_clip: float = 5.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def layer_stats(layers: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer, per-dimension mean and std over all training frames: (L, D) each."""
    total = sum(int(x.shape[1]) for x in layers)
    s = sum(x.double().sum(1) for x in layers)  # (L, D)
    s2 = sum((x.double() ** 2).sum(1) for x in layers)
    mean = s / total
    var = (s2 / total - mean ** 2).clamp_min(0.0)
    return mean.float(), var.sqrt().clamp_min(1e-5).float()  # constant dims stay finite


class WeightedLayerSum(nn.Module):
    """(B, L, T, D) -> (B, T, D): standardize each layer, mix with softmax(logits)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean[None, :, None, :])  # (1, L, 1, D)
        self.register_buffer("std", std[None, :, None, :])
        self.logits = nn.Parameter(torch.zeros(mean.shape[0]))  # uniform start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.logits, dim=0)
        return torch.einsum("l,bltd->btd", w, (x - self.mean) / self.std)

    def weights(self) -> list[float]:
        return torch.softmax(self.logits.detach(), 0).tolist()


class Downstream(nn.Module):
    """Linear, or 2-layer BiLSTM + linear, applied frame-wise to (B, T, D)."""

    def __init__(self, kind: str, dim: int, out: int, hidden: int) -> None:
        super().__init__()
        self.lstm = (nn.LSTM(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
                     if kind == "bilstm" else None)
        self.proj = nn.Linear(2 * hidden if self.lstm is not None else dim, out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.lstm is not None:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                       total_length=x.shape[1])  # (B, T, 2H)
        return self.proj(x)  # (B, T, out)


class Probe(nn.Module):
    def __init__(self, layers: Sequence[torch.Tensor], out: int, s: ProbeSettings) -> None:
        super().__init__()
        self.mix = WeightedLayerSum(*layer_stats(layers))
        self.head = Downstream(s.downstream, int(layers[0].shape[-1]), out, s.hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(x), lengths)


def build_probe(layers: Sequence[torch.Tensor], out: int, s: ProbeSettings) -> Probe:
    """A probe initialized from `s.seed` without touching the global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        return Probe(layers, out, s)


def collate(layers: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (L, T_i, D) -> (B, L, T_max, D) zero-padded, lengths (B,)."""
    lengths = torch.tensor([int(x.shape[1]) for x in layers])
    L, D = layers[0].shape[0], layers[0].shape[2]
    batch = layers[0].new_zeros(len(layers), L, int(lengths.max()), D)
    for i, x in enumerate(layers):
        batch[i, :, :x.shape[1]] = x
    return batch, lengths


def epoch_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length utterances (less padding, still random order)."""
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    pool = batch_size * 8
    batches = []
    for start in range(0, len(perm), pool):
        chunk = sorted(perm[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


LossFn = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


def train_probe(probe: Probe, layers: Sequence[torch.Tensor], loss_fn: LossFn,
                s: ProbeSettings, desc: str) -> list[float]:
    """Adam over the mixer and head; loss_fn(out (B,T,C), lengths (B,), idx) -> scalar.

    Returns the mean training loss of each epoch (the curve goes into the JSON result).
    """
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.Adam(probe.parameters(), lr=s.lr)
    lengths = [int(x.shape[1]) for x in layers]
    curve = []
    probe.train()
    bar = tqdm(range(s.epochs), desc=desc, unit="epoch", leave=False)
    for _ in bar:
        total, n = 0.0, 0
        for idx in epoch_batches(lengths, s.batch_size, gen):
            x, lens = collate([layers[i] for i in idx])
            loss = loss_fn(probe(x, lens), lens, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(probe.parameters(), s.grad_clip)
            opt.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        curve.append(total / n)
        bar.set_postfix(loss=f"{curve[-1]:.3f}")
    probe.eval()
    return curve


@torch.inference_mode()
def predict(probe: Probe, layers: Sequence[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Per-utterance outputs (T_i, C), in the input order."""
    probe.eval()
    order = sorted(range(len(layers)), key=lambda i: int(layers[i].shape[1]))
    out: list[torch.Tensor | None] = [None] * len(layers)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x, lens = collate([layers[i] for i in idx])
        y = probe(x, lens)
        for row, i in enumerate(idx):
            out[i] = y[row, :int(lens[row])]
    return out
