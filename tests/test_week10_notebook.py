"""The week-10 notebook's gradient check is a real check: it passes with the
correct phases and fails when either phase has the wrong sign.

The notebook's code cells up to the cell tagged "gradient-check" run here as
plain Python (fast mode, Agg backend); then the check cell runs three times:
as written, with the negative phase's sign flipped, and with the positive
phase's sign flipped.
"""
import warnings
from pathlib import Path

import matplotlib
import nbformat
import pytest

from helpers.rbm import BernoulliRBM

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "week10" / "energy_models_partition_function.ipynb"
TAG = "gradient-check"


def _code_cells_through(tag):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            cells.append(cell.source)
            if tag in cell.metadata.get("tags", []):
                return cells
    raise AssertionError(f"no code cell tagged {tag!r} in {NOTEBOOK.name}")


@pytest.fixture(scope="module")
def notebook_state():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mp = pytest.MonkeyPatch()
    mp.setenv("COURSE_FAST", "1")
    cells = _code_cells_through(TAG)
    namespace = {"__name__": "__notebook__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # plt.show() under Agg
        for i, source in enumerate(cells[:-1]):
            exec(compile(source, f"<{NOTEBOOK.name} code cell {i}>", "exec"), namespace)
    plt.close("all")
    yield namespace, cells[-1]
    mp.undo()


def _run_check(namespace, source):
    exec(compile(source, f"<{NOTEBOOK.name} gradient-check cell>", "exec"), dict(namespace))


def test_gradient_check_passes_as_written(notebook_state):
    _run_check(*notebook_state)


@pytest.mark.parametrize("phase", ["negative_phase_exact", "positive_phase"])
def test_gradient_check_fails_when_a_phase_has_the_wrong_sign(notebook_state, monkeypatch, phase):
    original = getattr(BernoulliRBM, phase)

    def flipped(self, *args, **kwargs):
        return {k: -v for k, v in original(self, *args, **kwargs).items()}

    monkeypatch.setattr(BernoulliRBM, phase, flipped)
    with pytest.raises(AssertionError):
        _run_check(*notebook_state)
