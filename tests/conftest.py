"""Shared fixtures: the MNIST folder, an offline-fallback folder, and a clean warnings/cache state."""
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The folder with the real MNIST test split: $COURSE_DATA or ../shared/data."""
    for cand in (os.environ.get("COURSE_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(cand)
    return None


@pytest.fixture
def shared_data():
    path = shared_data_dir()
    if path is None:
        pytest.skip("no MNIST test split found (set COURSE_DATA or provide ../shared/data)")
    return path


@pytest.fixture
def fallback_data(shared_data, tmp_path):
    """A data folder with only the two MNIST test files (what a user without the training
    files has), copied from the shared folder: the offline fallback split, whatever
    ``../shared/data`` holds."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / "MNIST" / "raw" / name, raw / name)
    return tmp_path


@pytest.fixture(autouse=True)
def _fresh_data_module_state():
    import helpers.data as d

    d._warned.clear()
    d._download_failed.clear()
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's small-tensor tests on one torch thread, restored afterwards: with tiny
    tensors no time goes to OpenMP hand-offs, which dominate (3-10x slower) when the two cores
    of a CI machine are busy with other work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

