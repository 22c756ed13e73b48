"""CTC fine-tuning at tiny size: the schedule, the head-only phase, the encoder's lr groups,
early stopping on validation CER, the budget subsets, OOV handling, the tool's outputs
(summary, checkpoint that load_pretrained reads, tokens), reproducibility, and one tiny
label-efficiency grid (cells in worker processes, paired against random init)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("jiwer")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is needed for the tiny corpus", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import finetune_ctc  # noqa: E402
import synth_corpus  # noqa: E402

from tests.unit.exports import speech_batch, tiny_export  # noqa: E402
from wavlm_ds.eval import cli  # noqa: E402
from wavlm_ds.eval import EvalError  # noqa: E402
from wavlm_ds.finetune import report  # noqa: E402
from wavlm_ds.finetune.ctc import (CTCModel, FinetuneSettings, ctc_loss, finetune_encoder,  # noqa: E402
                                   lr_scale, optimizer_groups)
from wavlm_ds.finetune.loop import BestOnValidation, train_step, transcribe  # noqa: E402
from wavlm_ds.finetune.subsets import budget_subsets, overlap  # noqa: E402
from wavlm_ds.pretrained import load_pretrained  # noqa: E402

TINY = ["--steps", "6", "--head-only-steps", "2", "--batch-size", "4", "--resamples", "50",
        "--valid-every-steps", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    assert synth_corpus.main(["--out", str(out), "--utterances", "24", "--workers", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("export") / "e")


def test_tri_stage_and_cosine_schedules():
    s = FinetuneSettings(steps=100, head_only_steps=10, warmup_ratio=0.1, hold_ratio=0.4,
                         final_lr_scale=0.05)
    scales = [lr_scale(i, s) for i in range(100)]
    assert scales[0] == pytest.approx(0.01) and scales[10] == 1.0 and scales[49] == 1.0
    assert all(a >= b for a, b in zip(scales[10:], scales[11:]))  # never rises after warm-up
    assert scales[-1] == pytest.approx(0.05 ** (49 / 50))
    cos = FinetuneSettings(steps=100, head_only_steps=10, schedule="cosine")
    assert lr_scale(10, cos) == pytest.approx(1.0) and lr_scale(99, cos) < 0.06
    with pytest.raises(ValueError, match="head_only_steps"):
        FinetuneSettings(steps=10, head_only_steps=10)


def test_head_only_phase_gives_the_encoder_no_gradient(export):
    encoder, cfg = load_pretrained(export)
    s = FinetuneSettings()
    model = CTCModel(finetune_encoder(encoder, cfg.model, s), 10, cfg.data.logmel_mode, s).train()
    wavs = speech_batch(lengths=(8000, 6000))
    audio = torch.stack([w[:6000] for w in wavs])
    targets = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    for train_encoder in (False, True):
        model.zero_grad(set_to_none=True)
        logits, lens = model(audio, torch.tensor([6000, 6000]), train_encoder=train_encoder,
                             mask_gen=torch.Generator().manual_seed(0),
                             layerdrop_gen=torch.Generator().manual_seed(0))
        ctc_loss(logits, lens, targets).backward()
        assert model.ctc_head.weight.grad is not None
        blocks = [p.grad for p in model.encoder.blocks.parameters()]
        assert all(g is None for g in blocks) != train_encoder
        assert all(p.grad is None for p in model.encoder.frontend.parameters())  # frozen


def test_tool_writes_summary_checkpoint_and_reproduces(corpus, export, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert finetune_ctc.main([str(export), "--corpus", str(corpus), "--out", str(out),
                                  *TINY]) == 0
        runs.append(json.loads((out / "summary.json").read_text()))
    a, b = runs
    assert a["train_loss_curve"] == b["train_loss_curve"] and a["wer"] == b["wer"]
    assert [c["phase"] for c in a["train_loss_curve"]] == ["encoder"]  # logged at step 6
    assert a["speakers_in_both_splits"] == []  # held-out speakers
    assert 0 <= a["wer"]["ci_lo"] <= a["wer"]["value"] <= a["wer"]["ci_hi"]
    assert len(a["per_utterance"]["keys"]) == a["test"]["utterances"]
    encoder, _ = load_pretrained(tmp_path / "a" / "checkpoint")
    tokens = (tmp_path / "a" / "tokens.txt").read_text().split("\n")
    assert tokens[0] == "<blank>" and tokens[1:-1] == a["vocab"]
    from safetensors.torch import load_file
    head = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))["ctc_head.weight"]
    assert head.shape == (len(a["vocab"]) + 1, encoder.cfg.model_dim)
    random_init = tmp_path / "r"
    assert finetune_ctc.main([str(export), "--corpus", str(corpus), "--out", str(random_init),
                              "--init", "random", *TINY]) == 0
    r = json.loads((random_init / "summary.json").read_text())
    assert r["settings"]["init"] == "random" and r["train_loss_curve"] != a["train_loss_curve"]


def test_vocabulary_that_misses_the_transcripts(corpus, export, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n")
    argv = [str(export), "--corpus", str(corpus), "--out", str(tmp_path / "o"),
            "--vocab", str(vocab), *TINY]
    assert cli.run(finetune_ctc.main, argv) == 2
    err = capsys.readouterr().err
    assert "outside the vocabulary" in err and "--vocab" in err and "train-000000.tar" in err
    # a vocabulary without "z" (only pinyin has it): those utterances are counted skips
    vocab.write_text("\n".join([*"abcdefghijklmnopqrstuvwxy", *"0123456789", "'", "|"]))
    argv[argv.index("--out") + 1] = str(tmp_path / "p")
    assert cli.run(finetune_ctc.main, argv) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    skipped = summary["train"]["skipped_oov"]
    assert 0 < skipped["oov_utterances"] < summary["train"]["utterances"]
    assert skipped["first_oov"].endswith("'z'")


def tiny_model(export, **kw) -> tuple[CTCModel, FinetuneSettings]:
    encoder, cfg = load_pretrained(export)
    s = FinetuneSettings(**kw)
    return CTCModel(finetune_encoder(encoder, cfg.model, s), 10, cfg.data.logmel_mode, s), s


def test_encoder_lr_applies_to_encoder_parameters_only(export):
    model, s = tiny_model(export, encoder_lr_scale=0.1, layer_decay=0.5, steps=20,
                          head_only_steps=0, mask_ratio=0.0)
    groups = optimizer_groups(model, s)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(scale_of) == sum(len(g["params"]) for g in groups) == len(trainable)  # each once
    layers = model.encoder.cfg.num_layers
    for name, p in trainable:
        if name.startswith("ctc_head."):
            assert scale_of[id(p)] == 1.0, name
        elif name.startswith("encoder.blocks."):
            block = int(name.split(".")[2]) + 1
            assert scale_of[id(p)] == pytest.approx(0.1 * 0.5 ** (layers - block)), name
        else:
            assert name.startswith("encoder.") and scale_of[id(p)] <= 0.1, name
    assert not any(id(p) in scale_of for p in model.encoder.frontend.parameters())  # frozen
    opt = torch.optim.AdamW(groups, lr=s.lr)
    wavs = speech_batch(lengths=(8000, 6000))
    from wavlm_ds.finetune.ctc import Labelled
    data = Labelled(["a", "b"], [w.numpy() for w in wavs], ["", ""],
                    [torch.tensor([1, 2, 3]), torch.tensor([4, 5])], ["x", "y"], {})
    train_step(model, opt, data, [0, 1], 5, s, 0, 1)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(s.lr * lr_scale(5, s) * g["lr_scale"])


def test_early_stopping_keeps_the_best_validation_weights():
    net = torch.nn.Linear(2, 2)
    best = BestOnValidation(patience=2)
    for step, cer in [(10, 0.9), (20, 0.7), (30, 0.8), (40, 0.75)]:
        with torch.no_grad():
            net.weight.fill_(step)
        best.update(step, cer, net)
        assert best.done == (step == 40)  # two validations in a row without a better CER
    assert best.best_step == 20 and best.best_cer == 0.7
    assert torch.equal(best.state["weight"], torch.full((2, 2), 20.0))  # a copy, not a view
    assert not BestOnValidation(patience=0).done
    late = BestOnValidation(patience=1, min_step=50)
    for step, cer in [(10, 0.9), (20, 0.95), (50, 0.96)]:
        late.update(step, cer, net)
        assert late.done == (step == 50)  # no stop before min_step


def test_budgets_draw_disjoint_speaker_balanced_nested_subsets():
    gen = torch.Generator().manual_seed(0)  # 6 speakers x 20 utterances, in a shuffled order
    speakers = [f"spk{i % 6}" for i in torch.randperm(120, generator=gen).tolist()]
    subsets = budget_subsets(speakers, (6, 30, 120), folds=3)
    for budget, folds in subsets.items():
        assert [len(f) for f in folds] == [budget] * 3
        assert all(len(set(f)) == budget for f in folds)
    assert overlap(subsets[6]) == overlap(subsets[30]) == 0.0  # disjoint across seeds
    assert overlap(subsets[120]) == 1.0  # the whole pool: every seed has it all
    for fold in subsets[6]:  # every speaker once
        assert sorted(speakers[i] for i in fold) == sorted(set(speakers))
    for small, big in zip(subsets[6], subsets[30]):
        assert set(small) <= set(big)
        counts = [sum(speakers[i] == spk for i in big) for spk in set(speakers)]
        assert max(counts) - min(counts) <= 1
    with pytest.raises(ValueError, match="lower --budgets"):
        budget_subsets(speakers, (121,), folds=3)


def test_finetune_stops_early_and_scores_the_best_validation_model(corpus, export, tmp_path):
    from wavlm_ds.finetune.loop import load_datasets, run
    data = load_datasets(str(corpus / "train"), str(corpus / "validation"), str(corpus / "test"),
                         "chars")
    encoder, cfg = load_pretrained(export)
    s = FinetuneSettings(steps=40, head_only_steps=1, batch_size=4, lr=0.05,
                         valid_every_steps=1, patience=2, min_steps_ratio=0.0)  # lr: the CER moves
    model, result = run(encoder, cfg, data, s, resamples=20, progress=False)
    history = result["validation"]
    best = min(history, key=lambda h: h["cer"])
    assert result["best_step"] == best["step"] and result["steps_run"] == history[-1]["step"]
    assert result["steps_run"] - result["best_step"] == 2 < 40 - 1  # stopped by patience
    rescored = transcribe(model, data.valid.audio, data.tok)
    from wavlm_ds.eval.metrics import char_errors
    assert char_errors(data.valid.texts, rescored).rate == pytest.approx(best["cer"])


def test_label_efficiency_grid_pairs_cells_on_the_same_test_utterances(corpus, export, tmp_path):
    import finetune_compare
    out = tmp_path / "grid"
    argv = ["--upstream", f"first={export}", "--corpus", str(corpus), "--out-dir", str(out),
            "--budgets", "4", "--max-steps", "3", "--seeds", "0,1", "--batch-size", "4",
            "--head-only-steps", "1", "--valid-every-steps", "1", "--resamples", "50",
            "--jobs", "2"]
    assert finetune_compare.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert len(cells) == 1 * 2 * 2  # budgets x (the upstream + random init) x seeds
    keys = {tuple(c["per_utterance"]["keys"]) for c in cells}
    assert len(keys) == 1  # every cell on the same test utterances
    row = next(r for r in result["summary"]["budgets"][0]["rows"] if r["upstream"] == "first")
    mine = sorted((c for c in cells if c["budget"] == 4 and c["upstream"] == "first"),
                  key=lambda c: c["seed"])
    base = sorted((c for c in cells if c["budget"] == 4 and c["upstream"] == "random init"),
                  key=lambda c: c["seed"])
    expected = sum(a["cer"]["value"] - b["cer"]["value"] for a, b in zip(mine, base)) / 2
    assert row["vs_random"]["cer"]["value"] == pytest.approx(expected)
    assert row["vs_random"]["cer"]["ci_lo"] <= expected <= row["vs_random"]["cer"]["ci_hi"]
    assert [c["train_speakers"] for c in mine] == [4, 4]  # one utterance per speaker
    assert result["subsets"]["4"]["overlap_between_seeds"] == 0.0
    assert len(result["layers"]) == 2 and all(len(x["layers"]) == 4 for x in result["layers"])
    md = (out / "results.md").read_text()
    assert "Verdict (paired vs random init" in md and "| 4 (0." in md
    mine[1]["per_utterance"]["keys"] = mine[1]["per_utterance"]["keys"][::-1]
    with pytest.raises(EvalError, match="same test split"):
        report.summarize({"cells": mine + base}, 10)
