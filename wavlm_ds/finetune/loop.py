"""The CTC fine-tuning loop, greedy decoding and scoring (one process or several ranks).

Under the `deepspeed` launcher (or torchrun) every rank takes its share of each global
batch and the gradients are averaged with one all-reduce per step (gloo on CPU, NCCL on
CUDA); rank 0 decodes the test split, scores it and writes the outputs. Randomness: batch
order, masks and layerdrop each come from their own generator seeded from (seed, step[,
rank]), and nn.Dropout's global RNG is reseeded from (seed, step, rank) every step, so a
run is reproducible for a fixed thread count (a test checks two runs are identical).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from wavlm_ds.engine import make_generator, param_groups, seed_for
from wavlm_ds.eval.asr import Tokenizer, greedy_decode
from wavlm_ds.eval.cli import split_info, write_json
from wavlm_ds.eval.data import load_split
from wavlm_ds.eval.metrics import bootstrap_ratio, char_errors, word_errors
from wavlm_ds.eval.probe import epoch_batches
from wavlm_ds.finetune.ctc import (CTCModel, FinetuneSettings, Labelled, build_tokenizer,
                                   ctc_loss, finetune_encoder, labelled, lr_scale, pad_batch)
from wavlm_ds.pretrained import load_pretrained, save_export

BATCHES, MASKS, LAYERDROP, DROPOUT = 1, 2, 3, 4  # generator streams
NO_DECAY = ("bias", "norm", "embedding", "gate_const")


def global_batches(lengths: Sequence[int], s: FinetuneSettings) -> list[list[int]]:
    """s.steps batches of utterance indices, epoch after epoch of shuffled batches."""
    if len(lengths) < s.batch_size:
        raise ValueError(f"{len(lengths)} training utterances cannot fill one batch of "
                         f"{s.batch_size}; lower --batch-size")
    gen, out = make_generator("cpu", s.seed, BATCHES), []
    while len(out) < s.steps:
        out += [b for b in epoch_batches(lengths, s.batch_size, gen) if len(b) == s.batch_size]
    return out[:s.steps]


def average_gradients(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """One flat all-reduce of the gradients that exist (the same set on every rank)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def fit(model: CTCModel, data: Labelled, s: FinetuneSettings, rank: int = 0, world: int = 1,
        log_every: int = 50) -> list[dict]:
    """Train; returns the loss curve [{step, loss, lr, phase}] (mean of each log window)."""
    if s.batch_size % world:
        raise ValueError(f"batch_size={s.batch_size} must be a multiple of the world size {world}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(model, NO_DECAY), lr=s.lr, weight_decay=s.weight_decay)
    lengths = [len(a) for a in data.audio]
    curve, window = [], []
    model.train()
    bar = tqdm(enumerate(global_batches(lengths, s)), total=s.steps, desc="finetune",
               unit="step", disable=rank != 0)
    for step, batch in bar:
        mine = batch[rank::world]
        audio, lens = pad_batch([data.audio[i] for i in mine])
        for group in opt.param_groups:
            group["lr"] = s.lr * lr_scale(step, s)
        torch.manual_seed(seed_for(s.seed, DROPOUT, step, rank))  # nn.Dropout's global RNG
        logits, enc_lengths = model(audio, lens, train_encoder=step >= s.head_only_steps,
                                    mask_gen=make_generator("cpu", s.seed, MASKS, step, rank),
                                    layerdrop_gen=make_generator("cpu", s.seed, LAYERDROP, step))
        loss = ctc_loss(logits, enc_lengths, [data.targets[i] for i in mine])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            average_gradients(params, world)
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        window.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == s.steps:
            curve.append({"step": step + 1, "loss": sum(window) / len(window),
                          "lr": opt.param_groups[0]["lr"],
                          "phase": "head" if step < s.head_only_steps else "encoder"})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            window = []
    model.eval()
    return curve


@torch.inference_mode()
def transcribe(model: CTCModel, audio: Sequence, tok: Tokenizer, batch_size: int = 8
               ) -> list[str]:
    """Greedy CTC decoding of every utterance (batched by length), in the input order."""
    model.eval()
    order = sorted(range(len(audio)), key=lambda i: len(audio[i]))
    hyps: list[str] = [""] * len(audio)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        wav, lens = pad_batch([audio[i] for i in idx])
        logits, enc_lengths = model(wav, lens)
        for row, i in enumerate(idx):
            hyps[i] = tok.decode(greedy_decode(logits[row, :int(enc_lengths[row])]))
    return hyps


def score(refs: list[str], hyps: list[str], keys: list[str], resamples: int = 1000,
          seed: int = 0) -> dict:
    """WER/CER with bootstrap CIs over utterances, and the per-utterance counts that a
    paired comparison between two systems on the same test split needs."""
    words, chars = word_errors(refs, hyps), char_errors(refs, hyps)
    return {"wer": bootstrap_ratio(words.errors, words.ref_len, resamples=resamples, seed=seed,
                                   what="WER").as_dict(),
            "cer": bootstrap_ratio(chars.errors, chars.ref_len, resamples=resamples, seed=seed,
                                   what="CER").as_dict(),
            "per_utterance": {"keys": keys, "word_errors": words.errors.tolist(),
                              "words": words.ref_len.tolist(), "char_errors": chars.errors.tolist(),
                              "chars": chars.ref_len.tolist()},
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]]}


