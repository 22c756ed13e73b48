"""Pretrain a WavLM-style encoder with DeepSpeed (masked speech modeling on log-Mel).

usage: deepspeed --hostfile hostfiles/a100x128 train.py \
           --config configs/wavlm_large_plus.yaml \
           --deepspeed_config ds_configs/a100x128_zero2_bf16.json [--set key.sub=value ...] \
           [--run-dir runs/large_plus] [--resume {auto,never,PATH}]

One optimizer step = `gradient_accumulation_steps` micro-batches; DeepSpeed owns the
accumulation. The loss of each micro-batch is its masked-frame sum scaled so that the step's
gradient is the mean over the global count of masked frames (all micro-batches, all ranks).
Exit codes: 0 done, 75 stopped by SIGTERM/SIGUSR1 after saving, 3 too many non-finite steps,
4 a checkpoint could not be saved (e.g. disk full; the previous one is kept), 5 a data source
is unreadable (data.max_failed_shards_in_a_row shards in a row yielded nothing), 6 the bf16
numerics check found a module this device computes wrong (wavlm_ds/numerics.py; the message
names it and the fp32 flag), 2 config error.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wavlm_ds.prebuild_ops import use_prebuilt_ops, warn_if_jit_build

use_prebuilt_ops()  # before DeepSpeed is imported: every node loads the venv's prebuilt ops

import torch  # noqa: E402
import yaml  # noqa: E402

from wavlm_ds import engine as E  # noqa: E402
from wavlm_ds.checkpoint import (CheckpointError, CheckpointManager, agree_on_resume,  # noqa: E402
                                 is_universal, load_universal)
from wavlm_ds.config import (RunConfig, check_batch_arithmetic, load_config, to_dict,  # noqa: E402
                             ConfigError)
from wavlm_ds.data import DataSourceError, EvalLoader, TrainLoader  # noqa: E402
from wavlm_ds.data.index import bytes_hashed  # noqa: E402
from wavlm_ds.data.io import redact_config  # noqa: E402
from wavlm_ds.faults import fault_point  # noqa: E402
from wavlm_ds.metrics import MetricsWriter, device_peak_tflops, mfu  # noqa: E402
from wavlm_ds.numerics import NumericsError, check_for_run  # noqa: E402
from wavlm_ds.objectives.reconstruction import baseline_loss_sums  # noqa: E402

EXIT_PREEMPTED = 75
EXIT_NONFINITE = 3
EXIT_SAVE_FAILED = 4
EXIT_DATA_UNREADABLE = 5
EXIT_NUMERICS = 6
EXIT_REASONS = {0: "done", EXIT_PREEMPTED: "preempted: checkpoint saved",
                EXIT_NONFINITE: "too many consecutive non-finite steps",
                EXIT_SAVE_FAILED: "checkpoint save failed; previous checkpoint kept",
                EXIT_DATA_UNREADABLE: "a data source is unreadable"}
log = logging.getLogger("train")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="run YAML (configs/*.yaml)")
    p.add_argument("--deepspeed_config", required=True, help="DeepSpeed JSON (ds_configs/*.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-YAML key, e.g. --set training.max_steps=100")
    p.add_argument("--run-dir", default=None, help="output directory (default runs/<config name>)")
    p.add_argument("--resume", default="auto", help="auto | never | PATH to a checkpoint")
    p.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def load_ds_config(path: str, run_dir: Path, cfg: RunConfig) -> dict:
    try:
        ds = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--deepspeed_config {path}: no such file; see ds_configs/") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    ds["tensorboard"] = {"enabled": cfg.logging.tensorboard,
                         "output_path": str(run_dir / "tensorboard"), "job_name": "train"}
    ds["csv_monitor"] = {"enabled": cfg.logging.csv, "output_path": str(run_dir / "csv"),
                         "job_name": "train"}
    return ds


def validate(cfg: RunConfig, ds: dict, world: int, where: str) -> tuple[int, int, int]:
    """Cross-field checks before any process group or data is touched:
    (micro batch, accumulation, max_steps)."""
    _, micro, accum = check_batch_arithmetic(ds, world, where)
    total = ds.get("scheduler", {}).get("params", {}).get("total_num_steps")
    max_steps = cfg.training.max_steps or total
    if not max_steps:
        raise ConfigError(f"{where}: no step count: set scheduler.params.total_num_steps in the "
                          "DeepSpeed JSON or training.max_steps in the run YAML")
    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: add at least one {name, shards} entry")
    return micro, accum, max_steps


@dataclass
class Streams:
    """Every data stream of this rank. Built before any process group, so a bad shard spec
    or index is a config error (exit 2), not a crash after minutes of start-up."""
    train: TrainLoader
    valid: EvalLoader | None
    noise: TrainLoader | None

    @classmethod
    def build(cls, cfg: RunConfig, micro: int, rank: int, world: int) -> "Streams":
        d = cfg.data
        valid = EvalLoader(d.valid_shards, micro, rank, world, cfg.training.eval_batches, d) \
            if d.valid_shards else None
        return cls(TrainLoader(d, micro, rank, world, cfg.training.seed), valid,
                   E.noise_loader(cfg, micro, rank, world))

    def state_dict(self) -> dict:
        state = {"data": self.train.state_dict()}
        if self.noise is not None:
            state["noise_data"] = self.noise.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.train.load_state_dict(state["data"])
        if self.noise is not None and "noise_data" in state:
            self.noise.load_state_dict(state["noise_data"])


class StopFlag:
    """SIGTERM/SIGUSR1 set a flag; ranks agree on it at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True


