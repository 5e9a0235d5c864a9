import random

import numpy as np
import pytest
import torch

from helpers import config


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("", False), ("no", False), ("off", False)])
def test_fast_mode_reads_course_fast(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_FAST", value)
    assert config.fast_mode() is expected
    assert config.pick(fast="small", full="big") == ("small" if expected else "big")


def test_fast_mode_unset_is_full(monkeypatch):
    monkeypatch.delenv("COURSE_FAST", raising=False)
    assert config.fast_mode() is False


def test_fast_mode_typo_is_an_error(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "fsat")
    with pytest.raises(ValueError, match="COURSE_FAST"):
        config.fast_mode()


def test_data_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("COURSE_DATA", raising=False)
    assert config.data_dir() == config.REPO_ROOT / "data"
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    assert config.data_dir() == tmp_path.resolve()


def test_device(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.device().type == expected
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert config.device() == torch.device("cpu")
    assert config.device("cpu") == torch.device("cpu")


def test_seed_everything_reproduces_all_generators():
    def draw():
        gen = config.seed_everything(123)
        return random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=gen)

    first, second = draw(), draw()
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    other = config.seed_everything(124)
    assert not torch.equal(torch.rand(3, generator=other), first[3])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        config.seed_everything(bad)
