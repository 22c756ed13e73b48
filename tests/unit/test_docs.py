"""The docs tell the truth about the tree: relative links resolve, every `make` target,
tool, package path and config key they name exists, and docs/config.md is what the config
dataclasses generate (`make docs-check` runs this file)."""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest

from wavlm_ds.config import RunConfig
from wavlm_ds.config_doc import DEEPSPEED_KEYS, render

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")])
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAKE_RE = re.compile(r"`make ((?:-\S+ )*[a-z][\w-]*(?: [a-z][\w-]*)*)")
PATH_RE = re.compile(r"(?<![\w/.-])((?:tools|wavlm_ds|configs|ds_configs|hostfiles|docs|tests)"
                     r"/[\w./-]*\w)")
SECTIONS = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}
KEY_RE = re.compile(r"\b(" + "|".join(SECTIONS) + r")\.([a-z_]+)\b")
FILE_SUFFIXES = {"safetensors", "json", "jsonl", "yaml", "py", "log", "md", "txt", "png", "pt"}


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def page_ids() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_relative_links_resolve(page):
    for target in LINK_RE.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_named_make_targets_tools_and_paths_exist(page):
    text, targets = page.read_text(), make_targets()
    for words in MAKE_RE.findall(text):
        for word in words.split():
            if not word.startswith("-") and "=" not in word:
                assert word in targets, f"{page.name}: `make {words}`: no target {word!r}"
    for rel in PATH_RE.findall(text):
        if "<" in rel or rel.endswith("_"):  # a placeholder or a glob (tools/bench_*)
            continue
        path = rel.split("::")[0]
        assert (ROOT / path).exists() or (ROOT / path).with_suffix(".py").exists(), \
            f"{page.name}: names {rel}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_named_config_keys_exist(page):
    for section, key in KEY_RE.findall(page.read_text()):
        if key in FILE_SUFFIXES:
            continue
        fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
        assert key in fields, f"{page.name}: names {section}.{key}, not a config key"


def test_config_page_is_generated_from_the_dataclasses():
    assert (ROOT / "docs" / "config.md").read_text() == render(), \
        "docs/config.md is stale: python -m wavlm_ds.config_doc > docs/config.md"


def test_deepspeed_keys_on_the_page_exist_in_the_shipped_configs():
    configs = [json.loads(p.read_text()) for p in (ROOT / "ds_configs").glob("a100x128_*.json")]
    for key, _ in DEEPSPEED_KEYS:
        for cfg in configs:
            node = cfg
            for part in key.split("."):
                node = node[part]


def test_checker_catches_what_it_should(tmp_path):
    assert KEY_RE.findall("set `model.num_layerz=4`") == [("model", "num_layerz")]
    assert MAKE_RE.findall("run `make setup ops` then `make -o setup eval`") == \
        ["setup ops", "-o setup eval"]
    assert PATH_RE.findall("see tools/estimate.py, and wavlm_ds/model/.") == \
        ["tools/estimate.py", "wavlm_ds/model"]
