"""An s3prl upstream for exported encoders (SUPERB's `run_downstream.py -u wavlm_ds_local`).

`UpstreamExpert(ckpt=EXPORT_DIR)` follows s3prl's upstream interface: `forward(wavs)` takes a
list of 1-D 16 kHz float waveforms (any lengths) and returns
{"hidden_states": [L tensors (B, T, D)], "last_hidden_state": (B, T, D)} with the log-Mel
front end inside; the list is the block-stack input, every block's output and the final
LayerNorm's (as the frozen probes of wavlm_ds.eval use). Padded frames are zero.
`get_downsample_rates` is 160 samples per log-Mel hop x frame_stack (= 320, 20 ms).
s3prl's Featurizer cuts each utterance to round(len / 320) frames.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from wavlm_ds.eval.upstream import encoder_upstream
from wavlm_ds.ops.logmel import HOP


class UpstreamExpert(nn.Module):
    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs) -> None:
        """ckpt: an export directory (`-k` of run_downstream.py); model_config is unused
        (the export's config.json describes the model)."""
        super().__init__()
        self.upstream = encoder_upstream(Path(ckpt))
        self.encoder = self.upstream.encoder  # a submodule, so .to() and -f (finetune) see it
        self.encoder.requires_grad_(True)

    def get_downsample_rates(self, key: str) -> int:
        return HOP * self.upstream.stack

    def forward(self, wavs: list[torch.Tensor]) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        audio = pad_sequence([w.float() for w in wavs], batch_first=True)  # (B, S)
        layers, frame_lengths = self.upstream.layers(audio, lengths)  # (L, B, T, D)
        # the block-stack input is not zeroed at padding inside the encoder; zero it here
        valid = torch.arange(layers.shape[2], device=layers.device) < frame_lengths[:, None]
        hidden = list((layers * valid[None, :, :, None]).unbind(0))
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}


def wavlm_ds_local(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """s3prl hub entry: an exported encoder directory on local disk."""
    return UpstreamExpert(ckpt, *args, **kwargs)
