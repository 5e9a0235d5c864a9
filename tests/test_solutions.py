"""The reference solutions in solutions/ cover every self-check of the course notebooks.

Each course notebook with self-check cells (``helpers.selfcheck``) has a solution
notebook of the same name under ``solutions/weekNN/``, which asserts every one of
those checks on its own answers (``assert selfcheck.name(...)``), so nbval fails
the build when a solution is wrong or a helper it uses changes. The solutions are
executed by nbval like the course notebooks (``testpaths`` in pyproject.toml).
"""
import re
from pathlib import Path

import nbformat
import pytest

from helpers import selfcheck

ROOT = Path(__file__).resolve().parent.parent
COURSE = sorted((ROOT / "notebooks").glob("week*/*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("week*/*.ipynb"))
CALL = re.compile(r"selfcheck\.(\w+)\(")


def checks_called(path, asserted=False):
    nb = nbformat.read(path, as_version=4)
    pattern = re.compile(r"assert\s+selfcheck\.(\w+)\(") if asserted else CALL
    return {name for c in nb.cells if c.cell_type == "code" for name in pattern.findall(c.source)}


def test_every_check_is_used_by_a_notebook():
    used = set().union(*(checks_called(p) for p in COURSE))
    public = {n for n in selfcheck.__all__ if n != "SelfCheckError"}
    assert public == used, f"self-checks without a notebook cell: {public - used}; unknown: {used - public}"


@pytest.mark.parametrize("path", [p for p in COURSE if checks_called(p)], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_solution_asserts_every_check_of_its_notebook(path):
    solution = ROOT / "solutions" / path.parent.name / path.name
    assert solution.exists(), f"{path.name} has self-checks but no reference solution at {solution.relative_to(ROOT)}"
    missing = checks_called(path) - checks_called(solution, asserted=True)
    assert not missing, f"{solution.relative_to(ROOT)} does not assert selfcheck.{missing}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_solutions_are_clean_and_match_a_notebook(path):
    assert (ROOT / "notebooks" / path.parent.name / path.name).exists(), f"{path.name}: no course notebook of that name"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# Week")