def evaluate(engine, cfg: RunConfig, loader: EvalLoader, rank: int, device) -> dict[str, float]:
    """Validation loss with fixed masks; for reconstruction, next to the zero and
    span-interpolation baselines so that the number means something (and the interpolation
    of the model's own input, see reconstruction.baseline_loss_sums); for discrete targets,
    with the accuracy on masked frames."""
    fault_point("eval", rank)
    engine.eval()
    objective = engine.module.objective
    with_baselines = cfg.objective.name == "reconstruction"
    with_accuracy = not with_baselines  # discrete targets: hits summed over masked frames
    sums = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(6)]
    with torch.no_grad():
        for i, batch in enumerate(loader):
            mb = E.prepare_micro(batch, cfg, device, step=0, micro=i, rank=rank, train=False)
            loss_sum, stats = engine(mb.features, mb.targets, mb.frame_lengths, mb.mask, None,
                                     mb.extras)
            sums[0] += loss_sum.double()
            if with_accuracy:
                sums[4] += stats["accuracy"].double()
            sums[3] += objective.count(mb.mask).double()
            if with_baselines:
                base = baseline_loss_sums(mb.targets, mb.mask, mb.frame_lengths, cfg.objective.loss,
                                          inputs=mb.features)
                sums[1] += base["baseline_zero"].double()
                sums[2] += base["baseline_interp"].double()
                sums[5] += base["baseline_interp_input"].double()
    engine.train()
    total = E.global_sum(sums, device)
    frames = total[3].item()  # masked frames the loss averages over, all ranks
    n = frames or float("nan")  # no frame at all (every sample failed): NaN, never 0
    result = {"loss": total[0].item() / n, "frames": frames}
    if with_accuracy:
        result["accuracy"] = total[4].item() / n
    if with_baselines:
        result.update(baseline_zero=total[1].item() / n, baseline_interp=total[2].item() / n,
                      baseline_interp_input=total[5].item() / n)
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config, args.set)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    ds = load_ds_config(args.deepspeed_config, run_dir, cfg)
    rank, world, local_rank = E.dist_env()
    micro, accum, max_steps = validate(cfg, ds, world, args.deepspeed_config)
    device = E.training_device(local_rank)
    E.check_device_config(cfg, device)
    warn_if_jit_build(device, ds, rank)  # every rank that would compile FusedAdam says so
    cfg, paths = E.resolve_fast_paths(cfg, device)
    log.info("rank %d: attention %s, log-Mel %s, compile %s on %s (fast_paths %s, record %s)",
             rank, paths["attention_impl"], paths["logmel_impl"], paths["compile"],
             paths["device"], paths["fast_paths"], paths["selftest_record"])
    streams = Streams.build(cfg, micro, rank, world)  # validates shards vs ranks x workers
    # bf16: before any process group; a wrong module raises NumericsError (exit 6)
    paths["numerics_check"] = check_for_run(cfg, ds, micro, device,
                                            lambda line: log.info("rank %d: %s", rank, line))

    E.init_distributed(cfg.training.process_group_timeout_s)
    ckpt_root, resume_tag = agree_on_resume(args.resume, run_dir / "checkpoints", rank)
    universal = resume_tag is not None and is_universal(ckpt_root / resume_tag)
    if universal:
        ds["checkpoint"] = {"load_universal": True}
    torch.manual_seed(E.seed_for(cfg.training.seed, E.DROPOUT, rank))
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(  # URL credentials are never saved
            yaml.safe_dump(redact_config(to_dict(cfg)), sort_keys=False))
        (run_dir / "ds_config.json").write_text(json.dumps(ds, indent=2))
        (run_dir / "summary.json").write_text(json.dumps({"implementations": paths}, indent=2))
    engine = E.build_engine(cfg, ds, rank)
    device = engine.device
    ckpt = CheckpointManager(run_dir / "checkpoints", rank, world,
                             cfg.training.keep_last_checkpoints)
    state = {"step": 0, "consecutive_skips": 0, "skipped_total": 0}
    if universal:
        state = load_universal(engine, ckpt_root / resume_tag)
        streams.load_state_dict(state)
    elif resume_tag is not None:
        state = CheckpointManager(ckpt_root, rank, world, 1).load(engine, resume_tag)
        log.info("resumed from %s: rank %d hashed %d bytes", ckpt_root / resume_tag, rank,
                 bytes_hashed())
        E.set_rng_state(state, device)
        streams.load_state_dict(state)
    try:
        code = run(engine, cfg, streams, ckpt, state, run_dir, accum, max_steps, rank, world,
                   device, paths)
    except CheckpointError as err:  # every rank raises it together (e.g. disk full)
        log.error("%s", err)
        code = EXIT_SAVE_FAILED
    except DataSourceError as err:  # the launcher then stops the other ranks too
        log.error("%s", err)
        code = EXIT_DATA_UNREADABLE
    if rank == 0:  # for requeue scripts: the launcher reports 1 for any signalled run
        status = {"exit_code": code, "reason": EXIT_REASONS[code],
                  "last_checkpoint": ckpt.find_latest_valid(verify=False)}
        (run_dir / "exit_status.json").write_text(json.dumps(status) + "\n")
    return code


