"""Run-time settings of the course, each read from the environment in one place.

=================  ===================================  ==========================
setting            environment variable                 default
=================  ===================================  ==========================
fast mode          ``COURSE_FAST`` (1/true/yes/on)      off (full classroom mode)
presentation mode  ``COURSE_PRESENT`` (1/true/yes/on)   off (lecturer mode: big fonts, checkpoints)
data folder        ``COURSE_DATA``                      ``<repo>/data`` (git-ignored)
device             ``COURSE_DEVICE`` (cpu, cuda, ...)   CUDA when present, else CPU
notebook seed      ``COURSE_SEED`` (integer >= 0)       0
=================  ===================================  ==========================

Fast mode shrinks epochs, data and chain lengths so that every notebook runs in
CI in seconds; it never skips a cell or a check. Notebooks choose their sizes
with :func:`pick`, e.g. ``n_epochs = pick(fast=2, full=30)``.

Presentation (lecturer) mode makes figures and fonts large enough for a
projector and turns on the checkpoint cache (:func:`checkpoint_path`): the
first run trains and saves the models, every rerun loads them in seconds.
Notebooks start with :func:`setup_notebook`, which seeds, styles and prints
the settings in use.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _flag(name: str, meaning: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not understood; use 1/true/yes/on to turn {meaning} on "
                     "or 0/false/no/off (or unset it) to turn it off.")


def fast_mode() -> bool:
    """True when ``COURSE_FAST`` asks for the small CI-sized runs.

    Raises
    ------
    ValueError
        If ``COURSE_FAST`` holds something other than a yes/no word, so that a
        typo never silently selects the 30-minute classroom run.
    """
    return _flag("COURSE_FAST", "fast mode")


def presentation_mode() -> bool:
    """True when ``COURSE_PRESENT`` asks for lecturer mode (large figures and
    fonts, trained models loaded from the checkpoint cache). Same yes/no words
    as ``COURSE_FAST``; anything else raises ``ValueError``."""
    return _flag("COURSE_PRESENT", "presentation mode")


#: matplotlib settings per mode: readable on a laptop, and from the back row.
PLOT_STYLE = {
    "normal": {"figure.dpi": 100, "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10},
    "presentation": {"figure.dpi": 150, "font.size": 15, "axes.titlesize": 17, "axes.labelsize": 15,
                     "xtick.labelsize": 13, "ytick.labelsize": 13, "legend.fontsize": 13,
                     "lines.linewidth": 2.5, "lines.markersize": 8},
}


def apply_plot_style() -> str:
    """Set matplotlib's rcParams for the current mode; return the mode's name."""
    import matplotlib as mpl

    name = "presentation" if presentation_mode() else "normal"
    mpl.rcParams.update(PLOT_STYLE[name])
    return name


def checkpoint_path(name: str):
    """Where a notebook's trained model is cached, or None when caching is off.

    On in presentation mode or with ``COURSE_CHECKPOINTS=1``: returns
    ``<repo>/checkpoints/<name>-fast.pt`` or ``...-full.pt`` (git-ignored), to pass
    to ``train_vae(checkpoint=...)`` or ``train_rbm(checkpoint=...)``. Off (students'
    default): None, so the notebook trains in front of you.
    """
    if not (presentation_mode() or _flag("COURSE_CHECKPOINTS", "the checkpoint cache")):
        return None
    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"checkpoint name must be a plain file name stem, got {name!r}")
    return REPO_ROOT / "checkpoints" / f"{name}-{'fast' if fast_mode() else 'full'}.pt"


def pick(fast, full):
    """Return ``fast`` in fast mode and ``full`` otherwise (any types)."""
    return fast if fast_mode() else full


def data_dir() -> Path:
    """Folder that holds ``MNIST/raw/...``: ``$COURSE_DATA`` or ``<repo>/data``.

    The folder need not exist (downloads create it); a relative
    ``COURSE_DATA`` is taken relative to the current working directory.
    """
    raw = os.environ.get("COURSE_DATA", "").strip()
    return Path(raw).expanduser().resolve() if raw else REPO_ROOT / "data"


def device(name: str | None = None):
    """The torch device to compute on: ``name``, else ``$COURSE_DEVICE``, else
    CUDA when available, else CPU."""
    import torch

    name = name or os.environ.get("COURSE_DEVICE", "").strip() or None
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def course_seed() -> int:
    """The notebooks' seed: ``$COURSE_SEED`` (a non-negative integer), 0 when unset.

    Rerunning a notebook with ``COURSE_SEED=1``, ``2``, ... checks that its results and
    asserts do not hinge on one lucky seed.

    Raises
    ------
    ValueError
        If ``COURSE_SEED`` is not a non-negative integer.
    """
    raw = os.environ.get("COURSE_SEED", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise ValueError(f"COURSE_SEED={raw!r} is not a non-negative integer; use e.g. COURSE_SEED=1, "
                         "or unset it for the default seed 0.")
    return int(raw)


def seed_everything(seed: int = 0):
    """Seed Python's, NumPy's and torch's global generators and return a fresh
    ``torch.Generator`` seeded with ``seed`` for code that takes one.

    Parameters
    ----------
    seed : int
        Non-negative integer.

    Returns
    -------
    torch.Generator
        A CPU generator, ``torch.Generator().manual_seed(seed)``.
    """
    import numpy as np
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_notebook(seed: int = 0):
    """A notebook's first call: seed everything, style the plots for the mode,
    print the settings in use (seed, modes, device, data folder), and return a
    ``torch.Generator`` seeded with ``seed``."""
    gen = seed_everything(seed)
    style = apply_plot_style()
    print(f"seed = {seed} | fast mode: {'on' if fast_mode() else 'off'} | presentation mode: "
          f"{'on' if style == 'presentation' else 'off'} | device: {device()} | data: {data_dir()}")
    return gen