def save_outputs(out: Path, model: CTCModel, tok: Tokenizer, run_cfg, summary: dict) -> None:
    """checkpoint/ (an export: model.safetensors with encoder.* and ctc_head.*, config.json),
    tokens.txt (id order, 0 = blank) and summary.json."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({f"ctc_head.{k}": v for k, v in model.ctc_head.state_dict().items()})
    save_export(out / "checkpoint", state, run_cfg)
    (out / "tokens.txt").write_text("\n".join(tok.symbols) + "\n", encoding="utf-8")
    write_json(out / "summary.json", summary)




def finetune(export: Path, train_spec: str, test_spec: str, s: FinetuneSettings, out: Path,
             vocab: Sequence[str] | None = None, max_seconds: float = 30.0,
             resamples: int = 1000, rank: int = 0, world: int = 1) -> dict | None:
    """Fine-tune `export` (or, with s.init == 'random', its architecture from scratch) on
    the labelled train split, decode the held-out test split; rank 0 writes `out` and
    returns the summary (other ranks return None)."""
    t0 = time.time()
    pretrained, run_cfg = load_pretrained(export)  # errors name the file and the fix
    train_split = load_split(train_spec, "train", 0, max_seconds)
    test_split = load_split(test_spec, "test", 0, max_seconds)
    tok = build_tokenizer(train_split, s.units, vocab)
    train, test = labelled(train_split, tok, s.units, True), labelled(test_split, tok, s.units, False)
    encoder = finetune_encoder(pretrained if s.init == "pretrained" else None, run_cfg.model, s)
    model = CTCModel(encoder, len(tok), run_cfg.data.logmel_mode, s)
    curve = fit(model, train, s, rank, world)
    if rank != 0:
        return None
    hyps = transcribe(model, test.audio, tok)
    m = run_cfg.model
    summary = {"tool": "finetune_ctc", "export": str(export), "settings": asdict(s),
               "world_size": world, "threads": torch.get_num_threads(), "resamples": resamples,
               "encoder": {"preset": m.preset, "num_layers": m.num_layers, "model_dim": m.model_dim,
                           "parameters": sum(p.numel() for p in encoder.parameters()),
                           "pretrain_steps": run_cfg.training.max_steps,
                           "objective": run_cfg.objective.name},
               "vocab": tok.symbols[1:],
               "train": {**split_info(train_split), "skipped_oov": train.skipped},
               "test": {**split_info(test_split), "oov": test.skipped},
               "speakers_in_both_splits": sorted(set(train.speakers) & set(test.speakers) - {""}),
               "train_loss_curve": curve, **score(test.texts, hyps, test.keys, resamples, s.seed),
               "elapsed_s": round(time.time() - t0, 1)}
    save_outputs(out, model, tok, run_cfg, summary)
    return summary
