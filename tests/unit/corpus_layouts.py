"""Tiny corpora in the real directory layouts of LibriSpeech, Common Voice, VoxPopuli and
AISHELL, spoken by espeak-ng, for the lhotse recipe tests.

Each builder writes the corpus under `root` and returns the samples make_shards must
produce: {supervision id: {transcript, speaker, language, duration_s}}, in lhotse's own
normalization of each corpus (AISHELL: upper case, spaces removed; the others as written).
"""
from __future__ import annotations

import csv
import gzip
import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from wavlm_ds.data.audio import to_mono_16k

EN = ["the old man carried a green box", "a young girl opened the heavy door",
      "my neighbour sold seven apples", "the teacher watched the red boat",
      "our captain found a long letter", "the small dog followed the driver"]
ZH = ["我们喜欢这本书", "老师看见了红色的花", "他们买了新的车", "小孩子想吃三个苹果",
      "爸爸找到了一杯茶", "这个人画了大山"]
SPLITS = ("train", "dev", "test")


def speak(text: str, voice: str, speed: int, rate: int) -> np.ndarray:
    """espeak-ng -> float32 mono at `rate` (resampled from its 22.05 kHz)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    samples, sr = sf.read(io.BytesIO(wav), dtype="float32")
    if rate == sr:
        return samples
    import torch
    import torchaudio
    return torchaudio.functional.resample(torch.from_numpy(samples), sr, rate).numpy()


def duration_16k(samples: np.ndarray, rate: int) -> float:
    """The duration make_shards will report after resampling to 16 kHz."""
    return len(to_mono_16k(samples.astype(np.float32), rate)) / 16000


def librispeech(root: Path) -> dict[str, dict]:
    """<part>/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac + SPEAKER-CHAPTER.trans.txt."""
    expected = {}
    for i, part in enumerate(("train-clean-100", "dev-clean", "test-clean")):
        speaker, chapter = str(100 + i), str(2000 + i)
        folder = root / part / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for j in range(2):
            text = EN[2 * i + j].upper()
            utt = f"{speaker}-{chapter}-{j:04d}"
            wav = speak(text, "en-us", 150 + 20 * j, 16000)
            sf.write(folder / f"{utt}.flac", wav, 16000)
            lines.append(f"{utt} {text}")
            expected[utt] = {"transcript": text, "speaker": speaker, "language": "English",
                             "duration_s": duration_16k(wav, 16000)}
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return expected


CV_HEADER = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes",
             "down_votes", "age", "gender", "accents", "variant", "locale", "segment"]


def commonvoice(root: Path, lang: str = "en") -> dict[str, dict]:
    """<lang>/clips/*.mp3 (48 kHz, as released) + <lang>/{train,dev,test}.tsv."""
    clips = root / lang / "clips"
    clips.mkdir(parents=True)
    expected = {}
    for i, split in enumerate(SPLITS):
        rows = []
        for j in range(2):
            name, client = f"common_voice_{lang}_{1000 + 2 * i + j}", f"client{i}{j % 2}"
            wav = speak(EN[2 * i + j], "en-gb", 140 + 25 * j, 48000)
            sf.write(clips / f"{name}.mp3", wav, 48000, format="MP3")
            rows.append([client, f"{name}.mp3", str(i), EN[2 * i + j], "", "2", "0",
                         "twenties", "female_feminine", "", "", lang, ""])
            expected[name] = {"transcript": EN[2 * i + j], "speaker": client, "language": lang,
                              "duration_s": duration_16k(wav, 48000)}
        write_tsv(root / lang / f"{split}.tsv", CV_HEADER, rows)
    return expected


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


VOX_HEADER = ["id", "raw_text", "normalized_text", "speaker_id", "split", "gender",
              "is_gold_transcript", "accent", "session_id", "start_time", "end_time",
              "original_text", "normed_text"]


def voxpopuli(root: Path, lang: str = "en") -> dict[str, dict]:
    """raw_audios/<lang>/<year>/<session>_original.ogg, one session per split holding two
    segments (a recording with several supervisions), + asr_<lang>.tsv.gz in root."""
    expected, rows = {}, []
    for i, split in enumerate(SPLITS):
        session = f"2019010{i + 1}-0900-PLENARY-{i + 3}"
        gap = np.zeros(8000, np.float32)
        pieces = [speak(EN[2 * i + j], "en-us+m3", 150 + 20 * j, 16000) for j in range(2)]
        audio = np.concatenate([gap, pieces[0], gap, pieces[1], gap])
        folder = root / "raw_audios" / lang / "2019"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{session}_original.ogg", audio, 16000, format="OGG", subtype="VORBIS")
        start = 0.5
        for j, piece in enumerate(pieces):
            end = start + len(piece) / 16000
            speaker = f"{1000 + i * 10 + j}"
            rows.append([f"{session}_{j}", EN[2 * i + j], EN[2 * i + j], speaker, split, "male",
                         "True", "None", session, f"{start:.3f}", f"{end:.3f}", EN[2 * i + j],
                         EN[2 * i + j]])
            expected[f"{session}-{j + 1}"] = {"transcript": EN[2 * i + j], "speaker": speaker,
                                              "language": lang,
                                              "duration_s": round(end - start, 3)}
            start = end + 0.5
    with gzip.open(root / f"asr_{lang}.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("|".join(VOX_HEADER) + "\n")
        f.writelines("|".join(r) + "\n" for r in rows)
    return expected


def aishell(root: Path) -> dict[str, dict]:
    """data_aishell/transcript/aishell_transcript_v0.8.txt + data_aishell/wav/SPLIT/SPK/*.wav."""
    expected, lines = {}, []
    for i, split in enumerate(SPLITS):
        speaker = f"S{700 + i:04d}"
        folder = root / "data_aishell" / "wav" / split / speaker
        folder.mkdir(parents=True)
        for j in range(2):
            utt = f"BAC009{speaker}W{j + 121:04d}"
            text = ZH[2 * i + j]
            wav = speak(text, "cmn", 150 + 20 * j, 16000)
            sf.write(folder / f"{utt}.wav", wav, 16000, subtype="PCM_16")
            lines.append(f"{utt} {' '.join(text)}")  # AISHELL separates words by spaces
            expected[utt] = {"transcript": text, "speaker": speaker, "language": "Chinese",
                             "duration_s": duration_16k(wav, 16000)}
    transcript = root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected


BUILDERS = {"librispeech": librispeech, "commonvoice": commonvoice, "voxpopuli": voxpopuli,
            "aishell": aishell}
