"""Energy-based models trained by contrast: data pushed down in energy, model samples pulled up.

A model ``p(x) = exp(-E(x)) / Z`` has the log-likelihood gradient

    d/dtheta log p(x) = -dE(x)/dtheta + E_{x' ~ p}[dE(x')/dtheta]
                      =  positive phase (data)  -  negative phase (model),

with the phases written, as in the notes, for ``-E``. Averaged over a batch of
data and estimated with negative samples ``x_neg`` from the model (MCMC:
:mod:`helpers.mcmc`, e.g. Langevin chains or Gibbs sweeps), it is minus the
gradient of :func:`contrastive_loss`, so an optimizer minimising that loss
climbs the log-likelihood. For a Bernoulli RBM, whose energy of ``x`` is its
free energy, this is contrastive divergence (``helpers.rbm.cd_loss``).

Energies and losses are in nats.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["contrastive_loss"]


def _energies(energy_fn, x, name):
    e = energy_fn(x)
    if not isinstance(e, torch.Tensor) or e.shape != (x.shape[0],):
        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"energy_fn must return one energy per row of {name}, shape ({x.shape[0]},), but "
                         f"returned {got}; sum over the other dimensions (e.g. .sum(-1) or .flatten(1).sum(1))")
    if not e.is_floating_point():
        raise TypeError(f"energy_fn must return floating-point energies, got dtype {e.dtype} for {name}")
    bad = ~torch.isfinite(e)
    if bad.any():
        raise ValueError(f"energy_fn returned {int(bad.sum())} NaN or infinite energies for {name}, e.g. row "
                         f"{int(bad.nonzero()[0, 0])}; the loss would be meaningless (a diverged model or "
                         "sampler: lower the learning rate or the Langevin step size)")
    return e


def contrastive_loss(energy_fn: Callable, x: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    """The contrastive loss ``mean_n E(x_n) - mean_m E(x_neg_m)`` with the negatives detached, in nats.

    Its gradient with respect to the parameters of ``energy_fn`` is

        (1/B) sum_n dE(x_n)/dtheta - (1/C) sum_m dE(x_neg_m)/dtheta
        = -(positive phase - negative phase),

    minus the Monte Carlo estimate of the mean log-likelihood gradient (exact
    in expectation when ``x_neg`` are exact model samples). The negatives are
    **detached**: they came from a sampler that depends on the parameters, but
    the log-likelihood gradient treats them as fixed draws from the model;
    differentiating through the sampler (through Langevin steps, or mean-field
    reconstructions) adds a term that is not part of it. The value itself is
    not a log-likelihood (``log Z`` is missing); watch the two mean energies,
    not the loss, to follow training.

    Parameters
    ----------
    energy_fn : callable
        ``energy_fn(x)`` returns the energy ``E(x)`` (nats, ``p(x) ~ exp(-E(x))``)
        of every row, shape (batch,); e.g. ``rbm.free_energy`` or a network.
        Rows must not interact (no batch norm in train mode).
    x : Tensor, shape (B, ...)
        Data batch (the positive samples).
    x_neg : Tensor, shape (C, ...)
        Negative samples (same trailing shape as ``x``; ``C`` may differ from
        ``B``). Detached here, so no gradient reaches them or their sampler.

    Returns
    -------
    Tensor of shape (): the loss, in nats.

    Examples
    --------
    >>> loss = contrastive_loss(rbm.free_energy, x_batch, chains.step())
    >>> loss.backward()                  # W.grad = -(<x p(h|x)^T>_data - <x p(h|x)^T>_neg), ...
    """
    if not callable(energy_fn):
        raise TypeError(f"energy_fn must be a callable x -> energies of shape (batch,), got "
                        f"{type(energy_fn).__name__}; e.g. rbm.free_energy")
    for name, t in (("x", x), ("x_neg", x_neg)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] < 1:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape (batch, ...) with at least one row, got {got}")
    if x.shape[1:] != x_neg.shape[1:]:
        raise ValueError(f"x and x_neg must have the same shape after the batch dimension, got "
                         f"{tuple(x.shape)} and {tuple(x_neg.shape)}: the negatives are states of the same model")
    return _energies(energy_fn, x, "x").mean() - _energies(energy_fn, x_neg.detach(), "x_neg").mean()