def run(engine, cfg: RunConfig, streams: Streams, ckpt: CheckpointManager, state: dict,
        run_dir: Path, accum: int, max_steps: int, rank: int, world: int, device,
        paths: dict) -> int:
    stop = StopFlag()
    writer = MetricsWriter(run_dir, engine.monitor, rank == 0, max_steps, state["step"],
                           cfg.logging.progress_bar)
    writer.write_info(state["step"], "implementations", paths)
    peak = device_peak_tflops(device)
    noise_iter = iter(streams.noise) if streams.noise is not None else None
    data_iter = iter(streams.train)
    key_log = None
    if cfg.logging.log_sample_keys:
        (run_dir / "sample_keys").mkdir(parents=True, exist_ok=True)
        key_log = open(run_dir / "sample_keys" / f"rank{rank}.jsonl", "a")
    exit_code = 0
    try:
        for step in range(state["step"] + 1, max_steps + 1):
            fault_point(f"step{step}", rank)
            t0 = time.perf_counter()
            batches = [next(data_iter) for _ in range(accum)]
            noises = [next(noise_iter) if noise_iter else None for _ in range(accum)]
            lr = engine.get_lr()[0]
            result = E.optimizer_step(engine, cfg, batches, noises, step, rank, world,
                                      stop.requested)
            applied = engine.was_step_applied()
            state["consecutive_skips"] = 0 if applied else state["consecutive_skips"] + 1
            state["skipped_total"] += 0 if applied else 1
            stopping = result.total("stop").item() > 0  # the one host sync of a step
            step_time = time.perf_counter() - t0
            if step % cfg.logging.log_every_steps == 0:
                writer.write(step, step_metrics(engine, cfg, result, step, step_time, lr, peak,
                                                state["skipped_total"], world))
            if key_log is not None:
                keys = [k for b in batches for k, ok in zip(b["keys"], b["valid"].tolist()) if ok]
                key_log.write(json.dumps({"step": step, "epoch": batches[0]["epoch"], "keys": keys}) + "\n")
                key_log.flush()
            if state["consecutive_skips"] >= cfg.training.max_consecutive_skipped_steps:
                log.error("%d consecutive steps with non-finite gradients: aborting",
                          state["consecutive_skips"])
                exit_code = EXIT_NONFINITE
                break
            if streams.valid is not None and (step % cfg.training.eval_every_steps == 0
                                              or step == max_steps):
                writer.write(step, evaluate(engine, cfg, streams.valid, rank, device), prefix="valid")
            if stopping or step % cfg.training.save_every_steps == 0 or step == max_steps:
                save(engine, ckpt, cfg, state, streams, step)
            if stopping:
                log.warning("stop signal: checkpoint saved at step %d, exiting", step)
                exit_code = EXIT_PREEMPTED
                break
    finally:  # DataLoader workers ignore SIGTERM: shut them down before exiting,
        data_iter.close()  # also when a save failed (else exit would wait forever)
        if noise_iter is not None:
            noise_iter.close()
        writer.close()
        if key_log is not None:
            key_log.close()
    return exit_code


