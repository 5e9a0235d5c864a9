"""Random test models shared by the test modules (not a test file)."""

import torch

from helpers.rbm import BernoulliRBM


def random_rbm(m, n, seed, scale=1.0, dtype=None):
    """A BernoulliRBM (float64 by default) with W, a, b ~ scale * N(0, 1), drawn in that order."""
    dtype = dtype or torch.float64
    gen = torch.Generator().manual_seed(seed)
    rbm = BernoulliRBM(m, n, dtype=dtype)
    rbm.W = scale * torch.randn(m, n, generator=gen, dtype=dtype)
    rbm.a = scale * torch.randn(m, generator=gen, dtype=dtype)
    rbm.b = scale * torch.randn(n, generator=gen, dtype=dtype)
    return rbm
