"""Where an encoder keeps what CTC needs: a linear CTC probe on each frozen layer.

The measurement that explains a fine-tuning result: for each layer output of the frozen
encoder (0 = the blocks' input, after the front end and positional conv; 1..L = each
block; L + 1 = the final LayerNorm that fine-tuning's head reads), the project's linear
ASR probe (wavlm_ds.eval.asr.run_asr with a linear downstream, one layer, standardized
with training statistics) is trained on the whole train split for a fixed number of epochs
(no model selection) and scored on the test split. A pretrained encoder whose top layers
score worse than its middle ones hands fine-tuning a head input that has to be re-learnt;
a random-init encoder gives the floor.
"""
from __future__ import annotations

from dataclasses import dataclass

from wavlm_ds.config import RunConfig
from wavlm_ds.eval.asr import run_asr
from wavlm_ds.eval.probe import ProbeSettings
from wavlm_ds.eval.upstream import Features, Upstream, extract
from wavlm_ds.finetune.ctc import FinetuneSettings, finetune_encoder
from wavlm_ds.model import WavLMEncoder


@dataclass(frozen=True)
class LayerProbeSettings:
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-2  # a linear head leaves CTC's all-blank plateau slowly at the probe's 3e-3
    seed: int = 0


def one_layer(features: Features, layer: int) -> Features:
    return Features(features.name, features.keys, [x[layer:layer + 1] for x in features.layers],
                    features.stack, features.logmel_mode, features.hop_s, features.info)


def layer_cer(encoder: WavLMEncoder | None, run_cfg: RunConfig, data, s: LayerProbeSettings
              ) -> list[dict]:
    """[{layer, test_cer, test_wer}] for every layer output of `encoder` (None: a random
    initialization of run_cfg's architecture, seeded from s.seed); `data` is a
    wavlm_ds.finetune.loop.Datasets (its train and test splits are used)."""
    if encoder is None:
        encoder = finetune_encoder(None, run_cfg.model, FinetuneSettings(seed=s.seed))
    encoder = encoder.eval().requires_grad_(False)
    up = Upstream("layers", run_cfg.model.frame_stack, run_cfg.data.logmel_mode, encoder)
    train = extract(up, data.train.keys, data.train.audio, desc="train")
    test = extract(up, data.test.keys, data.test.audio, desc="test")
    probe = ProbeSettings(downstream="linear", epochs=s.epochs, batch_size=s.batch_size,
                          lr=s.lr, seed=s.seed)
    out = []
    for layer in range(train.num_layers):
        res = run_asr(one_layer(train, layer), data.train.texts, one_layer(test, layer),
                      data.test.texts, probe)
        out.append({"layer": layer, "test_cer": res.chars.rate, "test_wer": res.words.rate})
    return out