def step_metrics(engine, cfg: RunConfig, result, step: int, step_time: float, lr: float,
                 peak: float | None, skipped: int, world: int) -> dict[str, float | None]:
    """What a logging step writes (these host reads happen only on logging steps).

    MFU counts model FLOPs (valid frames, layers that ran); HFU hardware FLOPs (padded, as
    executed); both per device, this rank's step (see wavlm_ds/model/flops.py)."""
    count = max(result.count.item(), 1.0)
    totals = result.totals.tolist()
    model_flops, hardware_flops = E.step_flops(cfg, result, step)
    tflops, htflops = model_flops / step_time / 1e12, hardware_flops / step_time / 1e12
    named = dict(zip(E.TOTALS, totals))
    return {"loss": named["loss"] / count, "lr": lr,
            "masked_fraction": named["masked"] / max(named["frames"], 1.0),
            "grad_norm": _float(engine.get_global_grad_norm()), "skipped_steps": skipped,
            "samples_per_s": named["rows"] / step_time,
            "audio_s_per_s": named["audio_seconds"] / step_time, "step_time_s": step_time,
            "tflops_per_device": tflops, "mfu": mfu(tflops, peak),
            "hardware_tflops_per_device": htflops, "hfu": mfu(htflops, peak),
            **{k: totals[len(E.TOTALS) + i] / count for i, k in enumerate(result.stat_names)}}


def _float(value) -> float | None:
    return None if value is None else float(value)


def save(engine, ckpt: CheckpointManager, cfg: RunConfig, state: dict, streams: Streams,
         step: int) -> None:
    state.update(step=step, **E.rng_state(engine.device), **streams.state_dict())
    ckpt.save(engine, step, trainer_state=dict(state),
              client_state={"step": step, "run_config": redact_config(to_dict(cfg))})


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, CheckpointError) as err:  # before any work: bad config or --resume
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except NumericsError as err:  # before any process group: the launcher stops the others
        print(f"numerics error: {err}", file=sys.stderr)
        sys.exit(EXIT_NUMERICS)
