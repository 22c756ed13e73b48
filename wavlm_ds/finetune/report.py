"""The label-efficiency table of `make finetune`: per labelled budget and upstream, test
WER/CER of each seed and their mean, the paired difference against random initialization
(same subset, seed, settings and test utterances; one bootstrap over test utterances for
all seeds at once), in how many seeds each upstream was best; the frozen-layer CER table;
the frozen-probe rows of `make eval`; and a verdict line computed from the intervals."""
from __future__ import annotations

from wavlm_ds.eval import EvalError
from wavlm_ds.eval.cli import fmt
from wavlm_ds.eval.metrics import paired_mean_difference
from wavlm_ds.finetune.grid import RANDOM

METRICS = (("WER", "wer", "word_errors", "words"), ("CER", "cer", "char_errors", "chars"))


def counts(cell: dict, metric: str) -> tuple[list[float], list[float]]:
    _, _, err, ref = next(m for m in METRICS if m[1] == metric)
    return cell["per_utterance"][err], cell["per_utterance"][ref]


def check_same_test(cells: list[dict]) -> None:
    """Every paired number assumes one test split in one order; refuse anything else."""
    keys = {tuple(c["per_utterance"]["keys"]) for c in cells}
    if len(keys) != 1:
        raise EvalError(f"the cells were scored on {len(keys)} different test utterance lists; "
                        "a paired difference needs the same test split in every cell (re-run "
                        "the grid with one --corpus)")


def vs_random(runs: list[dict], randoms: list[dict], resamples: int) -> dict:
    """Paired difference (run - random init) of each metric: the mean over seeds, and each
    seed's own; the pairs are matched by seed."""
    if [r["seed"] for r in runs] != [r["seed"] for r in randoms]:
        raise EvalError("pretrained and random-init cells must come in the same seeds")
    out = {}
    for _, key, *_ in METRICS:
        a, b = [counts(r, key) for r in runs], [counts(r, key) for r in randoms]
        out[key] = paired_mean_difference(a, b, resamples=resamples).as_dict()
        out[f"{key}_per_seed"] = [paired_mean_difference([x], [y], resamples=resamples).as_dict()
                                  for x, y in zip(a, b)]
    return out


def budget_rows(cells: list[dict], budget: int, upstreams: list[str], resamples: int) -> list[dict]:
    """One row per upstream of this budget: per-seed values, means, paired vs random, wins."""
    by_up = {u: sorted((c for c in cells if c["budget"] == budget and c["upstream"] == u),
                       key=lambda c: c["seed"]) for u in upstreams}
    seeds = [c["seed"] for c in by_up[RANDOM]]
    rows = []
    for up in upstreams:
        runs = by_up[up]
        row = {"upstream": up, "seeds": seeds, "export": runs[0]["export"],
               **{k: [r[k]["value"] for r in runs] for _, k, *_ in METRICS},
               **{k: [r[k] for r in runs] for k in ("steps_run", "best_step", "best_valid_cer")},
               "max_steps": runs[0]["settings"]["steps"],
               "train_minutes": [r["train_minutes"] for r in runs],
               "vs_random": None if up == RANDOM else vs_random(runs, by_up[RANDOM], resamples)}
        for _, k, *_ in METRICS:
            row[f"{k}_mean"] = sum(row[k]) / len(row[k])
            row[f"{k}_best_in"] = sum(
                min(upstreams, key=lambda u, i=i: by_up[u][i][k]["value"]) == up
                for i in range(len(seeds)))
        rows.append(row)
    return rows


