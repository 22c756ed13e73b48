"""Config loading: unknown keys, wrong types, impossible values, overrides, shipped files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wavlm_ds.config import ConfigError, check_batch_arithmetic, load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_and_preset_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  preset: base\n  dropout: 0.0\n"))
    assert cfg.model.num_layers == 12 and cfg.model.model_dim == 768
    assert cfg.model.dropout == 0.0


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "model:\n  num_layer: 3\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*model.num_layer"):
        load_config(path)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'optimiser'"):
        load_config(write(tmp_path, "optimiser: {}\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'training.seed' must be int"):
        load_config(write(tmp_path, "training:\n  seed: abc\n"))
    with pytest.raises(ConfigError, match=r"'model.num_layers' must be int"):
        load_config(write(tmp_path, "model:\n  num_layers: true\n"))


def test_impossible_values(tmp_path):
    with pytest.raises(ConfigError, match="masking.mask_ratio"):
        load_config(write(tmp_path, "masking:\n  mask_ratio: 1.5\n"))
    with pytest.raises(ConfigError, match="model.model_dim.*num_heads"):
        load_config(write(tmp_path, "model:\n  model_dim: 30\n  num_heads: 4\n"))
    with pytest.raises(ConfigError, match="not one of"):
        load_config(write(tmp_path, "objective:\n  loss: huber\n"))


def test_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(write(tmp_path, "model:\n  preset: huge\n"))


def test_set_overrides(tmp_path):
    cfg = load_config(write(tmp_path, ""), ["training.max_steps=7", "model.preset=large",
                                            "data.mix_snr_db=[-1, 2]"])
    assert cfg.training.max_steps == 7 and cfg.model.num_layers == 24
    assert cfg.data.mix_snr_db == (-1.0, 2.0)
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["training.max_steps"])
    with pytest.raises(ConfigError, match="training.max_stepz"):
        load_config(None, ["training.max_stepz=3"])


def test_sources_list_of_dataclasses(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  sources:\n    - {name: a, shards: x.tar, weight: 2}\n"))
    assert cfg.data.sources[0].weight == 2.0
    with pytest.raises(ConfigError, match="duplicate source names"):
        load_config(write(tmp_path, "data:\n  sources:\n    - {name: a, shards: x}\n"
                                    "    - {name: a, shards: y}\n"))


def test_round_trip_to_dict(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    again = load_config(write(tmp_path, json.dumps(to_dict(cfg))))
    assert again == cfg


def test_batch_arithmetic_errors_name_fix():
    assert check_batch_arithmetic({"train_batch_size": 2048, "train_micro_batch_size_per_gpu": 4,
                                   "gradient_accumulation_steps": 4}, 128) == (2048, 4, 4)
    with pytest.raises(ConfigError, match=r"4 x accumulation 4 x world size 64 = 1024.*2048"):
        check_batch_arithmetic({"train_batch_size": 2048, "train_micro_batch_size_per_gpu": 4,
                                "gradient_accumulation_steps": 4}, 64)
    assert check_batch_arithmetic({"train_batch_size": 32, "gradient_accumulation_steps": 4}, 2) \
        == (32, 4, 4)


def hostfile_slots(path: Path) -> int:
    total = 0
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            host, slots = line.split()
            assert slots.startswith("slots="), f"{path}: bad line {line!r}"
            total += int(slots.split("=")[1])
    return total


SHIPPED = [("configs/wavlm_large_plus.yaml", "ds_configs/a100x128_zero2_bf16.json", "hostfiles/a100x128"),
           ("configs/demo.yaml", "ds_configs/cpu_smoke.json", "hostfiles/localhost")]


@pytest.mark.parametrize("run_yaml,ds_json,hostfile", SHIPPED)
def test_shipped_configs_and_hostfiles(run_yaml, ds_json, hostfile):
    load_config(ROOT / run_yaml)
    ds = json.loads((ROOT / ds_json).read_text())
    world = hostfile_slots(ROOT / hostfile)
    check_batch_arithmetic(ds, world, ds_json)
    sched = ds["scheduler"]["params"]
    assert sched["warmup_type"] == "linear" and sched["warmup_min_ratio"] == 0.0
    assert sched["total_num_steps"] > sched["warmup_num_steps"]


def test_recipe_matches_source_document():
    ds = json.loads((ROOT / "ds_configs/a100x128_zero2_bf16.json").read_text())
    assert hostfile_slots(ROOT / "hostfiles/a100x128") == 128
    assert ds["train_batch_size"] == 2048 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    assert ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 5e-4
    sched = ds["scheduler"]["params"]
    assert sched["warmup_num_steps"] == 10000
    assert abs(sched["cos_min_ratio"] * 5e-4 - 1e-6) < 1e-12
