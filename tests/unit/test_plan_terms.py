"""The planner's communication, segment and data-rate terms (wavlm_ds/plan_terms.py)."""
from __future__ import annotations

import json

import pytest

from tests.integration.conftest import write_shards
from wavlm_ds.config import SourceConfig
from wavlm_ds.launch import ROOT
from wavlm_ds.plan_terms import Fabric, communication, data_rate, segment_mean, selected_optimizer

ZERO2 = json.loads((ROOT / "ds_configs" / "a100x128_zero2_bf16.json").read_text())
ZERO1 = json.loads((ROOT / "ds_configs" / "a100x128_zero1_bf16.json").read_text())
P = 600_000_000  # S = 1.2 GB of bf16 gradients


def test_optimizer_deepspeed_selects_for_the_recipe():
    assert selected_optimizer(ZERO1, 1) == "BF16_Optimizer"  # bf16 + grad_accum_dtype fp32
    assert selected_optimizer(ZERO2, 2) == "DeepSpeedZeroOptimizer"
    assert selected_optimizer({**ZERO1, "data_types": {}}, 1) == "DeepSpeedZeroOptimizer"
    assert selected_optimizer(ZERO2, 0).startswith("none")


@pytest.mark.parametrize("ds,stage,units", [(ZERO2, 2, 5), (ZERO1, 1, 3)])
def test_units_of_S_per_step(ds, stage, units):
    c = communication(P, ds, stage, 4, 128, 8, Fabric())
    assert c["units_of_S"] == units and c["S_bytes"] == 2 * P


def test_zero2_reduce_scatters_at_200_gbps_hand_computed():
    """The issue's figure: 4 reduce-scatters of 1.2 GB at 200 Gb/s per node ~ 0.19 s
    (S x 15/16 per node for 16 nodes), ~0.02 s on a DGX A100's 8 x 200 Gb/s."""
    slow = communication(P, ZERO2, 2, 4, 128, 8, Fabric(node_gbps=200, overlap=0.0))
    assert slow["gradient_s"] == pytest.approx(4 * 1.2e9 * 15 / 16 / 25e9)  # 0.18 s
    assert slow["exposed_s"] == pytest.approx(5 * 1.2e9 * 15 / 16 / 25e9)
    fast = communication(P, ZERO2, 2, 4, 128, 8, Fabric())
    assert fast["gradient_s"] == pytest.approx(slow["gradient_s"] / 8)
    assert fast["exposed_s"] == pytest.approx(0.5 * fast["gradient_s"] + fast["parameter_s"])


def test_segment_mean_from_sample_indexes(tmp_path):
    index = write_shards(tmp_path / "a", "m", num_shards=2, per_shard=6, seed=1,
                         seconds=(0.5, 4.0))
    durations = [e[4] for p in sorted((tmp_path / "a").glob("*.idx.json"))
                 for e in json.loads(p.read_text())["samples"]]
    kept = [min(d, 3.0) for d in durations if d >= 1.0]
    sources = (SourceConfig("a", str(index)), SourceConfig("b", "/nowhere/x-{0..3}.tar"))
    mean, missing, details = segment_mean(sources, 3.0, 1.0)
    assert mean == pytest.approx(sum(kept) / len(kept)) and missing == ["b"]
    assert details["a"]["dropped_fraction"] == pytest.approx(1 - len(kept) / len(durations))


def test_data_rate_per_node():
    rate = data_rate(2048, 16.0, 0.5, 16, 8, 1000.0)
    assert rate["audio_s_per_s_per_node"] == pytest.approx(2048 * 16 / 0.5 / 16)
    assert rate["cores_per_node"] == pytest.approx(4.096)
