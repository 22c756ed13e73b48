"""Typed run configuration: frozen dataclasses loaded from YAML, with `--set` overrides.

A run YAML holds only what differs from the defaults; the model section starts from a
preset function (`wavlm_ds.presets`). Unknown keys, wrong types and impossible values raise
`ConfigError` naming the file, the key and the fix, before any heavy work starts.
DeepSpeed's JSON owns engine settings (batch sizes, optimizer, scheduler, precision); the
cross-field checks between both live in `check_batch_arithmetic`. `ModelConfig` lives in
`wavlm_ds/model/config.py` and `ConfigError` in `wavlm_ds/errors.py`; both import from here
too.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from wavlm_ds.errors import ConfigError, require
from wavlm_ds.model.config import ModelConfig
from wavlm_ds.presets import get_preset


@dataclass(frozen=True)
class SourceConfig:
    """One named corpus: its shards and its share of the training stream."""

    name: str
    shards: str  # brace pattern, comma-free list item, index.json path, or pipe: URL
    weight: float = 1.0

    def __post_init__(self) -> None:
        require(self.weight > 0, f"data.sources[{self.name}].weight",
                 f"{self.weight} must be > 0", "drop the source instead of weighting it 0")


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[SourceConfig, ...] = ()  # named corpora: {name, shards, weight} each
    valid_shards: str = ""  # validation set (split by samples over ranks); empty = no validation
    noise_shards: str = ""  # noise recordings for utterance mixing; empty = mix speech only
    resampled: bool = False  # infinite stream (shards drawn with replacement) instead of epochs
    allow_pipe: bool = False  # `pipe:` URLs run a shell command: off unless asked for
    num_workers: int = 2  # DataLoader workers per rank (tar read + FLAC decode)
    noise_workers: int = 1  # DataLoader workers decoding the noise stream (0: in-process)
    shuffle_buffer: int = 256  # samples held for shuffling per reader
    bucket_batches: int = 8  # batches sorted together by length to keep padding low
    max_duration_s: float = 16.0  # longer samples are randomly cropped to this
    min_duration_s: float = 1.0  # shorter samples are skipped (counted)
    max_member_bytes: int = 64 * 2**20  # a larger tar member is refused (counted)
    max_failed_shards_in_a_row: int = 8  # of one source, each yielding nothing: stop the run
    # htk (torchaudio MelSpectrogram) or kaldi (kaldi.fbank) features
    logmel_mode: Literal["htk", "kaldi"] = "htk"
    mix_prob: float = 0.2  # share of rows that get an interferer (WavLM utterance mixing)
    # SNR range against another utterance of the batch
    mix_snr_db: tuple[float, float] = (-5.0, 5.0)
    noise_snr_db: tuple[float, float] = (-5.0, 20.0)  # SNR range against a noise crop
    mix_max_fraction: float = 0.5  # at most this share of a row is overlapped
    # Frame-rate labels joined by key (e.g. k-means targets): the member name inside the
    # shards, and optionally a directory of sidecar shards with the same file names.
    label_member: str = ""
    # directory of label sidecar shards (same file names); empty = in-shard
    label_sidecar_dir: str = ""

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        require(len(set(names)) == len(names), "data.sources",
                 f"duplicate source names {names}", "give every source its own name")
        require(0 < self.min_duration_s <= self.max_duration_s, "data.min_duration_s",
                 f"need 0 < min_duration_s ({self.min_duration_s}) <= max_duration_s "
                 f"({self.max_duration_s})", "")
        require(0.0 <= self.mix_prob <= 1.0, "data.mix_prob", f"{self.mix_prob} not in [0, 1]", "")
        require(0.0 < self.mix_max_fraction <= 1.0, "data.mix_max_fraction",
                 f"{self.mix_max_fraction} not in (0, 1]", "")
        require(self.num_workers >= 0, "data.num_workers", "must be >= 0", "")
        require(self.noise_workers >= 0, "data.noise_workers", "must be >= 0", "")
        require(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1", "")
        require(self.bucket_batches >= 1, "data.bucket_batches", "must be >= 1", "")
        require(self.max_failed_shards_in_a_row >= 1, "data.max_failed_shards_in_a_row",
                 "must be >= 1", "")


@dataclass(frozen=True)
class MaskingConfig:
    # exact: round(ratio x length) frames in fixed-count spans; fairseq: its semantics
    style: Literal["exact", "fairseq"] = "exact"
    mask_ratio: float = 0.8  # exact: fraction of valid input frames; fairseq: mask_prob
    mask_span_frames: int = 10  # input frames (10 ms each)
    min_masks: int = 2  # fairseq style only

    def __post_init__(self) -> None:
        require(0.0 < self.mask_ratio < 1.0, "masking.mask_ratio",
                 f"{self.mask_ratio} is outside (0, 1)", "the recipe uses 0.8")
        require(self.mask_span_frames >= 1, "masking.mask_span_frames", "must be >= 1", "")


@dataclass(frozen=True)
class ObjectiveConfig:
    # reconstruction: L1/MSE on masked log-Mel; best_rq: random-projection codes; kmeans: labels
    name: Literal["reconstruction", "best_rq", "kmeans"] = "reconstruction"
    loss: Literal["l1", "mse"] = "l1"  # reconstruction
    codebook_size: int = 8192  # best_rq
    codebook_dim: int = 16  # best_rq
    num_codebooks: int = 1  # best_rq: softmax heads
    num_classes: int = 500  # kmeans (labels come from data.label_member)


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 1234  # seeds every generator with (seed, rank, step)
    max_steps: int = 0  # optimizer steps to run; 0 = the scheduler's total_num_steps
    eval_every_steps: int = 100  # validation interval, optimizer steps
    save_every_steps: int = 100  # checkpoint interval, optimizer steps (the most a crash loses)
    keep_last_checkpoints: int = 3  # older complete checkpoints are deleted
    eval_batches: int = 8  # batches per validation pass
    process_group_timeout_s: int = 1800  # collective timeout of the process group
    max_consecutive_skipped_steps: int = 20  # non-finite steps in a row before exit code 3
    # parameter names with these substrings get no weight decay
    no_decay_patterns: tuple[str, ...] = ("bias", "norm", "embedding", "mask_embedding")
    # bf16/fp16 runs: before the first step, compare the encoder module by module against
    # fp32 with the same weights and stop on a wrong kernel (wavlm_ds/numerics.py)
    numerics_check: bool = True

    def __post_init__(self) -> None:
        for name in ("eval_every_steps", "save_every_steps", "keep_last_checkpoints",
                     "process_group_timeout_s", "max_consecutive_skipped_steps"):
            require(getattr(self, name) >= 1, f"training.{name}", "must be >= 1", "")
        require(self.max_steps >= 0, "training.max_steps", "must be >= 0", "")


@dataclass(frozen=True)
class LoggingConfig:
    log_every_steps: int = 1  # metrics interval, optimizer steps
    tensorboard: bool = True  # DeepSpeed's TensorBoard monitor under <run-dir>
    csv: bool = True  # DeepSpeed's CSV monitor under <run-dir>
    progress_bar: bool = True  # rank 0's progress bar on the console
    # Append the keys of the samples each optimizer step consumed to
    # <run-dir>/sample_keys/rank<r>.jsonl (an audit trail of exactly what was trained on).
    log_sample_keys: bool = False


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ---------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks that name the key.


def from_dict(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`; `where` names the source (file) in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix or '<root>'}' must be a mapping, got "
                          f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}'; known keys of "
                          f"'{prefix.rstrip('.') or '<root>'}': {sorted(known)}")
    kwargs = {name: _coerce(hints[name], value, where, f"{prefix}{name}")
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: '{key}' = {value!r} is not one of "
                              f"{list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: '{key}' needs {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(inner[0], value, where, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: '{key}' must be {tp.__name__}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def to_dict(cfg: Any) -> Any:
    """Plain, YAML/JSON-safe dict of a (nested) config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


