"""The embedded demo corpus: espeak-ng + sox speech from seeded sentences, and noise.

The library behind tools/synth_corpus.py (its docstring describes the corpus). Speech: 16
speakers (voice variant x pitch x speed), splits by speaker (12 train, 2 validation, 2 test),
English and tone-numbered pinyin Mandarin; noise: white, pink and brown, 4-8 s each. Both
are packed with wavlm_ds.data.shards, so every shard has its index and sample index.
"""
from __future__ import annotations

import random
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavlm_ds.data.audio import encode_flac
from wavlm_ds.data.shards import make_shards

EN_SUBJECTS = ["the old man", "a young girl", "my neighbour", "the teacher", "our captain",
               "the small dog", "a tired farmer", "the doctor", "his sister", "the driver"]
EN_VERBS = ["carried", "painted", "found", "watched", "sold", "opened", "cleaned", "followed",
            "counted", "remembered"]
EN_OBJECTS = ["a green box", "the heavy door", "seven apples", "the broken window",
              "a long letter", "the red boat", "three bright lamps", "the quiet garden"]
EN_TAILS = ["", "yesterday", "before dinner", "in the rain", "very slowly", "near the river",
            "after the long winter", "without saying a word"]
ZH_SUBJECTS = ["wo3 de5 peng2 you3", "lao3 shi1", "ta1 men5", "xiao3 hai2 zi5", "ba4 ba5",
               "zhe4 ge4 ren2", "wo3 men5"]
ZH_VERBS = ["xi3 huan1", "kan4 jian4 le5", "mai3 le5", "xiang3 chi1", "zhao3 dao4 le5", "hua4 le5"]
ZH_OBJECTS = ["yi4 ben3 shu1", "hong2 se4 de5 hua1", "xin1 de5 che1", "san1 ge4 ping2 guo3",
              "yi4 bei1 cha2", "da4 shan1"]
ZH_TAILS = ["", "jin1 tian1", "zai4 jia1 li3", "hen3 kuai4", "zuo2 tian1 wan3 shang5"]

# (speaker id, espeak voice, pitch 0-99, speed wpm); 12 train, 2 validation, 2 test.
SPEAKERS = [(f"spk{i:02d}", voice, pitch, speed) for i, (voice, pitch, speed) in enumerate([
    ("en-us", 50, 160), ("en-us+f3", 65, 150), ("en-gb", 40, 170), ("en-gb+m3", 35, 140),
    ("cmn-latn-pinyin", 50, 150), ("cmn-latn-pinyin+f2", 70, 140), ("en-us+m7", 30, 175),
    ("en-gb+f4", 75, 155), ("cmn-latn-pinyin+m2", 40, 165), ("en-us+f5", 60, 135),
    ("cmn-latn-pinyin+f4", 80, 155), ("en-gb-scotland", 45, 160),
    ("en-us+m3", 42, 150), ("cmn-latn-pinyin+f3", 68, 150),
    ("en-gb+f2", 62, 165), ("cmn-latn-pinyin+m3", 38, 145)])]
SPLITS = {"train": SPEAKERS[:12], "validation": SPEAKERS[12:14], "test": SPEAKERS[14:]}


def sentence(rng: random.Random, chinese: bool) -> str:
    if chinese:
        parts = [rng.choice(ZH_SUBJECTS), rng.choice(ZH_VERBS), rng.choice(ZH_OBJECTS),
                 rng.choice(ZH_TAILS)]
    else:
        parts = [rng.choice(EN_SUBJECTS), rng.choice(EN_VERBS), rng.choice(EN_OBJECTS),
                 rng.choice(EN_TAILS)]
    return " ".join(p for p in parts if p)


def synthesize(job: dict, workdir: Path) -> dict:
    raw, wav = workdir / f"{job['id']}.raw.wav", workdir / f"{job['id']}.wav"
    subprocess.run(["espeak-ng", "-v", job["voice"], "-p", str(job["pitch"]), "-s",
                    str(job["speed"]), "-w", str(raw), job["transcript"]], check=True)
    subprocess.run(["sox", "-R", str(raw), str(wav), "norm", "-3"], check=True)
    ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", job["voice"], job["transcript"]],
                         check=True, capture_output=True, text=True).stdout
    return {"path": str(wav), "rel": f"{job['split']}/{job['id']}", "transcript": job["transcript"],
            "phonemes": " ".join(ipa.split()), "speaker": job["speaker"], "language": job["language"],
            "extra": {"synth": {"voice": job["voice"], "pitch": job["pitch"], "speed": job["speed"]}}}


def plan(utterances: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    jobs = []
    for i in range(utterances):
        split = "train" if i % 8 < 6 else ("validation" if i % 8 == 6 else "test")
        speaker, voice, pitch, speed = rng.choice(SPLITS[split])
        chinese = voice.startswith("cmn")
        jobs.append({"id": f"utt{i:05d}", "split": split, "speaker": speaker, "voice": voice,
                     "pitch": pitch, "speed": speed, "language": "cmn" if chinese else "en",
                     "transcript": sentence(rng, chinese)})
    return jobs


def noise_corpus(out: Path, count: int, seed: int) -> None:
    """White, pink and brown noise (4-8 s each), FLAC, packed like speech."""
    rng = np.random.default_rng(seed)
    entries = []
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        n = int(rng.uniform(4, 8) * 16000)
        white = rng.standard_normal(n)
        spectrum = np.fft.rfft(white) / np.maximum(np.arange(n // 2 + 1), 1) ** (0.5 * (i % 3))
        wav = np.fft.irfft(spectrum, n)
        path = out / f"noise{i:03d}.flac"
        path.write_bytes(encode_flac((0.3 * wav / np.abs(wav).max()).astype(np.float32)))
        entries.append({"path": str(path), "rel": f"noise/{path.stem}", "extra": {"color": ["white", "pink", "brown"][i % 3]}})
    make_shards(entries, out, prefix="noise", max_samples=8)
    for e in entries:
        Path(e["path"]).unlink()


def synth_corpus(out: Path, utterances: int = 400, noise: int = 0, workers: int = 2,
                 seed: int = 1234, samples_per_shard: int = 20) -> dict[str, dict]:
    """Write out/{train,validation,test}/ (and out/noise/ with `noise` > 0); the packing
    report of each speech split."""
    jobs = plan(utterances, seed)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        entries = list(tqdm(pool.map(lambda j: synthesize(j, Path(tmp)), jobs),
                            total=len(jobs), desc="espeak-ng", unit="utt"))
        summary = {}
        for split in SPLITS:
            chosen = [e for e, j in zip(entries, jobs) if j["split"] == split]
            summary[split] = make_shards(chosen, out / split, prefix=split,
                                         max_samples=samples_per_shard)
    if noise:
        noise_corpus(out / "noise", noise, seed)
    return summary
