"""Argument checks shared by the samplers and trainers (private)."""
from __future__ import annotations

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
