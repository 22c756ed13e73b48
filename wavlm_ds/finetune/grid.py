"""The label-efficiency grid of `make finetune`: labelled budgets x upstreams x seeds, each
cell one fine-tuning run (wavlm_ds.finetune.loop.run), run in parallel worker processes
with one thread each; plus, per upstream, the frozen-layer measurement of
wavlm_ds.finetune.layers.

A cell's training subset is fold `seed` of budget_subsets (speaker-balanced, nested across
budgets, disjoint across seeds where the pool allows); the pretrained and random-init
cells of one (budget, seed) share subset, seed, settings and test utterances, which is
what the paired comparison needs. Random initialization uses the first upstream's
architecture; every export must have the same one.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from wavlm_ds.eval import EvalError
from wavlm_ds.finetune.ctc import FinetuneSettings
from wavlm_ds.finetune.layers import LayerProbeSettings, layer_cer
from wavlm_ds.finetune.loop import Datasets, load_datasets, run
from wavlm_ds.finetune.subsets import budget_subsets, overlap
from wavlm_ds.pretrained import load_pretrained

RANDOM = "random init"


@dataclass(frozen=True)
class GridSettings:
    """What `make finetune` runs: a step budget (most optimizer steps) per labelled budget."""
    budgets: tuple[int, ...] = (20, 100, 300)  # train utterances (~1, 5, 15 min of the demo corpus)
    max_steps: tuple[int, ...] = (250, 300, 400)  # one per budget; early stopping may end sooner
    seeds: tuple[int, ...] = (0, 1, 2)
    jobs: int = 2  # worker processes, one thread each
    resamples: int = 1000
    subset_seed: int = 0  # the draw of the folds (the same for every upstream and seed)

    def __post_init__(self) -> None:
        if len(self.max_steps) != len(self.budgets):
            raise ValueError(f"max_steps {self.max_steps} needs one step budget per labelled "
                             f"budget {self.budgets}")
        if self.jobs < 1 or not self.seeds:
            raise ValueError("jobs must be >= 1 and seeds non-empty")


@dataclass(frozen=True)
class Cell:
    upstream: str  # a name of `upstreams`, or RANDOM
    export: str  # the weights (for RANDOM: the export whose architecture is used)
    budget: int
    seed: int
    indices: tuple[int, ...]  # the training subset, indices into the train split
    settings: FinetuneSettings

    @property
    def name(self) -> str:
        return cell_name(self.upstream, self.budget, self.seed)


def cell_name(upstream: str, budget: int, seed: int) -> str:
    return f"{upstream.replace(' ', '_')}-{budget}-s{seed}"


@dataclass(frozen=True)
class Specs:
    train: str
    valid: str
    test: str
    units: str = "chars"
    max_seconds: float = 30.0


_DATA: dict[Specs, Datasets] = {}  # per worker process: the splits, read once


def datasets(specs: Specs) -> Datasets:
    if specs not in _DATA:
        _DATA[specs] = load_datasets(specs.train, specs.valid, specs.test, specs.units,
                                     max_seconds=specs.max_seconds)
    return _DATA[specs]


def run_cell(cell: Cell, specs: Specs, resamples: int) -> dict:
    """One fine-tuning run of the grid (in a worker process); the result without examples."""
    data = datasets(specs)
    pretrained, run_cfg = load_pretrained(cell.export)
    sub = dataclasses.replace(data, train=data.train.subset(cell.indices))
    _, result = run(pretrained, run_cfg, sub, cell.settings, resamples, progress=False)
    return {"upstream": cell.upstream, "export": cell.export, "budget": cell.budget,
            "seed": cell.seed, "settings": asdict(cell.settings),
            "train_speakers": len(set(sub.train.speakers)), **result}


def run_layers(name: str, export: str, random_init: bool, s: LayerProbeSettings,
               specs: Specs) -> dict:
    """The frozen-layer measurement of one upstream (in a worker process)."""
    encoder, run_cfg = load_pretrained(export)
    return {"upstream": name, "layers": layer_cer(encoder if not random_init else None,
                                                  run_cfg, datasets(specs), s)}


def check_architectures(upstreams: dict[str, str]) -> None:
    """Random init stands for every upstream only if they share one architecture."""
    models = {name: asdict(load_pretrained(path)[1].model) for name, path in upstreams.items()}
    first = next(iter(models))
    for name, m in models.items():
        diff = sorted(k for k in m if m[k] != models[first][k] and k not in ("dropout", "layerdrop"))
        if diff:
            raise EvalError(f"{upstreams[name]} and {upstreams[first]} differ in model "
                            f"{', '.join(diff)}: random init needs one architecture; compare "
                            "exports of the same preset")


def plan(upstreams: dict[str, str], speakers: Sequence[str], g: GridSettings,
         base: FinetuneSettings) -> tuple[list[Cell], dict]:
    """Every cell (longest first, for the pool) and the subsets' description."""
    subsets = budget_subsets(speakers, g.budgets, len(g.seeds), g.subset_seed)
    arch = next(iter(upstreams.values()))
    cells = []
    for budget, steps in sorted(zip(g.budgets, g.max_steps), key=lambda x: -x[1]):
        for fold, seed in enumerate(g.seeds):
            s = dataclasses.replace(base, steps=steps, seed=seed)
            for name, export in [*upstreams.items(), (RANDOM, arch)]:
                init = "random" if name == RANDOM else "pretrained"
                cells.append(Cell(name, export, budget, seed, tuple(subsets[budget][fold]),
                                  dataclasses.replace(s, init=init)))
    info = {str(b): {"overlap_between_seeds": overlap(v),
                     "speakers": [len({speakers[i] for i in sub}) for sub in v]}
            for b, v in subsets.items()}
    return cells, info


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_grid(cells: list[Cell], layer_jobs: list[tuple], specs: Specs, g: GridSettings,
             on_done: Callable[[str, dict], None]) -> tuple[list[dict], list[dict]]:
    """Run every cell and layer measurement in g.jobs processes; on_done(name, result) as
    each finishes. Returns (cell results in `cells` order, layer results)."""
    ctx = multiprocessing.get_context("spawn")  # no forked OpenMP / torch thread state
    # Workers inherit the environment at spawn; TQDM_DISABLE (read when tqdm is imported)
    # keeps their bars from interleaving with the per-cell lines.
    os.environ["TQDM_DISABLE"], saved = "1", os.environ.get("TQDM_DISABLE")
    try:
        return _run_pool(cells, layer_jobs, specs, g, on_done, ctx)
    finally:
        if saved is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = saved


