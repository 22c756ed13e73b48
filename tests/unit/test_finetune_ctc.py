"""CTC fine-tuning at tiny size: the schedule, the head-only phase, OOV handling, the tool's
outputs (summary, checkpoint that load_pretrained reads, tokens) and reproducibility."""
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
from wavlm_ds.finetune.ctc import CTCModel, FinetuneSettings, ctc_loss, finetune_encoder, lr_scale  # noqa: E402
from wavlm_ds.pretrained import load_pretrained  # noqa: E402

TINY = ["--steps", "6", "--head-only-steps", "2", "--batch-size", "4", "--resamples", "50"]


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


def test_compare_table_pairs_the_two_runs(corpus, export, tmp_path):
    import finetune_compare
    estimate = {"value": 0.5, "ci_lo": 0.4, "ci_hi": 0.6, "resamples": 50}
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"systems": {"e": {"metrics": {"asr": {"wer": estimate,
                                                                        "cer": estimate}}}}}))
    out = tmp_path / "cmp"
    assert finetune_compare.main(["--export", str(export), "--corpus", str(corpus), "--out-dir",
                                  str(out), "--probe-results", str(probe), *TINY]) == 0
    md = (out / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| fine-tuned, pretrained init", "| fine-tuned, random init",
        "| fine-tuned, pretrained init - fine-tuned, random init (paired)",
        "| frozen probe (BiLSTM, `make eval`): e"]
    assert "50.0 [40.0, 60.0]" in rows[-1]
    report = json.loads((out / "results.json").read_text())
    a, b = (json.loads((out / k / "summary.json").read_text()) for k in ("pretrained", "random"))
    assert report["paired_difference"]["wer"]["value"] == pytest.approx(
        a["wer"]["value"] - b["wer"]["value"])
