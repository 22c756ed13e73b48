"""The CTC fine-tuning loop with validation-CER model selection, greedy decoding, scoring.

Under the `deepspeed` launcher (or torchrun) every rank takes its share of each global
batch and the gradients are averaged with one all-reduce per step (gloo on CPU, NCCL on
CUDA); rank 0 decodes the validation split, keeps the best model and decides when to stop
(broadcast to the other ranks), then scores the held-out test split and writes the
outputs. Randomness: batch order, masks and layerdrop each come from their own generator
seeded from (seed, step[, rank]), and nn.Dropout's global RNG is reseeded from (seed, step,
rank) every step, so a run is reproducible for a fixed thread count (a test checks two runs
are identical).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from wavlm_ds.config import RunConfig
from wavlm_ds.engine import make_generator, seed_for
from wavlm_ds.eval.asr import Tokenizer, greedy_decode
from wavlm_ds.eval.cli import split_info, write_json
from wavlm_ds.eval.data import load_split
from wavlm_ds.eval.metrics import bootstrap_ratio, char_errors, word_errors
from wavlm_ds.eval.probe import epoch_batches
from wavlm_ds.finetune.ctc import (CTCModel, FinetuneSettings, Labelled, build_tokenizer,
                                   ctc_loss, finetune_encoder, labelled, lr_scale,
                                   optimizer_groups, pad_batch)
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.pretrained import load_pretrained, save_export

BATCHES, MASKS, LAYERDROP, DROPOUT = 1, 2, 3, 4  # generator streams


@dataclass
class Datasets:
    """The labelled splits of one fine-tuning run and their shared vocabulary."""
    train: Labelled
    valid: Labelled
    test: Labelled
    tok: Tokenizer
    info: dict = field(default_factory=dict)  # split_info of each split as read


def load_datasets(train_spec: str, valid_spec: str, test_spec: str, units: str,
                  vocab: Sequence[str] | None = None, max_seconds: float = 30.0) -> Datasets:
    """Read and encode the three splits; the vocabulary is the whole train split's."""
    splits = {name: load_split(spec, name, 0, max_seconds)
              for name, spec in (("train", train_spec), ("validation", valid_spec),
                                 ("test", test_spec))}
    tok = build_tokenizer(splits["train"], units, vocab)
    data = {name: labelled(split, tok, units, name == "train") for name, split in splits.items()}
    return Datasets(data["train"], data["validation"], data["test"], tok,
                    {name: split_info(split) for name, split in splits.items()})


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


class BestOnValidation:
    """Early stopping on validation CER: keeps a copy of the best model's weights; `done`
    once `patience` validations in a row did not beat it and step `min_step` is reached
    (never, with patience 0)."""

    def __init__(self, patience: int, min_step: int = 0) -> None:
        self.patience, self.min_step, self.history, self.step = patience, min_step, [], 0
        self.best_step, self.best_cer, self.state, self.since_best = None, float("inf"), None, 0

    def update(self, step: int, cer: float, model: torch.nn.Module) -> None:
        self.step = step
        self.history.append({"step": step, "cer": cer})
        if cer < self.best_cer:
            self.best_step, self.best_cer, self.since_best = step, cer, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since_best += 1

    @property
    def done(self) -> bool:
        return (self.patience > 0 and self.since_best >= self.patience
                and self.step >= self.min_step)


def validate_now(step_done: int, s: FinetuneSettings) -> bool:
    """At the end of the head-only phase, every valid_every_steps after it, and at the end."""
    after = step_done - s.head_only_steps
    return step_done == s.steps or (after >= 0 and after % s.valid_every_steps == 0)


def stop_everywhere(stop: bool, world: int) -> bool:
    """Rank 0's decision, on every rank."""
    if world == 1:
        return stop
    flag = torch.tensor([int(stop)])
    dist.broadcast(flag, 0)
    return bool(flag.item())


def train_step(model: CTCModel, opt: torch.optim.Optimizer, data: Labelled, mine: list[int],
               step: int, s: FinetuneSettings, rank: int, world: int) -> float:
    """One optimizer step on this rank's share `mine` of the global batch; returns the loss."""
    audio, lens = pad_batch([data.audio[i] for i in mine])
    for group in opt.param_groups:
        group["lr"] = s.lr * lr_scale(step, s) * group["lr_scale"]
    torch.manual_seed(seed_for(s.seed, DROPOUT, step, rank))  # nn.Dropout's global RNG
    logits, enc_lengths = model(audio, lens, train_encoder=step >= s.head_only_steps,
                                mask_gen=make_generator("cpu", s.seed, MASKS, step, rank),
                                layerdrop_gen=make_generator("cpu", s.seed, LAYERDROP, step))
    loss = ctc_loss(logits, enc_lengths, [data.targets[i] for i in mine])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    if world > 1:
        average_gradients(params, world)
    torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
    opt.step()
    return loss.item()


