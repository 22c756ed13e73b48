"""What users would otherwise run, reimplemented faithfully for benchmarks.

fairseq_compute_mask_indices: fairseq's `compute_mask_indices` semantics ("static" span
lengths, overlap allowed, min_masks, probabilistic rounding of the span count), on the
host in numpy with a Python loop over rows, as fairseq does it.
"""
from __future__ import annotations

import numpy as np


def fairseq_compute_mask_indices(shape: tuple[int, int], padding_mask: np.ndarray | None,
                                 mask_prob: float, mask_length: int, min_masks: int,
                                 rng: np.random.Generator) -> np.ndarray:
    bsz, all_sz = shape
    mask = np.full((bsz, all_sz), False)
    for i in range(bsz):
        sz = all_sz - int(padding_mask[i].sum()) if padding_mask is not None else all_sz
        num_mask = int(mask_prob * sz / float(mask_length) + rng.random())
        num_mask = max(min_masks, num_mask)
        if sz - mask_length < num_mask:
            num_mask = max(sz - mask_length, 0)
        if num_mask == 0:
            continue
        starts = rng.choice(sz - mask_length + 1, num_mask, replace=False)
        idx = np.asarray([s + j for s in starts for j in range(mask_length)])
        mask[i, np.unique(idx[idx < sz])] = True
    return mask