def summarize(result: dict, resamples: int) -> dict:
    """The numbers of every table (results.json) from the grid's output."""
    cells = result["cells"]
    check_same_test(cells)
    upstreams = list(dict.fromkeys(c["upstream"] for c in cells if c["upstream"] != RANDOM))
    upstreams.append(RANDOM)
    budgets = sorted({c["budget"] for c in cells})
    return {"budgets": [{"budget": b, "rows": budget_rows(cells, b, upstreams, resamples)}
                        for b in budgets],
            "test_utterances": len(cells[0]["per_utterance"]["keys"])}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main_table(summary: dict, probes: list[tuple[str, dict]]) -> list[str]:
    lines = ["| labelled (train utterances, min) | upstream | steps: max; run, best (mean) | "
             "WER % (mean of seeds) | CER % (mean) | WER vs random init (paired) | "
             "CER vs random init (paired) | lowest WER in | lowest CER in |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in summary["budgets"]:
        for row in b["rows"]:
            n = len(row["seeds"])
            minutes = sum(row["train_minutes"]) / n
            steps = (f"{row['max_steps']}; {sum(row['steps_run']) / n:.0f}, "
                     f"{sum(row['best_step']) / n:.0f}")
            diff = row["vs_random"]
            cells = [fmt(diff[k], 100) if diff else "-" for k in ("wer", "cer")]
            lines.append(f"| {b['budget']} ({minutes:.1f} min) | {row['upstream']} | {steps} | "
                         f"{pct(row['wer_mean'])} | {pct(row['cer_mean'])} | {cells[0]} | "
                         f"{cells[1]} | {row['wer_best_in']} of {n} | {row['cer_best_in']} of {n} |")
    for label, metrics in probes:
        lines.append(f"| all train (frozen) | {label} | - | {fmt(metrics['wer'], 100)} | "
                     f"{fmt(metrics['cer'], 100)} | - | - | - | - |")
    return lines


def seed_table(summary: dict) -> list[str]:
    lines = ["| labelled | upstream | seed | WER % | CER % | WER vs random init (paired) | "
             "CER vs random init (paired) | best valid CER % | best step / run / max |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in summary["budgets"]:
        for row in b["rows"]:
            for i, seed in enumerate(row["seeds"]):
                diff = row["vs_random"]
                d = [fmt(diff[f"{k}_per_seed"][i], 100) if diff else "-" for k in ("wer", "cer")]
                lines.append(f"| {b['budget']} | {row['upstream']} | {seed} | {pct(row['wer'][i])} | "
                             f"{pct(row['cer'][i])} | {d[0]} | {d[1]} | "
                             f"{pct(row['best_valid_cer'][i])} | {row['best_step'][i]} / "
                             f"{row['steps_run'][i]} / {row['max_steps']} |")
    return lines


def layer_table(layers: list[dict]) -> list[str]:
    if not layers:
        return []
    n = len(layers[0]["layers"])
    names = ["0 (block input)", *map(str, range(1, n - 1)), f"{n - 1} (final norm)"]
    lines = ["| frozen upstream | " + " | ".join(f"layer {x}" for x in names) + " |",
             "|---|" + "---|" * n]
    for entry in layers:
        lines.append(f"| {entry['upstream']} | "
                     + " | ".join(pct(x["test_cer"]) for x in entry["layers"]) + " |")
    return lines


def probe_rows(files: list[dict]) -> list[tuple[str, dict]]:
    """(label, {wer, cer}) of each system in eval_report's results.json files (a system in
    several files, e.g. the log-Mel baseline, once: the first file's)."""
    rows: dict[str, dict] = {}
    for probe in files:
        for name, system in probe["systems"].items():
            rows.setdefault(f"BiLSTM probe (`make eval`): {name}", system["metrics"]["asr"])
    return list(rows.items())


def verdict(summary: dict) -> str:
    """Where the paired CER (and WER) interval of the seed mean excludes zero, per budget."""
    parts = []
    for b in summary["budgets"]:
        said = []
        for row in b["rows"]:
            d = row["vs_random"]
            if d is None:
                continue
            cer, wer = d["cer"], d["wer"]
            word = ("helps" if cer["ci_hi"] < 0 else "hurts" if cer["ci_lo"] > 0
                    else "makes no measurable difference")
            said.append(f"{row['upstream']} init {word} (CER {fmt(cer, 100)} points, WER "
                        f"{fmt(wer, 100)})")
        parts.append(f"at {b['budget']} utterances " + "; ".join(said))
    return ("Verdict (paired vs random init, mean of the seeds, 95% CI over test utterances): "
            + ". ".join(p[0].upper() + p[1:] for p in parts) + ".")


LAYER_NOTE = ("Each frozen encoder (random init: the architecture's initialization, seed 0), "
              "a linear CTC probe per layer output, standardized with training statistics, "
              "trained on the whole train split for a fixed number of epochs (no model "
              "selection), scored on the test split.")


def markdown(summary: dict, result: dict, probes: list[dict], jobs: int, resamples: int,
             command: str) -> str:
    """results.md: the main table, its caption and verdict, the per-seed and layer tables."""
    s, sp = result["settings"], result["splits"]
    overlap = ", ".join(f"{b}: {100 * v['overlap_between_seeds']:.0f} %"
                        for b, v in result["subsets"].items())
    caption = (
        f"Test: {sp['test']['utterances']} utterances of {sp['test']['speakers']} held-out "
        f"speakers; model selection on {sp['validation']['utterances']} validation utterances "
        f"({sp['validation']['speakers']} other speakers). Budgets: speaker-balanced subsets of "
        f"the {result['train_pool']['utterances']}-utterance train split "
        f"({result['train_pool']['minutes']:.1f} min, {result['train_pool']['speakers']} "
        f"speakers), one fold per seed, nested across budgets; utterances shared between seeds' "
        f"subsets: {overlap}. Recipe (docs/finetune.md): head lr {s['lr']:g}, encoder "
        f"x{s['encoder_lr_scale']:g}, layer decay {s['layer_decay']:g}, {s['head_only_steps']} "
        f"head-only steps, {s['schedule']}, batch {s['batch_size']}, time mask "
        f"{s['mask_ratio']:g} (spans of {s['mask_span_frames']} frames), channel mask "
        f"{s['mask_channel_ratio']:g} (spans of {s['mask_channel_span']}), layerdrop "
        f"{s['layerdrop']:g}; validation every {s['valid_every_steps']} steps, patience "
        f"{s['patience']}. Paired cells: the difference of the seed means, one bootstrap over "
        f"test utterances ({resamples} resamples) for all seeds; 'lowest ... in': seeds "
        f"in which the upstream had the lowest test error of the {len(summary['budgets'][0]['rows'])}. "
        f"Wall time {result['elapsed_s']:.0f} s in {jobs} processes.")
    parts = ["## Label efficiency", "", *main_table(summary, probe_rows(probes)),
             "", caption, "", verdict(summary), "", "## Per seed", "",
             *seed_table(summary)]
    if result["layers"]:
        parts += ["", "## Linear CTC on each frozen layer (test CER %)", "",
                  *layer_table(result["layers"]), "", LAYER_NOTE]
    return "\n".join(parts + ["", f"Command: `{command}`", ""])
