"""The fused Triton log-Mel kernel, run on the CPU by Triton's interpreter (fp32, small
shapes): equal to the gathered reference, including reflection at each row's own end,
rows shorter than half a window, digital silence and other tile sizes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wavlm_ds.launch import ROOT
from wavlm_ds.ops import triton_logmel
from wavlm_ds.ops.logmel import log_mel

pytestmark = pytest.mark.skipif(not triton_logmel.available(), reason="no triton")

CHILD = textwrap.dedent("""
    import json, torch
    from wavlm_ds.ops.logmel import _log_mel_reference, log_mel
    from wavlm_ds.ops.triton_logmel import log_mel_htk_triton
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(4, 4000, generator=g) * 0.1
    audio[1] *= torch.linspace(0, 3, 4000)  # louder towards the end
    audio[2] = 0.0                            # digital silence
    lengths = torch.tensor([4000, 2345, 4000, 150])  # 150 < 200: reflected many times
    T = 1 + 4000 // 160
    ref = _log_mel_reference(audio, lengths, T, "htk")
    fused = log_mel_htk_triton(audio, lengths, T)
    other_tiles = log_mel_htk_triton(audio, lengths, T, block_t=16, block_k=16, block_f=32)
    norm_fused, fl = log_mel(audio, lengths, impl="triton")
    norm_ref, fl_ref = log_mel(audio, lengths, impl="reference")
    print(json.dumps({
        "max_abs": (fused - ref).abs().max().item(),
        "tiles_max_abs": (other_tiles - fused).abs().max().item(),
        "normalized_max_abs": (norm_fused - norm_ref).abs().max().item(),
        "frames_equal": bool(torch.equal(fl, fl_ref)),
        "finite": bool(torch.isfinite(fused).all()),
        "silence": fused[2].unique().tolist()}))
""")


def test_kernel_matches_reference_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["max_abs"] < 1e-3, r  # log power; 1.6e-4 seen (quiet bins, fp32 sums)
    assert r["tiles_max_abs"] < 1e-3, r  # summation order only
    assert r["normalized_max_abs"] < 1e-3, r
    assert r["frames_equal"] and r["finite"]
    assert r["silence"] == [pytest.approx(torch.log(torch.tensor(1e-10)).item())]


def test_triton_impl_is_htk_only():
    with pytest.raises(ValueError, match="htk mode only"):
        log_mel(torch.zeros(1, 800), torch.tensor([800]), mode="kaldi", impl="triton")


def test_auto_stays_on_torch_without_cuda():
    audio, lengths = torch.randn(2, 3200) * 0.1, torch.tensor([3200, 1800])
    auto, _ = log_mel(audio, lengths)  # CPU: never the Triton kernel outside the interpreter
    torch_path, _ = log_mel(audio, lengths, impl="torch")
    assert torch.equal(auto, torch_path)
