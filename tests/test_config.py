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


def test_presentation_mode_and_plot_style(monkeypatch):
    import matplotlib as mpl

    monkeypatch.setenv("COURSE_PRESENT", "1")
    assert config.presentation_mode() is True
    with mpl.rc_context():
        assert config.apply_plot_style() == "presentation"
        assert mpl.rcParams["font.size"] == config.PLOT_STYLE["presentation"]["font.size"]
        assert mpl.rcParams["font.size"] > config.PLOT_STYLE["normal"]["font.size"]
        assert mpl.rcParams["figure.dpi"] > config.PLOT_STYLE["normal"]["figure.dpi"]
    monkeypatch.setenv("COURSE_PRESENT", "0")
    with mpl.rc_context():
        assert config.apply_plot_style() == "normal"
        assert mpl.rcParams["font.size"] == config.PLOT_STYLE["normal"]["font.size"]
    monkeypatch.setenv("COURSE_PRESENT", "maybe")
    with pytest.raises(ValueError, match="COURSE_PRESENT"):
        config.presentation_mode()


def test_checkpoint_path_only_in_presentation_mode_or_when_asked(monkeypatch):
    for var in ("COURSE_PRESENT", "COURSE_CHECKPOINTS", "COURSE_FAST"):
        monkeypatch.delenv(var, raising=False)
    assert config.checkpoint_path("week12_conv_vae") is None
    monkeypatch.setenv("COURSE_PRESENT", "1")
    assert config.checkpoint_path("week12_conv_vae") == config.REPO_ROOT / "checkpoints" / "week12_conv_vae-full.pt"
    monkeypatch.setenv("COURSE_FAST", "1")
    assert config.checkpoint_path("m").name == "m-fast.pt"
    monkeypatch.delenv("COURSE_PRESENT")
    monkeypatch.setenv("COURSE_CHECKPOINTS", "yes")
    assert config.checkpoint_path("m").name == "m-fast.pt"
    with pytest.raises(ValueError, match="plain file name"):
        config.checkpoint_path("../evil")


def test_setup_notebook_prints_seed_and_reproduces(monkeypatch, capsys):
    import matplotlib as mpl

    monkeypatch.delenv("COURSE_PRESENT", raising=False)
    with mpl.rc_context():
        g1 = config.setup_notebook(5)
        a = torch.rand(4), torch.rand(4, generator=g1)
        g2 = config.setup_notebook(5)
        b = torch.rand(4), torch.rand(4, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert "seed = 5" in capsys.readouterr().out


@pytest.mark.parametrize("value, expected", [("", 0), ("0", 0), ("3", 3), (" 12 ", 12)])
def test_course_seed_reads_course_seed(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_SEED", value)
    assert config.course_seed() == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "one"])
def test_course_seed_rejects_non_integers(monkeypatch, value):
    monkeypatch.setenv("COURSE_SEED", value)
    with pytest.raises(ValueError, match="COURSE_SEED"):
        config.course_seed()


@pytest.mark.parametrize("value, expected", [("", None), ("auto", None), (" AUTO ", None), ("1", 1), ("2", 2),
                                             (" 16 ", 16)])
def test_course_threads_reads_course_threads(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_THREADS", value)
    assert config.course_threads() == expected


def test_course_threads_unset_is_automatic(monkeypatch):
    monkeypatch.delenv("COURSE_THREADS", raising=False)
    assert config.course_threads() is None


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two", "all"])
def test_course_threads_rejects_other_values(monkeypatch, value):
    monkeypatch.setenv("COURSE_THREADS", value)
    with pytest.raises(ValueError, match=r"COURSE_THREADS=.*positive integer.*auto"):
        config.course_threads()


@pytest.fixture
def three_threads():
    """torch at 3 threads for the test (so that 1 and 2 are changes), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_threads_for_auto_uses_one_thread_on_small_matmuls_only(monkeypatch, three_threads):
    monkeypatch.delenv("COURSE_THREADS", raising=False)
    with config.threads_for(100 * 784 * 20) as n:
        assert torch.get_num_threads() == 1 == n
    assert torch.get_num_threads() == 3
    with config.threads_for(config.SMALL_MATMUL - 1):
        assert torch.get_num_threads() == 1
    with config.threads_for(config.SMALL_MATMUL):  # large: torch's setting
        assert torch.get_num_threads() == 3
    monkeypatch.setenv("COURSE_THREADS", "auto")
    with config.threads_for(1000 * 784 * 500):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("work", [10, 2**30])
def test_threads_for_course_threads_wins_at_any_size(monkeypatch, three_threads, work):
    monkeypatch.setenv("COURSE_THREADS", "2")
    with config.threads_for(work) as n:
        assert torch.get_num_threads() == 2 == n
    assert torch.get_num_threads() == 3


def test_threads_for_restores_after_an_exception(monkeypatch, three_threads):
    monkeypatch.setenv("COURSE_THREADS", "2")
    with pytest.raises(KeyError):
        with config.threads_for(10):
            assert torch.get_num_threads() == 2
            raise KeyError("inside the block")
    assert torch.get_num_threads() == 3
    monkeypatch.delenv("COURSE_THREADS")
    with pytest.raises(KeyError):
        with config.threads_for(10):
            assert torch.get_num_threads() == 1
            raise KeyError("inside the block")
    assert torch.get_num_threads() == 3


def test_threads_for_rejects_bad_settings_before_touching_threads(monkeypatch, three_threads):
    monkeypatch.setenv("COURSE_THREADS", "lots")
    with pytest.raises(ValueError, match="COURSE_THREADS"):
        with config.threads_for(10):
            pass
    monkeypatch.delenv("COURSE_THREADS")
    for bad in (-1, "10", True, float("nan")):
        with pytest.raises(ValueError, match="work"):
            with config.threads_for(bad):
                pass
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("value, expected", [("", True), ("1", True), ("on", True), ("0", False), ("no", False)])
def test_onednn_enabled_reads_course_onednn(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_ONEDNN", value)
    assert config.onednn_enabled() is expected


def test_onednn_enabled_typo_is_an_error_that_says_unset_means_on(monkeypatch):
    monkeypatch.setenv("COURSE_ONEDNN", "maybe")
    with pytest.raises(ValueError, match=r"COURSE_ONEDNN='maybe'.*1/true/yes/on \(or unset it\) to turn"):
        config.onednn_enabled()


def test_setup_notebook_prints_threads_and_dense_kernel(monkeypatch, capsys):
    import matplotlib as mpl

    from helpers import _linear

    monkeypatch.delenv("COURSE_PRESENT", raising=False)
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    monkeypatch.setenv("COURSE_THREADS", "2")
    monkeypatch.setenv("COURSE_ONEDNN", "0")
    with mpl.rc_context():
        config.setup_notebook(0)
    out = capsys.readouterr().out
    assert "threads: 2 (COURSE_THREADS)" in out and "dense kernel: torch.addmm" in out
    monkeypatch.setenv("COURSE_THREADS", "auto")
    monkeypatch.delenv("COURSE_ONEDNN")
    with mpl.rc_context():
        config.setup_notebook(0)
    out = capsys.readouterr().out
    assert "threads: auto (1 for matmuls under 2**23 multiply-adds" in out
    assert f"dense kernel: {_linear.kernel_name()}" in out
