"""Decode every file in a directory the way the pipeline does; print one outcome per file.

Run in its own process by test_fuzz.py, so that a decoder crash (a signal inside
libsndfile) shows up as this process dying instead of taking the test run down."""
import sys
from pathlib import Path

import numpy as np

from wavlm_ds.data.audio import AudioError, check_waveform, decode_audio, to_mono_16k

for path in sorted(Path(sys.argv[1]).iterdir()):
    print(path.name, end=" ", flush=True)  # the last name printed is the culprit of a crash
    try:
        samples, rate = decode_audio(path.read_bytes(), path.name)
        wav = to_mono_16k(samples, rate)
        check_waveform(wav, path.name)
        assert np.isfinite(wav).all()
        print("ok", flush=True)
    except AudioError:
        print("refused", flush=True)