# ---------------------------------------------------------------------------------------
# YAML files and `--set key.sub=value` overrides.


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.num_layers=4' -> (['model', 'num_layers'], 4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.sub=value, e.g. "
                          "--set training.max_steps=100")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Load a run YAML (only overrides of the defaults), apply `--set` overrides, validate."""
    raw: dict = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; see configs/ for the "
                              "shipped run files") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for text in overrides:
        key, value = parse_override(text)
        _merge(raw, key, value)
    if overrides:
        where += " + --set " + " ".join(overrides)
    model_raw = dict(raw.get("model") or {})
    preset_name = model_raw.get("preset", "debug")
    try:
        preset = get_preset(preset_name)
    except KeyError as err:
        raise ConfigError(f"{where}: 'model.preset': {err.args[0]}") from None
    merged_model = {**to_dict(preset), **model_raw}
    return from_dict(RunConfig, {**raw, "model": merged_model}, where)


# ---------------------------------------------------------------------------------------
# Cross-field checks between the run YAML, the DeepSpeed JSON and the world size.


def check_batch_arithmetic(ds_config: dict, world_size: int, where: str = "deepspeed config"
                           ) -> tuple[int, int, int]:
    """Return (train_batch, micro, accum) after checking micro x accum x world = global.

    DeepSpeed accepts any two of the three and derives the third; we require consistency
    of whatever is given, with the numbers and the fix in the message.
    """
    train = ds_config.get("train_batch_size")
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    accum = ds_config.get("gradient_accumulation_steps")
    if world_size < 1:
        raise ConfigError(f"world size {world_size} must be >= 1")
    given = sum(v is not None for v in (train, micro, accum))
    if given < 2:
        raise ConfigError(f"{where}: set at least two of train_batch_size, "
                          "train_micro_batch_size_per_gpu, gradient_accumulation_steps")
    if train is None:
        train = micro * accum * world_size
    elif micro is None:
        micro, rem = divmod(train, accum * world_size)
        if rem or micro == 0:
            raise ConfigError(f"{where}: train_batch_size {train} is not divisible by "
                              f"gradient_accumulation_steps {accum} x world size {world_size}")
    elif accum is None:
        accum, rem = divmod(train, micro * world_size)
        if rem or accum == 0:
            raise ConfigError(f"{where}: train_batch_size {train} is not divisible by "
                              f"micro batch {micro} x world size {world_size}")
    if micro * accum * world_size != train:
        raise ConfigError(
            f"{where}: micro batch {micro} x accumulation {accum} x world size {world_size} = "
            f"{micro * accum * world_size}, but train_batch_size is {train}; fix: set "
            f"gradient_accumulation_steps to {train / (micro * world_size):g} or change the "
            f"number of GPUs (hostfile slots) to {train / (micro * accum):g}")
    return train, micro, accum