def _run_pool(cells: list[Cell], layer_jobs: list[tuple], specs: Specs, g: GridSettings,
              on_done: Callable[[str, dict], None], ctx) -> tuple[list[dict], list[dict]]:
    with ProcessPoolExecutor(g.jobs, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(run_cell, c, specs, g.resamples): ("cell", i, c.name)
                   for i, c in enumerate(cells)}
        futures.update({pool.submit(run_layers, *job, specs): ("layers", i, f"layers:{job[0]}")
                        for i, job in enumerate(layer_jobs)})
        out: dict[tuple[str, int], dict] = {}
        for fut in as_completed(futures):
            kind, i, name = futures[fut]
            try:
                out[kind, i] = fut.result()
            except Exception as err:  # a worker's error, re-raised with the cell named
                pool.shutdown(wait=False, cancel_futures=True)
                raise EvalError(f"fine-tuning cell {name} failed: {err}") from err
            on_done(name, out[kind, i])
    return ([out["cell", i] for i in range(len(cells))],
            [out["layers", i] for i in range(len(layer_jobs))])


def grid(upstreams: dict[str, str], specs: Specs, g: GridSettings, base: FinetuneSettings,
         layer_settings: LayerProbeSettings | None, log: Callable[[str], None] = print) -> dict:
    """Plan and run the whole grid; returns {cells, layers, subsets, train_pool, elapsed_s}."""
    t0 = time.time()
    check_architectures(upstreams)
    pool = datasets(specs)
    cells, subsets = plan(upstreams, pool.train.speakers, g, base)
    layer_jobs = [] if layer_settings is None else [
        (name, path, name == RANDOM, layer_settings)
        for name, path in [*upstreams.items(), (RANDOM, next(iter(upstreams.values())))]]
    total, done = len(cells) + len(layer_jobs), [0]
    log(f"[finetune] {len(cells)} cells ({len(g.budgets)} budgets x {len(upstreams) + 1} "
        f"upstreams x {len(g.seeds)} seeds) + {len(layer_jobs)} frozen-layer measurements "
        f"in {g.jobs} processes")

    def progress(name: str, r: dict) -> None:
        done[0] += 1
        what = (f"test WER {100 * r['wer']['value']:.1f} CER {100 * r['cer']['value']:.1f}, "
                f"best valid CER {100 * r['best_valid_cer']:.1f} at step {r['best_step']} of "
                f"{r['steps_run']} run ({r['elapsed_s']:.0f} s)" if "wer" in r else
                "CER by layer " + " ".join(f"{100 * x['test_cer']:.0f}" for x in r["layers"]))
        log(f"[finetune] {done[0]}/{total} {name}: {what}; {time.time() - t0:.0f} s elapsed")

    results, layers = run_grid(cells, layer_jobs, specs, g, progress)
    return {"cells": results, "layers": layers, "subsets": subsets,
            "train_pool": {"utterances": len(pool.train.keys), "minutes": pool.train.minutes,
                           "speakers": len(set(pool.train.speakers))},
            "splits": pool.info, "elapsed_s": time.time() - t0}
