"""Bad input through `engine.prepare_micro` and the model: defined results, never NaN.

A row whose every valid frame is masked, a row shorter than one mask span, an all-silent
row, and a louder interferer (negative SNR). The defined results are documented in
`ops/logmel.normalize_per_segment`, `data/augment.py` and `engine.prepare_micro`.
"""
from __future__ import annotations

import math

import torch

from tests.unit.test_no_leak import run_config, speechlike
from wavlm_ds import engine as E
from wavlm_ds.config import DataConfig
from wavlm_ds.data.augment import mix_utterances
from wavlm_ds.objectives.reconstruction import baseline_loss_sums


def prepare(lengths: list[int], audio: torch.Tensor, mix_prob: float = 1.0, objective="reconstruction"):
    cfg = run_config(objective, mix_prob)
    batch = {"audio": audio, "lengths": torch.tensor(lengths),
             "valid": torch.ones(len(lengths), dtype=torch.bool)}
    mb = E.prepare_micro(batch, cfg, torch.device("cpu"), step=3, micro=0, rank=0)
    torch.manual_seed(0)
    model = E.build_model(cfg).eval()
    with torch.no_grad():
        loss, _ = model(mb.features, mb.targets, mb.frame_lengths, mb.mask)
    return mb, loss


def test_fully_masked_and_shorter_than_a_span_rows_are_defined():
    # 100 samples = 1 frame: round(0.8 x 1) = 1 masked, the whole row; 800 samples = 6
    # frames, shorter than the 10-frame span: one circular span of 5, 1 visible frame
    lengths = [16000, 100, 800]
    mb, loss = prepare(lengths, speechlike(lengths, seed=0))
    assert mb.mask[1, :1].all() and int(mb.mask[2].sum()) == 5
    assert torch.isfinite(mb.features).all() and torch.isfinite(mb.targets).all()
    assert (mb.features[1] == 0).all()  # no visible frame: all 0 (the mask embedding replaces it)
    visible = ~mb.mask[2, :6]
    assert int(visible.sum()) == 1 and (mb.features[2, :6][visible] == 0).all()  # variance 0 -> 0
    assert torch.isfinite(loss)
    base = baseline_loss_sums(mb.targets, mb.mask, mb.frame_lengths, "l1")
    assert all(math.isfinite(float(v)) for v in base.values())


def test_all_silent_row_gets_no_interferer_and_zero_features():
    lengths = [16000, 16000, 12000]
    audio = speechlike(lengths, seed=1)
    audio[1] = 0.0  # digital silence
    mb, loss = prepare(lengths, audio)
    assert (mb.features[1] == 0).all() and (mb.targets[1] == 0).all()
    assert torch.isfinite(mb.features).all() and torch.isfinite(loss)
    # the gain is 0 for a silent primary (SNR undefined), and a silent interferer adds nothing
    cfg = DataConfig(mix_prob=1.0)
    mixed = mix_utterances(audio, torch.tensor(lengths), torch.Generator().manual_seed(0), cfg)
    assert (mixed[1] == 0).all()
    assert torch.isfinite(mixed).all()


def test_fully_masked_row_gets_no_interferer():
    cfg = DataConfig(mix_prob=1.0)
    lengths = torch.tensor([16000, 16000])
    audio = speechlike([16000, 16000], seed=2)
    power = torch.ones_like(audio, dtype=torch.bool)
    power[0] = False  # no sample read by an unmasked frame
    mixed = mix_utterances(audio, lengths, torch.Generator().manual_seed(0), cfg, power_samples=power)
    assert torch.equal(mixed[0], audio[0]) and not torch.equal(mixed[1], audio[1])


def test_louder_interferer_has_the_drawn_snr_over_the_read_samples():
    cfg = DataConfig(mix_prob=1.0, mix_snr_db=(-15.0, -15.0), mix_max_fraction=1.0)
    lengths = torch.tensor([16000, 16000])
    audio = speechlike([16000, 16000], seed=3)
    power = torch.zeros_like(audio, dtype=torch.bool)
    power[:, 2000:9000] = True
    mixed = mix_utterances(audio, lengths, torch.Generator().manual_seed(4), cfg, power_samples=power)
    added = mixed - audio
    for b in range(2):
        crop = added[b] != 0
        p_sig = audio[b][power[b]].square().mean()
        p_crop = added[b][crop].square().mean()  # the gain is set on the crop's own power
        assert abs(10 * math.log10(p_sig / p_crop) + 15.0) < 1e-3
    lengths_list = [16000, 16000]
    mb, loss = prepare(lengths_list, audio)
    assert torch.isfinite(mb.features).all() and torch.isfinite(loss)
