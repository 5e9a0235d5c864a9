"""Committed notebooks are clean and follow the course's shape.

* no outputs and no execution counts (the notebooks are run by nbval and by
  `python -m helpers.course render`, never committed executed);
* the standard kernelspec (python3), so every JupyterLab opens them the same way;
* a title cell: '# Week NN — ...', what it teaches, how long it takes (with a number);
* a setup cell that prints the seed it uses;
* exercises at the end, followed only by their self-check cells (helpers.selfcheck);
* no IPython magics (tests execute code cells as plain Python);
* only public names of helpers, shown whole: no private imports or attributes
  (``_name``), and ``inspect.getsource`` only printed as it is, never sliced
  (course notebooks and the reference solutions).
"""
import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("week*/*.ipynb"))
SOLUTIONS = sorted((Path(__file__).resolve().parent.parent / "solutions").glob("week*/*.ipynb"))
IDS = [f"{p.parent.name}/{p.name}" for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/week*/"


@pytest.fixture(params=NOTEBOOKS, ids=IDS)
def nb(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_no_outputs(nb):
    path, notebook = nb
    dirty = [i for i, c in enumerate(notebook.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} carry outputs or execution counts; clear them "
                       "(JupyterLab: Edit > Clear Outputs of All Cells) before committing")


def test_standard_kernelspec(nb):
    path, notebook = nb
    spec = notebook.metadata.get("kernelspec", {})
    assert spec.get("name") == "python3" and spec.get("language") == "python", f"{path.name}: kernelspec {spec}"


def test_title_cell_says_what_and_how_long(nb):
    path, notebook = nb
    first = notebook.cells[0]
    assert first.cell_type == "markdown", f"{path.name}: the first cell must be the Markdown title cell"
    week = path.parent.name.removeprefix("week")
    assert re.match(rf"# Week {int(week)}\b", first.source), f"{path.name}: title must start with '# Week {int(week)}'"
    assert "What you will learn" in first.source, f"{path.name}: title cell lacks 'What you will learn'"
    how_long = re.search(r"How long it takes\.?\*{0,2}(.*)", first.source, re.S)
    assert how_long, f"{path.name}: title cell lacks 'How long it takes'"
    assert re.search(r"\d+\s*(s\b|sec|second|min)", how_long.group(1)), \
        f"{path.name}: 'How long it takes' gives no measured time"
    for placeholder in ("FAST_TIME", "FULL_TIME", "TODO", "TBD"):
        assert placeholder not in first.source, f"{path.name}: placeholder {placeholder} in the title cell"


def test_prints_its_seed(nb):
    path, notebook = nb
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    assert any(re.search(r"print\(.*seed", src, re.I) or "setup_notebook(" in src for src in code[:3]), \
        f"{path.name}: one of the first code cells must print the seed it uses"


def test_ends_with_exercises(nb):
    # the last section is the exercises; after its heading come only Markdown and self-check cells
    path, notebook = nb
    heads = [i for i, c in enumerate(notebook.cells)
             if c.cell_type == "markdown" and re.search(r"^#+\s*Exercises", c.source, re.M)]
    assert heads, f"{path.name}: no Markdown cell with an 'Exercises' heading"
    after = notebook.cells[heads[-1] + 1:]
    assert not any(c.cell_type == "markdown" and re.search(r"^##?\s", c.source, re.M) for c in after), \
        f"{path.name}: a new section follows the exercises; the exercises must come last"
    stray = [c.source[:60] for c in after if c.cell_type == "code" and "selfcheck." not in c.source]
    assert not stray, f"{path.name}: code cells after the exercises must be self-checks (helpers.selfcheck): {stray}"


def test_no_ipython_magics(nb):
    path, notebook = nb
    magic = [i for i, c in enumerate(notebook.cells)
             if c.cell_type == "code" and re.search(r"^\s*[%!]", c.source, re.M)]
    assert not magic, f"{path.name}: cells {magic} use IPython magics or shell escapes"


def _private_names(source):
    """Private names a code cell uses, and getsource calls that are not printed whole."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers"):
            bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            bad += [node.module] if any(part.startswith("_") for part in node.module.split(".")) else []
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.startswith("helpers") and "._" in a.name]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__"):
            bad.append(f".{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getsource":
            parent = parents.get(node)
            if not (isinstance(parent, ast.Call) and getattr(parent.func, "id", "") == "print"):
                bad.append("getsource(...) used other than print(inspect.getsource(f))")
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS,
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_only_public_names_shown_whole(path):
    notebook = nbformat.read(path, as_version=4)
    bad = {i: _private_names(c.source) for i, c in enumerate(notebook.cells) if c.cell_type == "code"}
    bad = {i: names for i, names in bad.items() if names}
    assert not bad, (f"{path.name}: cells use private names or slice source text {bad}; make the function "
                     "public (with a docstring) and print it whole")


def test_the_private_name_check_can_fail():
    assert _private_names("from helpers.ais import _anneal") == ["helpers.ais._anneal"]
    assert _private_names("import helpers.vae\nhelpers.vae._elbo_terms(m, x)") == ["._elbo_terms"]
    assert _private_names("src = inspect.getsource(f)\nsrc.index('x')")
    assert _private_names("print(inspect.getsource(f).split('x')[2])")
    assert not _private_names("print(inspect.getsource(f))\n"
                              "class A:\n    def __init__(self):\n        super().__init__()")
