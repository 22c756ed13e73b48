"""BEST-RQ: predict codes of a frozen random-projection quantizer of the clean log-Mel.

Per encoder frame t, its s x 80 normalized input frames (the same frames masked
reconstruction predicts) are projected by a frozen random matrix (s*80 -> codebook_dim)
and matched by cosine to a frozen random codebook (codebook_size x codebook_dim, rows
l2-normalized); the index of the nearest code is the target of a softmax head. Projection
and codebook are drawn from a generator seeded by the run seed, so every rank holds the
same ones; they are persistent buffers, so checkpoints carry them and resume reuses them.
The first forward of each process logs a fingerprint of the quantizer it computes targets
with (after any checkpoint load), so a run's log shows that all ranks, before and after a
resume, used the same one.

An encoder frame counts as masked when any of its input frames is masked (its input was
replaced, at least in part, by the mask embedding); the loss is normalized by the global
count of such frames (`count`).
"""
from __future__ import annotations

import hashlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from wavlm_ds.config import ModelConfig, ObjectiveConfig
from wavlm_ds.model import EncoderOutput, stack_frames
from wavlm_ds.objectives.base import Objective, ObjectiveOutput

log = logging.getLogger(__name__)


def encoder_frame_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, T_in) input-frame mask -> (B, T_enc) bool: any input frame of the encoder frame."""
    return stack_frames(mask[..., None].float(), stride).amax(dim=-1) > 0


class BestRQ(Objective):
    def __init__(self, model_cfg: ModelConfig, cfg: ObjectiveConfig, seed: int) -> None:
        super().__init__()
        if cfg.codebook_size < 2 or cfg.codebook_dim < 1 or cfg.num_codebooks < 1:
            raise ValueError(f"objective: codebook_size={cfg.codebook_size}, codebook_dim="
                             f"{cfg.codebook_dim}, num_codebooks={cfg.num_codebooks} do not fit; "
                             "need codebook_size >= 2 and positive dims (BEST-RQ uses 8192 x 16)")
        self.stride = model_cfg.frame_stack
        in_dim = model_cfg.frame_stack * model_cfg.num_mel_bins
        gen = torch.Generator().manual_seed(seed)
        projection = torch.empty(cfg.num_codebooks, in_dim, cfg.codebook_dim)
        for i in range(cfg.num_codebooks):
            nn.init.xavier_uniform_(projection[i], generator=gen)
        codebook = F.normalize(torch.randn(cfg.num_codebooks, cfg.codebook_size, cfg.codebook_dim,
                                           generator=gen), dim=-1)
        self.register_buffer("projection", projection)  # (K, s*80, d) frozen
        self.register_buffer("codebook", codebook)  # (K, V, d) frozen, unit rows
        self.heads = nn.Linear(model_cfg.model_dim, cfg.num_codebooks * cfg.codebook_size)
        self.num_codebooks, self.codebook_size = cfg.num_codebooks, cfg.codebook_size
        self.fingerprint_logged = False

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the fp32 projection and codebook: one device sync."""
        h = hashlib.sha256()
        for t in (self.projection, self.codebook):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def targets(self, clean: torch.Tensor) -> torch.Tensor:
        """(B, T_in, 80) clean normalized log-Mel -> (B, T_enc, K) int64 code indices (fp32 math)."""
        stacked = stack_frames(clean.float(), self.stride)  # (B, T_enc, s*80)
        proj = torch.einsum("btf,kfd->btkd", stacked, self.projection.float())  # (B, T_enc, K, d)
        sims = torch.einsum("btkd,kvd->btkv", F.normalize(proj, dim=-1), self.codebook.float())
        return sims.argmax(dim=-1)

    counts_masked_frames = False  # masked encoder frames: known only on the device

    def count(self, mask: torch.Tensor) -> torch.Tensor:
        return encoder_frame_mask(mask, self.stride).sum()

    def forward(self, enc_out: EncoderOutput, targets: torch.Tensor, mask: torch.Tensor,
                extras: dict[str, torch.Tensor] | None = None) -> ObjectiveOutput:
        if not self.fingerprint_logged:  # once per process, after any checkpoint load
            log.info("BEST-RQ targets: quantizer sha256 %s (%d x %d codebook)", self.fingerprint(),
                     self.codebook_size, self.codebook.shape[-1])
            self.fingerprint_logged = True
        codes = self.targets(targets)  # (B, T_enc, K)
        B, T_enc, K = codes.shape
        V = self.codebook_size
        logits = self.heads(enc_out.hidden).float().view(B, T_enc, K, V)
        # Weighted by the mask instead of boolean indexing: no data-dependent shapes, no sync.
        sel = encoder_frame_mask(mask, self.stride)[:, :T_enc].float()  # (B, T_enc)
        ce = F.cross_entropy(logits.reshape(-1, V), codes.reshape(-1), reduction="none")
        ce = (ce.view(B, T_enc, K).mean(-1) * sel).sum()
        hits = ((logits.argmax(-1) == codes).float().mean(-1) * sel).sum()
        return ObjectiveOutput(loss_sum=ce, stats={
            "accuracy": hits, "code_perplexity": self.perplexity(codes, sel) * sel.sum()})

    def perplexity(self, codes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """exp(entropy) of the code histogram over the weighted frames, mean over codebooks."""
        K, V = self.num_codebooks, self.codebook_size
        flat = codes.reshape(-1, K).T  # (K, B*T_enc)
        w = weight.reshape(1, -1).expand(K, -1)
        hist = torch.zeros(K, V, device=codes.device).scatter_add_(1, flat, w)
        hist = hist / hist.sum(-1, keepdim=True).clamp(min=1e-12)
        entropy = -(hist * hist.clamp(min=1e-12).log()).sum(-1)
        return entropy.exp().mean()
