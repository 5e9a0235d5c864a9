"""Two numerical primitives shared by the RBM, AIS and samplers (private): exact softplus, Bernoulli draws."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def softplus(x):
    """log(1 + e^x), exact to rounding in float32 and float64.

    ``F.softplus`` returns x itself for x > 20, an absolute error of log(1 + e^-20) = 2e-9:
    below float32's resolution at those values, but a million times float64's. In float64
    the switch moves to x > 40 (error 4e-18), so that exact float64 computations (log Z,
    probabilities summing to 1) hold to rounding.
    """
    return F.softplus(x, threshold=40.0) if x.dtype == torch.float64 else F.softplus(x)


def bernoulli(p, generator):
    """One independent draw per entry of ``p``: ``1.0`` where ``U(0, 1) < p``.

    Draws ``torch.rand(p.shape)`` from ``generator``, the same stream that the
    fast training loop of ``helpers.rbm.train_rbm`` consumes (so the two can be
    compared draw for draw).
    """
    u = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device)
    return torch.lt(u, p, out=u)            # 1.0 / 0.0 written over the uniforms: no second tensor
