"""The `make finetune` table: fine-tuned pretrained vs fine-tuned random init (paired), next
to the frozen probes of `make eval` on the same held-out test split."""
from __future__ import annotations

from wavlm_ds.eval import EvalError
from wavlm_ds.eval.cli import fmt
from wavlm_ds.eval.metrics import paired_difference

METRICS = (("WER %", "wer", "word_errors", "words"), ("CER %", "cer", "char_errors", "chars"))


def paired(a: dict, b: dict, resamples: int, seed: int) -> dict[str, dict]:
    """metric(a) - metric(b) per metric, same utterance resamples for both summaries."""
    ua, ub = a["per_utterance"], b["per_utterance"]
    if ua["keys"] != ub["keys"]:
        raise EvalError("the two fine-tuning runs were scored on different test utterances; "
                        "a paired difference needs the same test split")
    return {key: paired_difference((ua[err], ua[ref]), (ub[err], ub[ref]), resamples=resamples,
                                   seed=seed).as_dict()
            for _, key, err, ref in METRICS}


def probe_rows(probe: dict | None) -> list[tuple[str, dict]]:
    """(label, {wer, cer}) of each upstream in eval_report's results.json."""
    if probe is None:
        return []
    return [(f"frozen probe (BiLSTM, `make eval`): {name}", sys_["metrics"]["asr"])
            for name, sys_ in probe["systems"].items()]


def table(runs: dict[str, dict], diff: dict, probe: dict | None) -> list[str]:
    """Markdown rows: each fine-tuning run, the paired difference, the frozen probes."""
    lines = ["| system | " + " | ".join(m[0] for m in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for label, summary in runs.items():
        lines.append(f"| {label} | " + " | ".join(fmt(summary[k], 100) for _, k, *_ in METRICS) + " |")
    names = list(runs)
    lines.append(f"| {names[0]} - {names[1]} (paired) | "
                 + " | ".join(fmt(diff[k], 100) for _, k, *_ in METRICS) + " |")
    for label, metrics in probe_rows(probe):
        lines.append(f"| {label} | " + " | ".join(fmt(metrics[k], 100) for _, k, *_ in METRICS) + " |")
    return lines


def caption(first: dict, elapsed: dict[str, float], probe: dict | None) -> str:
    s, tr, te, enc = first["settings"], first["train"], first["test"], first["encoder"]
    text = (f"Fine-tuning: {enc['num_layers']} x {enc['model_dim']} encoder "
            f"({enc['parameters'] / 1e6:.2f}M parameters), linear CTC head on {s['units']}, "
            f"{s['steps']} steps ({s['head_only_steps']} head only) of {s['batch_size']} "
            f"utterances, AdamW peak lr {s['lr']:g} ({s['schedule']}), masking {s['mask_ratio']:g} "
            f"in spans of {s['mask_span_frames']} frames, layerdrop {s['layerdrop']:g}, front end "
            f"{'frozen' if s['freeze_frontend'] else 'trained'}, seed {s['seed']}; greedy "
            f"decoding. Trained on {tr['utterances']} utterances ({tr['speakers']} speakers, "
            f"{tr['hours'] * 60:.1f} min), scored on {te['utterances']} held-out utterances "
            f"({te['speakers']} other speakers). Cells: value [95% CI], percentile bootstrap "
            f"over test utterances; the difference row resamples both runs together. "
            f"Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in elapsed.items()) + ".")
    if probe is None:
        text += " No frozen-probe results were given (run `make eval` for those rows)."
    return text
