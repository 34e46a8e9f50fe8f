"""The mutation check's catalog stays applicable: every mutant still finds the code it
breaks, and every test it names exists. Running the mutants is ``make mutants``
(slow, outside CI); this keeps a refactor from silently turning them into no-ops."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mutants import CatalogError, Mutant, load_catalog  # noqa: E402


def test_every_mutant_applies_to_the_current_code(tmp_path: Path) -> None:
    mutants = load_catalog()
    assert len(mutants) >= 30
    for mutant in mutants:
        target = tmp_path / mutant.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / mutant.file).read_text())
        mutant.apply(tmp_path)  # raises CatalogError unless each find occurs once
        assert target.read_text() != (ROOT / mutant.file).read_text(), mutant.id


def test_every_named_test_exists() -> None:
    for mutant in load_catalog():
        assert mutant.tests, mutant.id
        for node in mutant.tests:
            path, _, name = node.partition("::")
            source = (ROOT / path).read_text()
            if name:
                func = re.sub(r"\[.*\]$", "", name.split("::")[-1])
                assert re.search(rf"def {re.escape(func)}\b", source), (mutant.id, node)


def test_a_mutant_whose_code_moved_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
    twice = Mutant(
        id="t", file="m.py", edits=(("x = 1", "x = 2"),), tests=("t",), why="t"
    )
    with pytest.raises(CatalogError, match="occurs 2 times"):
        twice.apply(tmp_path)
    gone = Mutant(id="g", file="m.py", edits=(("y", "z"),), tests=("t",), why="t")
    with pytest.raises(CatalogError, match="occurs 0 times"):
        gone.apply(tmp_path)
