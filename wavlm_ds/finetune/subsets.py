"""Labelled budgets: speaker-balanced training subsets, nested across budgets and disjoint
across seeds where the pool allows (as Libri-light's limited-supervision sets: its six
10-minute sets are disjoint and each lies inside the 1-hour set).

For `folds` seeds, each speaker's utterances (shuffled) are dealt in turn to the folds, so
folds differ in size by at most one and hold every speaker about equally. Seed f's order
is fold f, interleaved one utterance per speaker in turn (speakers in a shuffled order),
then the other folds interleaved the same way; a budget of n utterances is the first n of
that order. So a budget no larger than the smallest fold gives disjoint subsets for the
different seeds, each with every speaker's count within one of the others' (while the
fold has utterances of every speaker), and each budget contains the smaller ones.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from wavlm_ds.engine import make_generator

SUBSETS = 5  # generator stream


def _shuffled(items: Sequence, gen: torch.Generator) -> list:
    return [items[i] for i in torch.randperm(len(items), generator=gen).tolist()]


def interleave(indices: Sequence[int], speakers: Sequence[str], gen: torch.Generator) -> list[int]:
    """`indices` reordered one per speaker in turn (speaker order shuffled), so that every
    prefix is speaker-balanced; within a speaker the given order is kept."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_speaker[speakers[i]].append(i)
    order = _shuffled(sorted(by_speaker), gen)
    longest = max((len(v) for v in by_speaker.values()), default=0)
    return [by_speaker[spk][r] for r in range(longest) for spk in order
            if r < len(by_speaker[spk])]


def seed_orders(speakers: Sequence[str], folds: int, seed: int = 0) -> list[list[int]]:
    """One order of all utterance indices per fold (see the module docstring)."""
    if folds < 1:
        raise ValueError(f"folds={folds} must be >= 1")
    gen = make_generator("cpu", seed, SUBSETS)
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, spk in enumerate(speakers):
        by_speaker[spk].append(i)
    dealt: list[list[int]] = [[] for _ in range(folds)]
    turn = 0
    for spk in sorted(by_speaker):
        for i in _shuffled(by_speaker[spk], gen):
            dealt[turn % folds].append(i)
            turn += 1
    orders = []
    for f in range(folds):
        rest = [i for g, fold in enumerate(dealt) if g != f for i in fold]
        orders.append(interleave(dealt[f], speakers, gen) + interleave(rest, speakers, gen))
    return orders


def budget_subsets(speakers: Sequence[str], budgets: Sequence[int], folds: int,
                   seed: int = 0) -> dict[int, list[list[int]]]:
    """{budget: [indices of fold 0, fold 1, ...]} of the training pool `speakers` (one
    speaker id per utterance)."""
    too_big = [b for b in budgets if not 0 < b <= len(speakers)]
    if too_big:
        raise ValueError(f"budgets {too_big} are not in [1, {len(speakers)}]: the training "
                         f"pool has {len(speakers)} usable utterances; lower --budgets")
    orders = seed_orders(speakers, folds, seed)
    return {b: [order[:b] for order in orders] for b in budgets}


def overlap(subsets: Sequence[Sequence[int]]) -> float:
    """Share of utterances that appear in more than one of `subsets` (0 = disjoint)."""
    counts: dict[int, int] = defaultdict(int)
    for sub in subsets:
        for i in sub:
            counts[i] += 1
    return sum(c > 1 for c in counts.values()) / max(1, len(counts))
