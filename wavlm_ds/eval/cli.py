"""Command-line plumbing shared by tools/eval_asr.py, eval_f0.py and eval_report.py."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from wavlm_ds.eval import EvalError
from wavlm_ds.eval.data import Split, load_split
from wavlm_ds.eval.metrics import Estimate
from wavlm_ds.eval.probe import ProbeSettings
from wavlm_ds.eval.upstream import Upstream, load_upstream

Exporter = Callable[[Path, Path], Path]


def export_live(src: Path, out: Path) -> Path:
    """A run dir / ZeRO checkpoint -> an export dir: the exporter the eval tools hand to
    load_upstream (imported here, when needed, because it pulls in DeepSpeed)."""
    from wavlm_ds.export import ExportError, export_model, resolve_checkpoint
    try:
        return export_model(resolve_checkpoint(src), out)
    except ExportError as err:
        raise EvalError(f"upstream {src}: no model.safetensors (not an export) and not a usable "
                        f"checkpoint either: export: {err}") from None


def add_data_args(p: argparse.ArgumentParser, train: str | None, test: str | None) -> None:
    g = p.add_argument_group("data (any labelled shard set from tools/make_shards.py)")
    g.add_argument("--train", default=train, required=train is None,
                   help="training split: split dir, index.json, .tar, glob or comma list")
    g.add_argument("--test", default=test, required=test is None,
                   help="held-out split (other speakers), same forms as --train")
    g.add_argument("--max-train-utts", type=int, default=0, help="0 = all")
    g.add_argument("--max-test-utts", type=int, default=0, help="0 = all")
    g.add_argument("--max-seconds", type=float, default=30.0,
                   help="skip longer utterances (counted in the result)")


def add_probe_args(p: argparse.ArgumentParser, epochs: int = 20, hidden: int = 128) -> None:
    g = p.add_argument_group("probe")
    g.add_argument("--downstream", choices=["linear", "bilstm"], default="bilstm")
    g.add_argument("--hidden", type=int, default=hidden, help="BiLSTM units per direction")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (95%% CI)")
    g.add_argument("--batch-seconds", type=float, default=60.0,
                   help="audio per feature-extraction batch")
    g.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")


def add_upstream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upstream", required=True,
                   help="export dir, run dir or ZeRO checkpoint dir, or `logmel` (baseline)")
    p.add_argument("--stack", type=int, default=2,
                   help="logmel only: 10 ms frames stacked per probe frame (the encoder's 2)")
    p.add_argument("--logmel-mode", choices=["htk", "kaldi"], default="htk",
                   help="logmel only; an encoder uses the mode of its own config")


def probe_settings(args: argparse.Namespace) -> ProbeSettings:
    s = ProbeSettings(args.downstream, args.hidden, args.epochs, args.batch_size, args.lr,
                      seed=args.seed)
    for name in ("hidden", "epochs", "batch_size"):
        if getattr(s, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    return s


def set_threads(args: argparse.Namespace) -> None:
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)


def load_splits(args: argparse.Namespace) -> tuple[Split, Split]:
    return (load_split(args.train, "train", args.max_train_utts, args.max_seconds),
            load_split(args.test, "test", args.max_test_utts, args.max_seconds))


def upstream_from_args(args: argparse.Namespace, exporter: Exporter) -> Upstream:
    return load_upstream(args.upstream, exporter, args.stack, args.logmel_mode)


def split_info(split: Split) -> dict:
    speakers = {str(u.meta.get("speaker")) for u in split.utterances if "speaker" in u.meta}
    return {"source": split.source, "utterances": len(split.utterances),
            "hours": round(split.hours, 4), "speakers": len(speakers), "skipped": split.skipped}


def fmt(e: Estimate | dict, scale: float = 1.0, digits: int = 1) -> str:
    """'12.3 [10.1, 14.5]' from an Estimate or its dict."""
    d = e.as_dict() if isinstance(e, Estimate) else e
    v, lo, hi = (scale * d[k] for k in ("value", "ci_lo", "ci_hi"))
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def _finite(obj):
    """JSON has no NaN: a non-finite float in a result is a bug, so refuse to write it."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        if not np.isfinite(obj):
            raise EvalError(f"non-finite value {obj} in the result; refusing to write it")
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=2, ensure_ascii=False) + "\n")


def run(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a tool's main; bad input becomes one clear line and exit code 2."""
    try:
        return main(argv)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