def fit(model: CTCModel, data: Datasets, s: FinetuneSettings, rank: int = 0, world: int = 1,
        log_every: int = 50, progress: bool = True) -> dict:
    """Train until the step budget or early stopping, then load the weights with the best
    validation CER (rank 0). Returns {train_loss_curve, validation, best_step, steps_run}."""
    if s.batch_size % world:
        raise ValueError(f"batch_size={s.batch_size} must be a multiple of the world size {world}")
    opt = torch.optim.AdamW(optimizer_groups(model, s), lr=s.lr)
    selection = BestOnValidation(s.patience, round(s.min_steps_ratio * s.steps))
    curve, window, step_done = [], [], 0
    model.train()
    batches = global_batches([len(a) for a in data.train.audio], s)
    bar = tqdm(batches, total=s.steps, desc="finetune", unit="step",
               disable=rank != 0 or not progress)
    for step, batch in enumerate(bar):
        window.append(train_step(model, opt, data.train, batch[rank::world], step, s, rank, world))
        step_done = step + 1
        if step_done % log_every == 0 or step_done == s.steps:
            curve.append({"step": step_done, "loss": sum(window) / len(window),
                          "lr": opt.param_groups[0]["lr"],
                          "phase": "head" if step < s.head_only_steps else "encoder"})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            window = []
        if validate_now(step_done, s):
            if rank == 0:
                hyps = transcribe(model, data.valid.audio, data.tok)
                selection.update(step_done, char_errors(data.valid.texts, hyps).rate, model)
                model.train()
            if stop_everywhere(selection.done, world):
                break
    model.eval()
    if rank == 0:
        model.load_state_dict(selection.state)
    return {"train_loss_curve": curve, "validation": selection.history,
            "best_step": selection.best_step, "best_valid_cer": selection.best_cer,
            "steps_run": step_done}


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


def run(pretrained: WavLMEncoder | None, run_cfg: RunConfig, data: Datasets,
        s: FinetuneSettings, resamples: int = 1000, rank: int = 0, world: int = 1,
        progress: bool = True) -> tuple[CTCModel, dict | None]:
    """Fine-tune `pretrained` (None: the same architecture from random initialization, as
    s.init == 'random' asks) on data.train, select on data.valid, score data.test (rank 0;
    other ranks get None for the result)."""
    t0 = time.time()
    encoder = finetune_encoder(pretrained if s.init == "pretrained" else None, run_cfg.model, s)
    model = CTCModel(encoder, len(data.tok), run_cfg.data.logmel_mode, s)
    trained = fit(model, data, s, rank, world, progress=progress)
    if rank != 0:
        return model, None
    hyps = transcribe(model, data.test.audio, data.tok)
    result = {**trained, **score(data.test.texts, hyps, data.test.keys, resamples, s.seed),
              "train_minutes": data.train.minutes, "elapsed_s": round(time.time() - t0, 1)}
    return model, result


def save_outputs(out: Path, model: CTCModel, tok: Tokenizer, run_cfg, summary: dict) -> None:
    """checkpoint/ (an export: model.safetensors with encoder.* and ctc_head.*, config.json),
    tokens.txt (id order, 0 = blank) and summary.json."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({f"ctc_head.{k}": v for k, v in model.ctc_head.state_dict().items()})
    save_export(out / "checkpoint", state, run_cfg)
    (out / "tokens.txt").write_text("\n".join(tok.symbols) + "\n", encoding="utf-8")
    write_json(out / "summary.json", summary)


def encoder_info(run_cfg: RunConfig, encoder: WavLMEncoder) -> dict:
    m = run_cfg.model
    return {"preset": m.preset, "num_layers": m.num_layers, "model_dim": m.model_dim,
            "parameters": sum(p.numel() for p in encoder.parameters()),
            "pretrain_steps": run_cfg.training.max_steps, "objective": run_cfg.objective.name}


def finetune(export: Path, specs: tuple[str, str, str], s: FinetuneSettings, out: Path,
             vocab: Sequence[str] | None = None, max_seconds: float = 30.0,
             resamples: int = 1000, rank: int = 0, world: int = 1) -> dict | None:
    """Fine-tune `export` (or, with s.init == 'random', its architecture from scratch) on
    the labelled train split of specs = (train, validation, test), keep the model with the
    best validation CER, decode the held-out test split; rank 0 writes `out` and returns
    the summary (other ranks return None)."""
    pretrained, run_cfg = load_pretrained(export)  # errors name the file and the fix
    data = load_datasets(*specs, s.units, vocab, max_seconds)
    model, result = run(pretrained, run_cfg, data, s, resamples, rank, world)
    if result is None:
        return None
    summary = {"tool": "finetune_ctc", "export": str(export), "settings": asdict(s),
               "world_size": world, "threads": torch.get_num_threads(), "resamples": resamples,
               "encoder": encoder_info(run_cfg, pretrained), "vocab": data.tok.symbols[1:],
               "train": {**data.info["train"], "skipped_oov": data.train.skipped},
               "validation": data.info["validation"],
               "test": {**data.info["test"], "oov": data.test.skipped},
               "speakers_in_both_splits": sorted(set(data.train.speakers) & set(data.test.speakers)
                                                 - {""}), **result}
    save_outputs(out, model, data.tok, run_cfg, summary)
    return summary
