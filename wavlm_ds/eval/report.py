"""A pretrained encoder and the log-Mel baseline through both probes: the results table.

The library behind tools/eval_report.py (`make eval`) and the objective comparison
(eval/compare.py): `evaluate` runs the CTC ASR and F0 probes on one frozen upstream,
`differences` gives paired bootstrap intervals of pretrained minus baseline, `report`
writes results.md and results.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from wavlm_ds.eval import EvalError, cli
from wavlm_ds.eval.asr import FIELD, asr_metrics, run_asr
from wavlm_ds.eval.data import Split, label_texts
from wavlm_ds.eval.f0 import references, run_f0
from wavlm_ds.eval.metrics import paired_difference
from wavlm_ds.eval.pitch import TrackerConfig, checked_tracker
from wavlm_ds.eval.probe import ProbeSettings
from wavlm_ds.eval.upstream import Upstream, extract, load_upstream, logmel_upstream


# column -> (how to get per-utterance (num, den) from a system's results, transform, scale, digits)
COLUMNS = {
    "WER %": (lambda r: (r["asr"].words.errors, r["asr"].words.ref_len), None, 100, 1),
    "CER %": (lambda r: (r["asr"].chars.errors, r["asr"].chars.ref_len), None, 100, 1),
    "F0-RMSE Hz": (lambda r: (r["f0"].probe.sq_hz, r["f0"].probe.voiced), np.sqrt, 1, 1),
    "F0-RMSE cents": (lambda r: (r["f0"].probe.sq_cents, r["f0"].probe.voiced), np.sqrt, 1, 0),
    "GPE %": (lambda r: (r["f0"].probe.gross, r["f0"].probe.voiced), None, 100, 1),
    "V/UV error %": (lambda r: (r["f0"].probe.vuv_errors, r["f0"].probe.frames), None, 100, 1),
}
METRIC_KEYS = {"WER %": ("asr", "wer"), "CER %": ("asr", "cer"),
               "F0-RMSE Hz": ("f0", "f0_rmse_hz"), "F0-RMSE cents": ("f0", "f0_rmse_cents"),
               "GPE %": ("f0", "gpe"), "V/UV error %": ("f0", "vuv_error")}


def evaluate(upstream: Upstream, splits: tuple[Split, Split], labels: dict[str, tuple],
             settings: ProbeSettings, args: argparse.Namespace) -> dict:
    """Both probes on one frozen upstream; labels[split] = (texts, F0 references)."""
    feats = {s.name: extract(upstream, [u.key for u in s.utterances],
                             [u.audio for u in s.utterances], args.batch_seconds,
                             f"{s.name} features") for s in splits}
    (texts_tr, refs_tr), (texts_te, refs_te) = labels["train"], labels["test"]
    asr = run_asr(feats["train"], texts_tr, feats["test"], texts_te, settings, "chars")
    f0 = run_f0(feats["train"], refs_tr, feats["test"], refs_te, settings)
    return {"asr": asr, "f0": f0, "info": upstream.info,
            "metrics": {"asr": asr_metrics(asr, args.resamples, args.seed),
                        "f0": f0.probe.metrics(args.resamples, args.seed, "test split")}}


def differences(pre: dict, base: dict, resamples: int, seed: int) -> dict[str, dict]:
    out = {}
    for col, (get, transform, _, _) in COLUMNS.items():
        kw = {"transform": transform} if transform else {}
        out[col] = paired_difference(get(pre), get(base), resamples=resamples, seed=seed,
                                     **kw).as_dict()
    return out


def verdict(diff: dict[str, dict]) -> tuple[list[str], list[str], list[str]]:
    """Columns where pretrained is better / worse (paired CI excludes 0) / indistinguishable."""
    better = [c for c, d in diff.items() if d["ci_hi"] < 0]
    worse = [c for c, d in diff.items() if d["ci_lo"] > 0]
    return better, worse, [c for c in diff if c not in better and c not in worse]


SCALE_NOTE = (
    "Why, and what scale would be needed: the demo encoder is a {desc} model pretrained for "
    "{steps} steps ({objective} objective) on {hours}, so it has had little "
    "chance to learn more than a re-encoding of its log-Mel input, and a probe cannot find "
    "in a re-encoding anything the same probe cannot find in the input itself. In SUPERB "
    "(Yang et al., 2021), with this probe design (weighted layer sum + 2-layer BiLSTM, CTC) "
    "on LibriSpeech, FBANK gives about 23% WER, masked Mel reconstruction (Mockingjay, "
    "360 h) about the same, and HuBERT / WavLM Base (960 h, 400k steps, ~95M parameters) "
    "about 6%. A clear gain over log-Mel needs pretraining on hundreds of hours with "
    "10^5-step schedules, i.e. the recipe's cluster scale, not a CPU demo.")


def markdown(report: dict, systems: dict[str, dict]) -> str:
    cols = list(COLUMNS)
    lines = ["| upstream | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, res in systems.items():
        cells = [cli.fmt(res["metrics"][k][m], COLUMNS[c][2], COLUMNS[c][3])
                 for c, (k, m) in ((c, METRIC_KEYS[c]) for c in cols)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    diff = report["difference"]
    lines.append("| pretrained - baseline (paired) | " + " | ".join(
        cli.fmt(diff[c], COLUMNS[c][2], COLUMNS[c][3]) for c in cols) + " |")
    const = report["constant_f0_predictor"]
    lines.append("| constant F0 / majority V/UV (floor) | - | - | " + " | ".join(
        cli.fmt(const[m], COLUMNS[c][2], COLUMNS[c][3]) for c, m in
        (("F0-RMSE Hz", "f0_rmse_hz"), ("F0-RMSE cents", "f0_rmse_cents"), ("GPE %", "gpe"),
         ("V/UV error %", "vuv_error"))) + " |")
    return "\n".join(lines)


def verdict_text(report: dict) -> list[str]:
    v, s = report["verdict"], report["settings"]
    tr, te = s["train"], s["test"]
    text = [f"Probes trained on {tr['utterances']} utterances ({tr['speakers']} speakers, "
            f"{60 * tr['hours']:.1f} min) and scored on {te['utterances']} held-out utterances "
            f"({te['speakers']} other speakers, {60 * te['hours']:.1f} min). Cells: value "
            f"[95% CI], percentile bootstrap over test utterances ({s['resamples']} resamples); "
            "lower is better everywhere.", "",
            "**Verdict.** The pretrained encoder is better than the log-Mel baseline on: "
            f"{', '.join(v['better']) or 'nothing'}; worse on: "
            f"{', '.join(v['worse']) or 'nothing'}; not distinguishable (paired CI contains 0) "
            f"on: {', '.join(v['same']) or 'nothing'}."]
    if "WER %" not in v["better"] or "CER %" not in v["better"]:
        text += ["", report["scale_note"]]
    return text


def settings_text(report: dict) -> list[str]:
    s = report["settings"]
    up, pr, tr = s["upstream"], s["probe"], s["tracker"]
    layers = len(report["layer_weights"]["asr"])
    head = (f"BiLSTM 2 x {pr['hidden']} units/direction" if pr["downstream"] == "bilstm"
            else "linear")
    return [
        f"Command: `{report['command']}`  ",
        f"Upstream: `{up['upstream']}`: preset {up['preset']}, {up['num_layers']} layers x "
        f"{up['model_dim']}, {up['parameters'] / 1e6:.2f}M parameters, {up['objective']} "
        f"objective, {up['max_steps']} steps; the probe mixes all {layers} layer "
        "outputs (block input, each block, final LayerNorm).  ",
        f"Probe: softmax layer weights + {head}, {pr['epochs']} epochs, batch {pr['batch_size']}, "
        f"Adam lr {pr['lr']}, seed {pr['seed']}; ASR: CTC on characters, greedy decoding, jiwer. "
        f"F0: Praat autocorrelation (parselmouth, floor {tr['floor_hz']:g} Hz, ceiling "
        f"{tr['ceiling_hz']:g} Hz) on the clean audio, read at each 20 ms frame centre (the "
        "log-Mel baseline stacks two 10 ms frames, as the encoder does, so both are scored on "
        "the same frames); tracker self-check on synthetic tones: worst RMSE "
        f"{s['tracker_worst_cents']:.1f} cents. F0-RMSE over reference-voiced frames, GPE = "
        "share of them off by > 20 %, V/UV error over all frames. Six metrics at 95 % each: "
        "one spurious 'significant' difference is not unusual. "
        f"Elapsed {report['elapsed_s']:.0f} s."]


def build_report(args: argparse.Namespace, info: dict, systems: dict[str, dict],
                 splits: tuple[Split, Split], check: dict, tracker: TrackerConfig,
                 settings: ProbeSettings, t0: float) -> dict:
    pre_res, base_res = systems.values()
    diff = differences(pre_res, base_res, args.resamples, args.seed)
    better, worse, same = verdict(diff)
    train_info, test_info = (cli.split_info(s) for s in splits)
    return {
        "tool": "eval_report", "command": cli.command_line(), "elapsed_s": time.time() - t0,
        "settings": {"upstream": info, "probe": settings.as_dict(), "tracker": vars(tracker),
                     "tracker_self_check": check, "resamples": args.resamples,
                     "tracker_worst_cents": max(r["rmse_cents"] for r in check.values()),
                     "train": train_info, "test": test_info},
        "systems": {k: {"metrics": v["metrics"], "asr": v["asr"].summary(),
                        "f0_train_loss_curve": v["f0"].train_curve} for k, v in systems.items()},
        "layer_weights": {"asr": pre_res["asr"].layer_weights, "f0": pre_res["f0"].layer_weights},
        "difference": diff, "verdict": {"better": better, "worse": worse, "same": same},
        "constant_f0_predictor": base_res["f0"].constant.metrics(args.resamples, args.seed, "test"),
        "scale_note": SCALE_NOTE.format(
            desc=f"{info['num_layers']} x {info['model_dim']} ({info['parameters'] / 1e6:.1f}M "
                 "parameters)", steps=info["max_steps"], objective=info["objective"],
            hours=("an unknown amount of audio" if info["pretrain_hours"] is None
                   else f"{info['pretrain_hours']:.2f} h of audio"))}


def report(args: argparse.Namespace) -> Path:
    """Both probes on the pretrained upstream and on log-Mel; writes results.md (printed)
    and results.json into args.out_dir; returns results.md's path."""
    settings, tracker, t0 = cli.probe_settings(args), TrackerConfig(), time.time()
    for need in (Path(args.upstream), args.corpus / "train", args.corpus / "test"):
        if not need.exists():
            raise EvalError(f"{need} does not exist: run `make demo` first (it synthesizes the "
                            "corpus and exports the checkpoint), or pass --upstream/--corpus")
    check = checked_tracker(tracker)
    splits = cli.load_splits(args)
    pre = load_upstream(args.upstream, cli.export_live)
    base = logmel_upstream(pre.stack, pre.logmel_mode)  # same framing as the encoder
    # One set of labels for both systems: same transcripts, same F0 reference frames.
    labels = {s.name: (label_texts(s, FIELD["chars"]),
                       references([u.audio for u in s.utterances], pre.stack, pre.logmel_mode,
                                  tracker, f"praat {s.name}")) for s in splits}
    systems = {f"pretrained (`{args.upstream}`)": evaluate(pre, splits, labels, settings, args),
               "log-Mel baseline": evaluate(base, splits, labels, settings, args)}
    report = build_report(args, pre.info, systems, splits, check, tracker, settings, t0)
    md = "\n".join([markdown(report, systems), "", *verdict_text(report), "",
                    *settings_text(report)]) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.md").write_text(md)
    cli.write_json(args.out_dir / "results.json", report)
    print(md)
    return args.out_dir / "results.md"
