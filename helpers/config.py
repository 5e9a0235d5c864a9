"""Run-time settings of the course, each read from the environment in one place.

=================  ===================================  ==========================
setting            environment variable                 default
=================  ===================================  ==========================
fast mode          ``COURSE_FAST`` (1/true/yes/on)      off (full classroom mode)
presentation mode  ``COURSE_PRESENT`` (1/true/yes/on)   off (lecturer mode: big fonts, checkpoints)
data folder        ``COURSE_DATA``                      ``<repo>/data`` (git-ignored)
device             ``COURSE_DEVICE`` (cpu, cuda, ...)   CUDA when present, else CPU
notebook seed      ``COURSE_SEED`` (integer >= 0)       0
CPU threads        ``COURSE_THREADS`` (auto, int >= 1)  auto (see :func:`threads_for`)
oneDNN kernel      ``COURSE_ONEDNN`` (1/0, yes/no)      on where it passes its check
=================  ===================================  ==========================

Fast mode shrinks epochs, data and chain lengths so that every notebook runs in
CI in seconds; it never skips a cell or a check. Notebooks choose their sizes
with :func:`pick`, e.g. ``n_epochs = pick(fast=2, full=30)``.

Presentation (lecturer) mode makes figures and fonts large enough for a
projector and turns on the checkpoint cache (:func:`checkpoint_path`): the
first run trains and saves the models, every rerun loads them in seconds.
Notebooks start with :func:`setup_notebook`, which seeds, styles and prints
the settings in use.

Threads: the sampling and training loops run their block under
:func:`threads_for`. With ``COURSE_THREADS`` unset or ``auto``, loops whose
matmuls are small (below :data:`SMALL_MATMUL` multiply-adds) run on one thread
and larger ones keep torch's setting (all cores by default);
``COURSE_THREADS=n`` runs every such loop on ``n`` threads.

Dense kernel: on CPUs, float32 products use oneDNN's fused linear when it
passes a check against ``torch.addmm`` (see :mod:`helpers._linear`);
``COURSE_ONEDNN=0`` turns it off, so that every product uses ``torch.addmm``.
:func:`helpers._linear.kernel_name` names the kernel in use.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _flag(name: str, meaning: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    on, off = ("1/true/yes/on", "0/false/no/off")
    on, off = (on + " (or unset it)", off) if default else (on, off + " (or unset it)")
    raise ValueError(f"{name}={raw!r} is not understood; use {on} to turn {meaning} on "
                     f"or {off} to turn it off.")


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


def onednn_enabled() -> bool:
    """False when ``COURSE_ONEDNN`` turns oneDNN's fused linear off (0/false/no/off).

    Unset or 1/true/yes/on: :mod:`helpers._linear` uses the fused kernel where
    it passes its check against ``torch.addmm``; off: ``torch.addmm`` always
    (same results up to float32 rounding, slower on some CPUs). Anything else
    raises ``ValueError``.
    """
    return _flag("COURSE_ONEDNN", "oneDNN's fused linear", default=True)


#: Automatic thread policy (:func:`threads_for`): loops whose typical matmul has fewer
#: multiply-adds than this (rows x n_visible x n_hidden) run on one thread. Their products and
#: element-wise steps are so small that starting and synchronising a second thread costs about as
#: much as it saves, and on a busy machine far more. Measured on a 2-core AMD EPYC (torch 2.14):
#: one 100x784 @ 784x20 product (1.6e6 multiply-adds) took 59 us on 1 thread and 35 us on 2 with
#: the second core free, but 74 us (addmm) to 116 us (oneDNN) on 2 while another process used it;
#: a whole 784 x 20 RBM trained 25-100x slower with 2 threads than with 1 on that busy machine.
SMALL_MATMUL = 2**23


def course_threads() -> int | None:
    """The thread policy: ``$COURSE_THREADS`` as a thread count, or None for automatic.

    Unset or ``auto``: None (:func:`threads_for` picks one thread for small
    matmuls, torch's setting otherwise); a positive integer: that many threads
    in every loop run under :func:`threads_for`.

    Raises
    ------
    ValueError
        If ``COURSE_THREADS`` is neither ``auto`` nor a positive integer.
    """
    raw = os.environ.get("COURSE_THREADS", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"COURSE_THREADS={raw!r} is not understood; use a positive integer such as "
                         "COURSE_THREADS=2, or auto (or unset it) for one thread on small matmuls and "
                         "torch's setting on large ones.")
    return int(raw)


@contextlib.contextmanager
def threads_for(work):
    """Run the block on the thread count the policy picks for matmuls of ``work`` multiply-adds.

    ``COURSE_THREADS=n``: ``n`` threads. Automatic: one thread when ``work <
    SMALL_MATMUL``, else torch's setting unchanged (all cores by default).
    ``torch.set_num_threads`` is restored when the block ends, also on an
    exception. Yields the thread count in use inside the block.

    Parameters
    ----------
    work : int
        Multiply-adds of the loop's typical matmul, e.g. ``rows * n_visible * n_hidden``.
    """
    import torch

    if isinstance(work, bool) or not isinstance(work, numbers.Real) or not work >= 0:
        raise ValueError(f"work must be a number of multiply-adds >= 0, got {work!r}")
    n = course_threads()
    if n is None and work < SMALL_MATMUL:
        n = 1
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _thread_policy() -> str:
    """The thread policy in words, for :func:`setup_notebook`'s status line."""
    import torch

    n = course_threads()
    if n is not None:
        return f"{n} (COURSE_THREADS)"
    small = f"2**{SMALL_MATMUL.bit_length() - 1}"
    return f"auto (1 for matmuls under {small} multiply-adds, else {torch.get_num_threads()})"


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

    from ._validate import check_count

    seed = check_count("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_notebook(seed: int = 0):
    """A notebook's first call: seed everything, style the plots for the mode,
    print the settings in use (seed, modes, device, threads, dense kernel, data
    folder), and return a ``torch.Generator`` seeded with ``seed``."""
    import torch

    from ._linear import kernel_name

    gen = seed_everything(seed)
    style = apply_plot_style()
    dev = device()
    print(f"seed = {seed} | fast mode: {'on' if fast_mode() else 'off'} | presentation mode: "
          f"{'on' if style == 'presentation' else 'off'} | device: {dev} | threads: {_thread_policy()} | "
          f"dense kernel: {kernel_name(torch.float32, dev)} | data: {data_dir()}")
    return gen
