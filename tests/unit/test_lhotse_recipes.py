"""make_shards --recipe on tiny corpora in each corpus's real layout, lhotse manifests as
input, and the bad-input cases (wrong layout, missing files, spans outside the audio,
undecodable mp3)."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lhotse")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is needed to synthesize the corpora (apt-get install espeak-ng)",
                allow_module_level=True)

from tests.unit import corpus_layouts  # noqa: E402
from tests.unit.test_make_shards import read_samples  # noqa: E402
from wavlm_ds.data.audio import decode_audio  # noqa: E402
from wavlm_ds.data.lhotse_io import CorpusError  # noqa: E402
from wavlm_ds.data.shards import pack  # noqa: E402


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("corpora")
    return {name: (base / name, build(base / name)) for name, build in
            corpus_layouts.BUILDERS.items()}


def shard_samples(out: Path) -> dict[str, tuple[dict, bytes]]:
    """{supervision id: (metadata, flac)} over every split directory under `out`."""
    found = {}
    for index in sorted(out.glob("*/index.json")):
        for meta, flac in read_samples(index.parent).values():
            found[meta["supervision_id"]] = (meta, flac)
    return found


@pytest.mark.parametrize("recipe", sorted(corpus_layouts.BUILDERS))
def test_recipe_keeps_every_label(recipe, corpora, tmp_path):
    root, expected = corpora[recipe]
    out = tmp_path / "shards"
    assert not any(report["skipped"] for _, report in pack(root, out, recipe=recipe))
    samples = shard_samples(out)
    assert set(samples) == set(expected)
    for sup_id, want in expected.items():
        meta, flac = samples[sup_id]
        assert (meta["transcript"], meta["speaker"], meta["language"]) == \
            (want["transcript"], want["speaker"], want["language"]), sup_id
        wav, rate = decode_audio(flac, sup_id)
        assert rate == 16000 and meta["num_samples"] == len(wav)
        assert abs(meta["duration_s"] - want["duration_s"]) <= 0.002, sup_id
    assert len(list(out.glob("*/index.json"))) == 3  # one shard set per split
    assert list((out / "manifests").glob("*supervisions*.jsonl.gz"))


def test_voxpopuli_segments_cut_at_their_spans(corpora, tmp_path):
    """Two supervisions of one session: two samples whose segments are their spans."""
    root, _ = corpora["voxpopuli"]
    pack(root, tmp_path / "o", recipe="voxpopuli")
    rows = [line.split("|") for line in
            gzip.open(root / "asr_en.tsv.gz", "rt").read().splitlines()[1:]]
    spans = {f"{r[8]}-{int(r[0].rsplit('_', 1)[1]) + 1}": (float(r[9]), float(r[10]))
             for r in rows}
    for sup_id, (meta, _) in shard_samples(tmp_path / "o").items():
        assert meta["segment"] == pytest.approx(spans[sup_id], abs=1 / 16000)


def manifests_of(tmp_path: Path, root: Path) -> tuple[Path, Path]:
    """Prepare LibriSpeech manifests; return its train recordings/supervisions files."""
    out = tmp_path / "prep"
    pack(root, out, recipe="librispeech")
    recs = out / "manifests" / "librispeech_recordings_train-clean-100.jsonl.gz"
    return recs, recs.with_name(recs.name.replace("recordings", "supervisions"))


def rewrite(path: Path, edit) -> None:
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    edit(rows)
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_manifest_input_and_bad_entries_are_counted_skips(corpora, tmp_path):
    root, expected = corpora["librispeech"]
    work = tmp_path / "ls"
    shutil.copytree(root, work)
    recs, sups = manifests_of(tmp_path, work)
    (work / "train-clean-100" / "100" / "2000" / "100-2000-0000.flac").unlink()  # missing file

    def beyond_end(rows):  # a supervision outside its recording
        rows[1]["start"], rows[1]["duration"] = 30.0, 2.0

    rewrite(sups, beyond_end)
    out = tmp_path / "out"
    pack(recs, out, supervisions=sups)
    report = json.loads((out / "report.json").read_text())
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert len(reasons) == 2 and report["samples"] == 0
    assert "No such file" in reasons["100-2000-0000/100-2000-0000"]
    assert "100-2000-0000.flac" in reasons["100-2000-0000/100-2000-0000"]
    assert "span [30.000, 32.000] s lies outside" in reasons["100-2000-0001/100-2000-0001"]
    # the recordings alone: unsupervised, packed whole, nothing lost
    pack(recs, tmp_path / "u")
    assert json.loads((tmp_path / "u" / "report.json").read_text())["samples"] == 1


def test_cutset_input(corpora, tmp_path):
    from lhotse import CutSet, RecordingSet, SupervisionSet
    recs, sups = manifests_of(tmp_path, corpora["librispeech"][0])
    cuts = CutSet.from_manifests(RecordingSet.from_file(recs), SupervisionSet.from_file(sups))
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    out = tmp_path / "out"
    pack(tmp_path / "cuts.jsonl.gz", out)
    got = {m["supervision_id"]: m["transcript"] for m, _ in read_samples(out).values()}
    assert got == {k: v["transcript"] for k, v in corpora["librispeech"][1].items()
                   if k.startswith("100-")}


def corpus_error(source: Path, out: Path, recipe: str) -> str:
    with pytest.raises(CorpusError) as err:
        pack(source, out, recipe=recipe)
    return str(err.value)


def test_wrong_layout_is_an_error_naming_the_layout(corpora, tmp_path):
    aishell_root = corpora["aishell"][0]
    hints = {"librispeech": "SPEAKER/CHAPTER/*.trans.txt", "commonvoice": "<lang>/clips",
             "voxpopuli": "raw_audios/en/<year>"}
    for recipe, hint in hints.items():
        err = corpus_error(aishell_root, tmp_path, recipe)
        assert str(aishell_root) in err and hint in err, (recipe, err)
    err = corpus_error(corpora["librispeech"][0], tmp_path, "aishell")
    assert "aishell_transcript_v0.8.txt" in err


def test_voxpopuli_without_annotations_refuses_to_download(corpora, tmp_path):
    work = tmp_path / "vp"
    shutil.copytree(corpora["voxpopuli"][0], work)
    (work / "asr_en.tsv.gz").unlink()
    err = corpus_error(work, tmp_path / "o", "voxpopuli")
    assert "asr_en.tsv.gz: missing" in err and "dl.fbaipublicfiles.com" in err


def test_undecodable_mp3_names_the_clip(corpora, tmp_path):
    work = tmp_path / "cv"
    shutil.copytree(corpora["commonvoice"][0], work)
    bad = work / "en" / "clips" / "common_voice_en_1002.mp3"
    bad.write_bytes(b"\xff\xfb" + bytes(range(256)) * 8)
    err = corpus_error(work, tmp_path / "o", "commonvoice")
    assert "common_voice_en_1002.mp3" in err and "remove or replace" in err


def test_recipe_none_is_directory_mode(corpora, tmp_path):
    """Unlabelled audio (e.g. the conversational Chinese speech): plain directory mode."""
    root = corpora["aishell"][0]
    pack(root, tmp_path / "a", recipe="none")
    pack(root, tmp_path / "b")
    assert (tmp_path / "a" / "index.json").read_text() == (tmp_path / "b" / "index.json").read_text()
    assert json.loads((tmp_path / "a" / "report.json").read_text())["samples"] == 6
