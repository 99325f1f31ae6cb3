"""The data the package ships (``feedd/sim/data/``): every file has a source and a licence an MIT
package may ship, and the generated tapes are what ``scripts/sim_data.py`` makes."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

import feedd.sim

DATA = Path(feedd.sim.__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "sim_data.py"
#: the licence column's allowed values
ALLOWED = {"MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "permissive-with-acknowledgment", "generated"}
#: a table row: | `file` `file` | licence | source |
ROW = re.compile(r"^\|\s*((?:`[^`]+`\s*)+)\|\s*([^|]+?)\s*\|", re.MULTILINE)
#: what names a source whose licence an MIT package may not ship: the AGPL, cryptofeed's `v3` branch
#: (its LICENSE is the AGPL-3.0-or-later) and its recordings' commit and format
AGPL_MARKS = re.compile(
    r"AGPL|Affero|GNU General Public|GPL-?[23]|branch `v3`|jsonl\.zst"
    r"|57d5f18d6098f7aa294a3947796cc27d94c3a99c",
    re.IGNORECASE,
)
FOLDERS = sorted(path for path in DATA.iterdir() if path.is_dir())


def licences(folder: Path) -> dict[str, str]:
    """File name -> licence, from the tables of the folder's README."""
    listed: dict[str, str] = {}
    for names, licence in ROW.findall((folder / "README.md").read_text(encoding="utf-8")):
        for name in re.findall(r"`([^`]+)`", names):
            listed[name] = licence
    return listed


def shipped(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if path.is_file() and path.name != "README.md"}


def test_the_data_folders_are_the_three_venues() -> None:
    assert [folder.name for folder in FOLDERS] == ["binance", "bybit", "coinbase", "hyperliquid"]
    assert not [path for path in DATA.iterdir() if path.is_file()]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_every_data_file_is_listed_in_its_readme_with_an_allowed_licence(folder: Path) -> None:
    listed = licences(folder)
    assert shipped(folder) <= set(listed), "files the README does not list"
    assert set(listed) <= shipped(folder), "README rows for files that are not there"
    assert {name: licence for name, licence in listed.items() if licence not in ALLOWED} == {}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_no_data_readme_names_an_agpl_source(folder: Path) -> None:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert AGPL_MARKS.findall(text) == []


def test_a_licence_asking_for_an_acknowledgment_has_it_in_the_docs_and_the_readme() -> None:
    acknowledgment = (
        "This product includes software developed by Bryant Moscon (http://www.bryantmoscon.com/)."
    )
    docs = (ROOT / "docs" / "acknowledgments.md").read_text(encoding="utf-8")
    asking = [folder for folder in FOLDERS if "permissive-with-acknowledgment" in licences(folder).values()]
    assert [folder.name for folder in asking] == ["binance"]  # aggTrade, from cryptofeed master
    assert acknowledgment in docs
    for folder in asking:
        assert acknowledgment in " ".join((folder / "README.md").read_text(encoding="utf-8").split())


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim_data", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_files_are_exactly_the_ones_the_readmes_call_generated() -> None:
    generated = {
        f"{folder.name}/{name}"
        for folder in FOLDERS
        for name, licence in licences(folder).items()
        if licence == "generated"
    }
    assert {f"{venue}/{name}" for venue, name in generator().OUTPUTS} == generated


def test_regenerating_the_tapes_gives_the_committed_bytes() -> None:
    # Reads the MIT hftbacktest recordings of ../shared (test input, never shipped).
    module = generator()
    missing = [source for source in module.source_files() if not source.is_file()]
    if missing:
        reason = f"{missing[0]} is missing: the full recordings come with ../shared beside the clone"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    made = module.generate()
    assert sorted(made) == sorted(f"{venue}/{name}" for venue, name in module.OUTPUTS)
    for name, text in made.items():
        assert (DATA / name).read_bytes() == text.encode("utf-8"), name
