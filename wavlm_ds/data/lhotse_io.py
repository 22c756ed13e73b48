"""lhotse manifests and corpus recipes -> the entries `tools/make_shards.py` packs.

An entry is a dict {path, rel, transcript?, speaker?, language?, span?, extra?, error?}:
`path` the audio file, `rel` a stable name (the key is derived from it), `span` the
supervision's [start_s, end_s] inside the recording (absent: the whole recording, split at
silences as in directory mode), `error` a reason to skip it (counted in the report).

Manifests: a RecordingSet and a SupervisionSet (`.jsonl.gz` or `.jsonl`, as lhotse writes
them), or a CutSet (decomposed into the two). A recording with several supervisions becomes
several samples, one per supervision, cut at its span; recordings without a supervision are
kept whole (unsupervised audio). Multi-channel recordings are downmixed like any file.

Recipes: `prepare(name, corpus_root, manifest_dir)` checks the corpus's directory layout
first (so a wrong root gives an error naming the expected layout, not an AssertionError deep
inside lhotse), then runs lhotse's `prepare_*` and returns entries per split. lhotse is
imported only here, and only when a manifest or recipe is used.
"""
from __future__ import annotations

import gzip
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

SPLITS = ("train", "dev", "test")
VOXPOPULI_TSV_URL = "https://dl.fbaipublicfiles.com/voxpopuli/annotations/asr/asr_{lang}.tsv.gz"
CV_COLUMNS = ("client_id", "path", "sentence", "age", "gender", "accents", "variant")


class CorpusError(ValueError):
    """A corpus or manifest that cannot be used as given; the message names file and fix."""


def manifest_kind(path: Path) -> str | None:
    """'recordings' | 'supervisions' | 'cuts' for a lhotse manifest, None for anything else
    (e.g. make_shards' own `path`-per-line JSONL)."""
    name = path.name
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        return None
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first) if first else {}
    except (OSError, EOFError, json.JSONDecodeError) as err:
        raise CorpusError(f"{path}: cannot read as JSONL ({type(err).__name__}: {err})") from None
    if "sources" in row:
        return "recordings"
    if "recording_id" in row and "start" in row:
        return "supervisions"
    if str(row.get("type", "")).endswith("Cut"):
        return "cuts"
    return None


def read_manifests(paths: Iterable[Path]) -> list[dict]:
    """Entries from lhotse manifest files: one RecordingSet (+ an optional SupervisionSet),
    or one CutSet."""
    from lhotse import CutSet, RecordingSet, SupervisionSet
    kinds: dict[str, Path] = {}
    for path in paths:
        kind = manifest_kind(path)
        if kind is None:
            raise CorpusError(f"{path}: not a lhotse RecordingSet, SupervisionSet or CutSet "
                              "manifest (.jsonl or .jsonl.gz)")
        if kind in kinds:
            raise CorpusError(f"{path}: a second {kind} manifest (first: {kinds[kind]}); give "
                              "one RecordingSet and one SupervisionSet, or one CutSet")
        kinds[kind] = path
    if "cuts" in kinds:
        if len(kinds) > 1:
            raise CorpusError(f"{kinds['cuts']}: a CutSet already holds its recordings and "
                              "supervisions; give it alone")
        recordings, supervisions, _ = CutSet.from_file(kinds["cuts"]).decompose()
        return entries_from(recordings, supervisions or [])
    if "recordings" not in kinds:
        raise CorpusError(f"{kinds['supervisions']}: supervisions need their RecordingSet "
                          "(lhotse writes *_recordings_*.jsonl.gz beside it); give both")
    supervisions = SupervisionSet.from_file(kinds["supervisions"]) \
        if "supervisions" in kinds else []
    return entries_from(RecordingSet.from_file(kinds["recordings"]), supervisions)


def source_path(recording) -> tuple[str | None, str | None]:
    """(audio file path, None) or (None, reason) for a lhotse Recording."""
    if len(recording.sources) != 1 or recording.sources[0].type != "file":
        kinds = [s.type for s in recording.sources]
        return None, (f"recording {recording.id}: sources {kinds}; make_shards reads one "
                      "audio file per recording (type 'file')")
    return str(recording.sources[0].source), None


