"""Audio decoding and encoding with soundfile (libsndfile): never pickle, never webdataset's
decoders. Everything returns float32; failures raise AudioError naming the source."""
from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf
import torch

TARGET_RATE = 16000
MIN_RATE, MAX_RATE, MAX_CHANNELS = 4000, 384000, 16
MAX_SECONDS = 3600  # one member of a shard; training crops to data.max_duration_s anyway
SPAN_TOLERANCE_S = 0.025  # lhotse's own tolerance for a supervision end past the audio


class AudioError(ValueError):
    """A sample that cannot be used; the message names the source and the problem."""


def decode_audio(data: bytes, source: str, span_s: tuple[float, float] | None = None
                 ) -> tuple[np.ndarray, int]:
    """Encoded bytes (FLAC/WAV/OGG/MP3...) -> (samples float32 (N, C), sample_rate).

    span_s = (start, end) in seconds decodes only that part (a supervision of a long
    recording) by seeking; a span outside the recording (beyond SPAN_TOLERANCE_S) is an
    AudioError.
    """
    if not data:
        raise AudioError(f"{source}: empty file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            # A damaged header can claim any rate or length, and soundfile allocates the
            # claimed length up front: refuse implausible headers before reading.
            if not MIN_RATE <= f.samplerate <= MAX_RATE or not 0 < f.channels <= MAX_CHANNELS:
                raise AudioError(f"{source}: implausible header ({f.samplerate} Hz, "
                                 f"{f.channels} channels)")
            start, stop = span_frames(span_s, f.frames, f.samplerate, source)
            if stop - start > MAX_SECONDS * f.samplerate:
                raise AudioError(f"{source}: header claims {f.frames / f.samplerate:.0f} s "
                                 f"(> {MAX_SECONDS} s)")
            if start:
                f.seek(start)
            samples = f.read(stop - start, dtype="float32", always_2d=True)
            rate = f.samplerate
    except AudioError:
        raise
    except Exception as err:  # soundfile raises several types for corrupt input
        raise AudioError(f"{source}: cannot decode ({type(err).__name__}: "
                         f"{decoder_message(err)})") from None
    return samples, int(rate)


def span_frames(span_s: tuple[float, float] | None, frames: int, rate: int,
                source: str) -> tuple[int, int]:
    """(first, end) frame of `span_s` in a recording of `frames` frames at `rate`."""
    if span_s is None:
        return 0, frames
    start_s, end_s = span_s
    length_s = frames / rate
    if start_s < 0 or end_s <= start_s or end_s > length_s + SPAN_TOLERANCE_S:
        raise AudioError(f"{source}: supervision span [{start_s:.3f}, {end_s:.3f}] s lies "
                         f"outside the recording ({length_s:.3f} s); fix or drop that "
                         "supervision in the manifest")
    return round(start_s * rate), min(round(end_s * rate), frames)


def decoder_message(err: Exception) -> str:
    """The decoder's message without run-dependent parts, so reports are reproducible.

    libsndfile errors read "Error opening <_io.BytesIO object at 0x7f...>: Format not
    recognised."; the object's address changes every run. Keep only libsndfile's own text
    (`error_string`) and drop any remaining `<... at 0x...>` repr.
    """
    text = getattr(err, "error_string", None) or str(err)
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", text).strip()


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N, C) or (N,) float32 -> (N',) float32 mono at 16 kHz (mean downmix, torchaudio resample)."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sample_rate != TARGET_RATE:
        import torchaudio
        mono = torchaudio.functional.resample(torch.from_numpy(mono), sample_rate,
                                              TARGET_RATE).numpy()
    return mono


def check_waveform(wav: np.ndarray, source: str) -> None:
    """AudioError for zero-length, non-finite or all-zero (digital silence) audio."""
    if wav.size == 0:
        raise AudioError(f"{source}: zero-length audio")
    if not np.isfinite(wav).all():
        raise AudioError(f"{source}: NaN or inf samples")
    if not np.any(wav):
        raise AudioError(f"{source}: all-zero audio (digital silence)")


def encode_flac(wav: np.ndarray, sample_rate: int = TARGET_RATE) -> bytes:
    """float32 (N,) in [-1, 1] -> 16-bit FLAC bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
