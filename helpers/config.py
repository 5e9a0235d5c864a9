"""Run-time settings of the course, each read from the environment in one place.

=================  ===================================  ==========================
setting            environment variable                 default
=================  ===================================  ==========================
fast mode          ``COURSE_FAST`` (1/true/yes/on)      off (full classroom mode)
data folder        ``COURSE_DATA``                      ``<repo>/data`` (git-ignored)
device             ``COURSE_DEVICE`` (cpu, cuda, ...)   CUDA when present, else CPU
=================  ===================================  ==========================

Fast mode shrinks epochs, data and chain lengths so that every notebook runs in
CI in seconds; it never skips a cell or a check. Notebooks choose their sizes
with :func:`pick`, e.g. ``n_epochs = pick(fast=2, full=30)``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def fast_mode() -> bool:
    """True when ``COURSE_FAST`` asks for the small CI-sized runs.

    Raises
    ------
    ValueError
        If ``COURSE_FAST`` holds something other than a yes/no word, so that a
        typo never silently selects the 30-minute classroom run.
    """
    raw = os.environ.get("COURSE_FAST", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(
        f"COURSE_FAST={raw!r} is not understood; use 1/true/yes/on for fast mode "
        "or 0/false/no/off (or unset it) for full mode."
    )


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