def entries_from(recordings, supervisions) -> list[dict]:
    """One entry per supervision (cut at its span), one per unsupervised recording."""
    by_recording: dict[str, list] = defaultdict(list)
    for sup in supervisions:
        by_recording[sup.recording_id].append(sup)
    entries = []
    for rec in recordings:
        path, error = source_path(rec)
        sups = sorted(by_recording.pop(rec.id, []), key=lambda s: (s.start, s.id))
        base = {"path": path or rec.id, "extra": {"recording_id": rec.id}}
        if error:
            base["error"] = error
        if not sups:
            entries.append({**base, "rel": rec.id})
        for sup in sups:
            entries.append({**base, **supervision_fields(sup), "rel": f"{rec.id}/{sup.id}"})
    for rec_id, sups in sorted(by_recording.items()):  # supervisions without a recording
        for sup in sups:
            entries.append({"path": rec_id, "rel": f"{rec_id}/{sup.id}",
                            "error": f"supervision {sup.id}: recording {rec_id} is not in "
                                     "the RecordingSet; give the matching recordings manifest"})
    return entries


def supervision_fields(sup) -> dict:
    """Transcript, speaker, language and span of a lhotse SupervisionSegment."""
    extra = {"supervision_id": sup.id}
    if sup.gender:
        extra["gender"] = sup.gender
    if sup.custom:
        extra["custom"] = sup.custom
    return {"transcript": sup.text, "speaker": sup.speaker, "language": sup.language,
            "span": [float(sup.start), float(sup.start + sup.duration)], "extra": extra}


def _nonempty_tsv_rows(tsv: Path) -> int:
    with open(tsv, encoding="utf-8") as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)


def check_librispeech(root: Path) -> dict:
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH
    parts = [p for p in (*LIBRISPEECH, *MINI_LIBRISPEECH)
             if any((root / p).glob("*/*/*.trans.txt"))]
    if not parts:
        raise CorpusError(f"{root}: no LibriSpeech part ({', '.join(LIBRISPEECH[:5])}, ...) "
                          "with <part>/SPEAKER/CHAPTER/*.trans.txt + *.flac; give the directory "
                          "that holds the parts (the extracted LibriSpeech/ folder)")
    return {"dataset_parts": parts}


def check_commonvoice(root: Path) -> dict:
    langs = sorted(p.parent.name for p in root.glob("*/clips") if p.is_dir())
    if not langs:
        raise CorpusError(f"{root}: no <lang>/clips/ directory; give the Common Voice release "
                          "folder (cv-corpus-*/) that holds <lang>/clips/*.mp3 and "
                          "<lang>/{train,dev,test}.tsv")
    splits = []
    for lang in langs:
        for split in SPLITS:
            tsv = root / lang / f"{split}.tsv"
            if not tsv.is_file():
                raise CorpusError(f"{tsv}: missing; Common Voice's recipe reads "
                                  f"{lang}/{{train,dev,test}}.tsv from the release")
            header = tsv.read_text(encoding="utf-8").split("\n", 1)[0].split("\t")
            missing = [c for c in CV_COLUMNS if c not in header]
            if missing:
                raise CorpusError(f"{tsv}: columns {missing} missing (has {header}); use the "
                                  "release's own TSV files (lhotse needs " + ", ".join(CV_COLUMNS) + ")")
            if _nonempty_tsv_rows(tsv) and split not in splits:
                splits.append(split)
    if not splits:
        raise CorpusError(f"{root}: every train/dev/test.tsv is empty")
    return {"languages": langs, "splits": splits}


