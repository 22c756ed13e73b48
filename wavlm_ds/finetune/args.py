"""Command-line flags for every FinetuneSettings field (tools/finetune_ctc.py and
tools/finetune_compare.py share them): --field-name with the field's type and default."""
from __future__ import annotations

import argparse
import dataclasses

from wavlm_ds.eval import EvalError
from wavlm_ds.finetune.ctc import FinetuneSettings

BOOLEAN = ("freeze_frontend",)  # --train-frontend turns it off


def add_settings_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    d = FinetuneSettings()
    for f in dataclasses.fields(FinetuneSettings):
        if f.name in skip or f.name in BOOLEAN:
            continue
        default = getattr(d, f.name)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default,
                       help=f"FinetuneSettings.{f.name} (default {default})")
    p.add_argument("--train-frontend", action="store_true", help="also fine-tune the front end")


def settings_from_args(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> FinetuneSettings:
    """The settings the flags give (skipped fields keep their defaults); errors name the field."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneSettings)
              if f.name not in skip and f.name not in BOOLEAN}
    try:
        return FinetuneSettings(**values, freeze_frontend=not args.train_frontend)
    except (ValueError, TypeError) as err:
        raise EvalError(f"fine-tuning settings: {err}") from None
