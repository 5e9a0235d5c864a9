"""Argument checks shared by every module of helpers (private): one message style everywhere."""
from __future__ import annotations

import math

import numpy as np
import torch


def check_count(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, or ValueError naming ``name`` when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_generator(generator):
    """``generator`` unchanged if it is a ``torch.Generator`` or None; TypeError otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__} "
                        "(make one with torch.Generator().manual_seed(seed))")
    return generator


def check_real(name: str, value, low: float = -math.inf, high: float = math.inf, *, low_ok: bool = True,
               high_ok: bool = True) -> float:
    """``value`` as a float, or ValueError naming ``name`` and the allowed interval.

    The interval is ``[low, high]`` with open ends where ``low_ok`` / ``high_ok`` is False;
    NaN, infinities outside it, bools and non-numbers are rejected (numpy scalars accepted).
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and not math.isnan(value) and (value >= low if low_ok else value > low) \
        and (value <= high if high_ok else value < high) and math.isfinite(value)
    if not ok:
        interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    """``value`` unchanged if it is one of ``choices``; ValueError listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value