def check_voxpopuli(root: Path, manifest_dir: Path, lang: str) -> dict:
    audio = root / "raw_audios" / lang
    if not any(audio.rglob("*.ogg")):
        raise CorpusError(f"{audio}: no .ogg files; VoxPopuli's layout is "
                          f"raw_audios/{lang}/<year>/<session>_original.ogg (or choose the "
                          "language with --language)")
    tsv_name = f"asr_{lang}.tsv.gz"
    placed = next((p for p in (manifest_dir / tsv_name, root / tsv_name) if p.is_file()), None)
    if placed is None:  # lhotse would download it: nothing here fetches at run time
        raise CorpusError(f"{root / tsv_name}: missing; download "
                          f"{VOXPOPULI_TSV_URL.format(lang=lang)} and place it there")
    manifest_dir.mkdir(parents=True, exist_ok=True)
    if placed != manifest_dir / tsv_name:
        shutil.copyfile(placed, manifest_dir / tsv_name)
    with gzip.open(placed, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("|")
        splits = {line.split("|")[header.index("split")] for line in f if line.strip()} \
            if "split" in header else set()
    empty = [s for s in SPLITS if s not in splits]
    if empty:  # lhotse's validation asserts on an empty split
        raise CorpusError(f"{placed}: no rows for split(s) {empty} (columns {header}); "
                          "use the released annotation file")
    return {"lang": lang}


def check_aishell(root: Path) -> dict:
    transcript = root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    if not transcript.is_file():
        raise CorpusError(f"{transcript}: missing; give the folder that holds data_aishell/ "
                          "(transcript/aishell_transcript_v0.8.txt, wav/{train,dev,test}/SPK/*.wav)")
    for split in SPLITS:
        if not any((root / "data_aishell" / "wav" / split).glob("*/*.wav")):
            raise CorpusError(f"{root / 'data_aishell' / 'wav' / split}: no SPK/*.wav files "
                              "(untar the per-speaker archives in data_aishell/wav first)")
    return {}


def _run_recipe(name: str, root: Path, manifest_dir: Path, language: str) -> dict:
    """lhotse's prepare_* for `name` -> {split: {'recordings', 'supervisions'}}."""
    from lhotse import recipes
    if name == "librispeech":
        return recipes.prepare_librispeech(root, output_dir=manifest_dir, **check_librispeech(root))
    if name == "commonvoice":
        nested = recipes.prepare_commonvoice(root, manifest_dir, **check_commonvoice(root))
        return {f"{lang}-{split}": m for lang, parts in nested.items() for split, m in parts.items()}
    if name == "voxpopuli":
        return recipes.prepare_voxpopuli(root, manifest_dir, task="asr",
                                         **check_voxpopuli(root, manifest_dir, language))
    if name == "aishell":
        check_aishell(root)
        return recipes.prepare_aishell(root, manifest_dir)
    raise CorpusError(f"--recipe {name}: unknown; use one of {', '.join(RECIPES)}")


RECIPES = ("librispeech", "commonvoice", "voxpopuli", "aishell", "none")


def prepare(name: str, root: Path, manifest_dir: Path, language: str = "en",
            progress: Callable[[str], None] = print) -> dict[str, list[dict]]:
    """Run recipe `name` on `root`; lhotse's manifests go to `manifest_dir`.
    Returns {split: entries}, splits in sorted order."""
    from lhotse.audio.utils import AudioLoadingError
    if not root.is_dir():
        raise CorpusError(f"{root}: not a directory (the corpus root for --recipe {name})")
    root = root.resolve()  # lhotse stores paths as given; shards must not depend on cwd
    progress(f"lhotse prepare_{name}: {root} -> manifests in {manifest_dir}")
    try:
        manifests = _run_recipe(name, root, manifest_dir, language)
    except AssertionError as err:  # lhotse validates with bare asserts
        raise CorpusError(f"{root}: lhotse's {name} recipe refused the corpus ({err}); check "
                          "the layout described in `make_shards.py --help`") from None
    except AudioLoadingError as err:  # names the file; the rest is per-backend detail
        raise CorpusError(f"{root}: {str(err).splitlines()[0].rstrip(' .')}: remove or "
                          "replace that file (or drop its row from the split's list), then "
                          "rerun") from None
    return {split: entries_from(m["recordings"], m["supervisions"])
            for split, m in sorted(manifests.items())}
