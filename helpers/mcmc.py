"""Markov chain Monte Carlo: Metropolis-Hastings, Langevin/MALA, block Gibbs sampling for RBMs, diagnostics.

Four parts, each usable on its own:

* :func:`metropolis_hastings` runs a batch of independent chains for any
  log-probability known up to a constant. A proposal ``y ~ q(. | x)`` is
  accepted with probability ``min(1, p(y) q(x | y) / (p(x) q(y | x)))``; ``Z``
  cancels, which is the whole point. A symmetric proposal
  (:func:`gaussian_proposal` for continuous states, :func:`flip_one_bit_proposal`
  for binary vectors) returns ``y`` and the ``q`` terms cancel too; an
  asymmetric one returns ``(y, log_q_ratio)`` with the Hastings correction
  ``log q(x | y) - log q(y | x)`` per chain.
* :func:`langevin` runs Langevin dynamics on any differentiable log-density,
  ``x' = x + h grad log p(x) + sqrt(2 h) xi``: unadjusted (ULA, biased at
  finite ``h``) or Metropolis-adjusted (MALA, exact). Gradients come from
  ``torch.autograd``; :func:`grad_log_prob` exposes them.
* :class:`MarkovChains` keeps chains alive between calls for *any* one-step
  transition ``step(x, generator) -> x``: :func:`mh_step` and
  :func:`langevin_step` (the same transitions as :func:`metropolis_hastings`
  and :func:`langevin`), a Gibbs sweep, or your own. Block Gibbs sampling in a
  :class:`helpers.rbm.BernoulliRBM` has its own fast loop, :func:`gibbs_sample`
  and :class:`PersistentChains`: one *sweep* is ``x -> h ~ p(h | x) -> x ~ p(x | h)``.
  Every unit of every chain gets its own Bernoulli draw.
* Diagnostics over a scalar series of shape ``(n_steps, n_chains)`` (time
  first): :func:`acceptance_rate`, :func:`autocorrelation`,
  :func:`integrated_autocorrelation_time`, :func:`effective_sample_size` and
  :func:`r_hat`. They take numpy arrays or torch tensors and return numpy values.

Every random thing takes a ``torch.Generator`` (``None``: torch's global one).
Log-probabilities are in nats.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from ._validate import check_count as _check_count, check_generator as _check_generator, check_real

__all__ = [
    "MHResult", "metropolis_hastings", "gaussian_proposal", "flip_one_bit_proposal",
    "langevin", "grad_log_prob",
    "MarkovChains", "mh_step", "langevin_step",
    "gibbs_sample", "PersistentChains",
    "acceptance_rate", "autocorrelation", "integrated_autocorrelation_time", "effective_sample_size", "r_hat",
]




# ============================================================================ Metropolis-Hastings
class MHResult(NamedTuple):
    """Output of :func:`metropolis_hastings` and :func:`langevin`.

    Attributes
    ----------
    samples : Tensor, shape (n_kept, n_chains, d)
        States after steps ``thin, 2 thin, ...`` (``n_kept = n_steps // thin``);
        for :func:`langevin` the state shape may be any ``(n_chains, ...)``.
    acceptance_rate : Tensor, shape (n_chains,), float64
        Fraction of the ``n_steps`` proposals each chain accepted (1 for ULA).
    log_prob : Tensor, shape (n_kept, n_chains)
        ``log_prob`` of the kept states (nats, up to the same constant as ``log_prob``).
    """

    samples: torch.Tensor
    acceptance_rate: torch.Tensor
    log_prob: torch.Tensor


def _check_lp(lp, n_chains, what):
    """Validate a log_prob output: a float tensor of shape (n_chains,), no NaN, no +inf."""
    if not isinstance(lp, torch.Tensor):
        lp = torch.as_tensor(lp)
    if lp.shape != (n_chains,):
        raise ValueError(f"log_prob must return one value per chain, shape ({n_chains},), but returned shape "
                         f"{tuple(lp.shape)} for {what}; reduce over the state dimension (e.g. .sum(-1))")
    if not lp.is_floating_point():
        lp = lp.to(torch.float64)
    if torch.isnan(lp).any():
        bad = int(torch.isnan(lp).nonzero()[0, 0])
        raise ValueError(f"log_prob returned NaN for {int(torch.isnan(lp).sum())} chain(s), e.g. chain {bad}, "
                         f"at {what}; return -inf for states of zero probability, never NaN")
    if (lp == math.inf).any():
        raise ValueError(f"log_prob returned +inf at {what}; the target is not normalizable there")
    return lp


def _evaluate(log_prob, x, n_chains, what):
    return _check_lp(log_prob(x), n_chains, what)


def _check_callable(name, f, hint):
    if not callable(f):
        raise TypeError(f"{name} must be a callable {hint}, got {type(f).__name__}")


_LOG_PROB_HINT = "x -> log p(x) (shape (n_chains,)); pass a function, e.g. lambda x: -0.5 * (x**2).sum(1)"
_PROPOSAL_HINT = ("(x, generator) -> y or (y, log_q_ratio); use gaussian_proposal(scale) or "
                  "flip_one_bit_proposal()")


def _check_states(x, name="x0", min_dim=2, max_dim=2, floating=False):
    """A batch of chain states: a tensor of shape (n_chains, d) (or (n_chains, ...) when max_dim is None)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n_chains, d), got {type(x).__name__}")
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        hint = f" (use {name}[:, None] for one-dimensional states)" if x.dim() == 1 else ""
        shape = "(n_chains, d)" if max_dim == 2 else "(n_chains, d) or (n_chains, ...)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}{hint}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be floating point for gradient-based steps, got dtype {x.dtype}; "
                        f"use {name}.double() or {name}.float()")
    return x


def _check_run(n_steps, thin, generator):
    n_steps = _check_count("n_steps", n_steps)
    thin = _check_count("thin", thin)
    if thin > n_steps:
        raise ValueError(f"thin={thin} is larger than n_steps={n_steps}, so no sample would be kept; "
                         "use thin <= n_steps")
    return n_steps, thin, _check_generator(generator)


def _accept(lp_x, lp_y, log_q_ratio, generator):
    """The Metropolis-Hastings decision for every chain: u < p(y) q(x|y) / (p(x) q(y|x)), u ~ U(0, 1).

    ``log_q_ratio`` is None for a symmetric proposal. When ``lp_x`` and ``lp_y`` are
    both -inf the log ratio is NaN and the comparison False: a chain stuck at p = 0
    stays put. Draws one uniform per chain (in ``lp_x``'s dtype) from ``generator``.
    """
    log_u = torch.rand(lp_x.shape[0], generator=generator, dtype=lp_x.dtype, device=lp_x.device).log_()
    log_alpha = lp_y - lp_x if log_q_ratio is None else lp_y - lp_x + log_q_ratio
    return log_u < log_alpha


def _propose(proposal, x, generator, at):
    """Call the proposal and validate what it returned: ``(y, log_q_ratio or None)``."""
    out = proposal(x, generator)
    log_q_ratio = None
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"the proposal must return y or a pair (y, log_q_ratio), but returned a "
                             f"{type(out).__name__} of length {len(out)} at {at}")
        out, log_q_ratio = out
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the proposal must return a tensor of the same shape as x, {tuple(x.shape)}, "
                         f"but returned {got} at {at}")
    if log_q_ratio is not None:
        n_chains = x.shape[0]
        if not isinstance(log_q_ratio, torch.Tensor) or log_q_ratio.shape != (n_chains,):
            got = tuple(log_q_ratio.shape) if isinstance(log_q_ratio, torch.Tensor) \
                else type(log_q_ratio).__name__
            raise ValueError(f"the proposal's log_q_ratio = log q(x | y) - log q(y | x) must be a tensor of "
                             f"shape (n_chains,) = ({n_chains},), one value per chain, but got {got} at {at}; "
                             "sum the log-densities over the state dimension")
        if torch.isnan(log_q_ratio).any():
            raise ValueError(f"the proposal's log_q_ratio is NaN for {int(torch.isnan(log_q_ratio).sum())} "
                             f"chain(s) at {at}; use -inf where the reverse move y -> x is impossible")
    return out, log_q_ratio


def _mh_transition(log_prob, proposal, x, lp, generator, at):
    """One Metropolis-Hastings step of every chain from states ``x`` with log-densities ``lp``.

    The one implementation behind :func:`metropolis_hastings` and :func:`mh_step`.
    Random stream: the proposal's draws, then one uniform per chain.
    Returns ``(x_new, lp_new, accepted)``, accepted a bool tensor (n_chains,).
    """
    y, log_q_ratio = _propose(proposal, x, generator, at)
    lp_y = _evaluate(log_prob, y, x.shape[0], f"the proposals of {at}")
    if log_q_ratio is not None:
        log_q_ratio = log_q_ratio.to(dtype=lp.dtype, device=lp.device)
    accept = _accept(lp, lp_y, log_q_ratio, generator)
    x = torch.where(accept[:, None], y.to(x.dtype), x)
    lp = torch.where(accept, lp_y, lp)
    return x, lp, accept


class _Trace:
    """Kept states, their log-densities and acceptance counts of a run (the loop's bookkeeping)."""

    def __init__(self, x, lp, n_steps, thin):
        self.thin, self.n_steps = thin, n_steps
        self.samples = torch.empty((n_steps // thin,) + tuple(x.shape), dtype=x.dtype, device=x.device)
        self.lp = torch.empty((n_steps // thin, x.shape[0]), dtype=lp.dtype, device=lp.device)
        self.n_accepted = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    def record(self, step, x, lp, accept):
        if accept is None:  # every proposal accepted (ULA)
            self.n_accepted += 1
        else:
            self.n_accepted += accept
        if step % self.thin == 0:
            self.samples[step // self.thin - 1] = x
            self.lp[step // self.thin - 1] = lp

    def result(self):
        return MHResult(self.samples, self.n_accepted.to(torch.float64) / self.n_steps, self.lp)


def metropolis_hastings(log_prob: Callable, x0: torch.Tensor, n_steps: int, proposal: Callable,
                        generator: torch.Generator | None = None, thin: int = 1) -> MHResult:
    """Metropolis-Hastings over a batch of independent chains, symmetric or asymmetric proposals.

    Each step proposes ``y ~ q(. | x)`` for every chain and accepts it with
    probability ``min(1, p(y) q(x | y) / (p(x) q(y | x)))``; a rejected chain
    keeps its state (and the repeated state counts as a sample). The proposal
    says which case it is by what it returns:

    * ``y``: a symmetric proposal, ``q(y | x) = q(x | y)``; the acceptance
      probability is ``min(1, p(y) / p(x))``.
    * ``(y, log_q_ratio)``: any proposal, with the Hastings correction
      ``log_q_ratio = log q(x | y) - log q(y | x)`` (nats, one value per
      chain). Dropping it, i.e. returning ``y`` alone for an asymmetric
      proposal, samples the wrong distribution.

    Parameters
    ----------
    log_prob : callable
        ``log_prob(x)`` with ``x`` of shape (n_chains, d) returns the
        log-probability up to a constant, shape (n_chains,), in nats. ``-inf``
        marks impossible states; NaN is an error. Called once per step on the
        proposals (and once on ``x0``), under ``torch.no_grad()``.
    x0 : Tensor, shape (n_chains, d)
        Initial states, one row per chain.
    n_steps : int
        Number of proposals per chain, >= 1.
    proposal : callable
        ``proposal(x, generator)`` returns new states ``y`` of the same shape as
        ``x`` (symmetric), or a pair ``(y, log_q_ratio)`` with ``log_q_ratio``
        of shape (n_chains,) (``-inf`` where the reverse move is impossible);
        see :func:`gaussian_proposal` and :func:`flip_one_bit_proposal`.
    generator : torch.Generator, optional
        Source of the proposals and of the accept/reject uniforms (per step: the
        proposal's draws, then one uniform per chain).
    thin : int
        Keep every ``thin``-th state (``1 <= thin <= n_steps``).

    Returns
    -------
    MHResult
        ``samples`` (n_steps // thin, n_chains, d), ``acceptance_rate``
        (n_chains,), ``log_prob`` (n_steps // thin, n_chains).

    Examples
    --------
    A multiplicative random walk on x > 0, ``y = x exp(s eps)``, has
    ``q(y | x) = N(log y; log x, s^2) / y``, hence ``log_q_ratio = log y - log x``:

    >>> def log_normal_walk(x, generator):
    ...     y = x * torch.exp(0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype))
    ...     return y, (y.log() - x.log()).sum(1)
    """
    _check_callable("log_prob", log_prob, _LOG_PROB_HINT)
    _check_callable("proposal", proposal, _PROPOSAL_HINT)
    _check_states(x0)
    n_steps, thin, generator = _check_run(n_steps, thin, generator)

    with torch.no_grad():
        x = x0.clone()
        lp = _evaluate(log_prob, x, x.shape[0], "x0")
        trace = _Trace(x, lp, n_steps, thin)
        for step in range(1, n_steps + 1):
            x, lp, accept = _mh_transition(log_prob, proposal, x, lp, generator, f"step {step}")
            trace.record(step, x, lp, accept)
    return trace.result()


def gaussian_proposal(scale) -> Callable:
    """Symmetric random-walk proposal ``y = x + scale * eps`` with ``eps ~ N(0, I)``.

    Parameters
    ----------
    scale : float or Tensor of shape (d,)
        Standard deviation of the step (same units as ``x``), > 0. A good
        scale gives an acceptance rate of roughly 0.2-0.5.

    Returns
    -------
    callable ``proposal(x, generator=None)`` for :func:`metropolis_hastings`;
    ``x`` of shape (n_chains, d) and floating point.
    """
    scale_t = torch.as_tensor(scale, dtype=torch.float64)
    if scale_t.dim() > 1 or not torch.isfinite(scale_t).all() or (scale_t <= 0).any():
        raise ValueError(f"scale must be a positive finite number (or a 1-D tensor of them), got {scale!r}")

    def propose(x, generator=None):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x + scale_t.to(dtype=x.dtype, device=x.device) * eps

    propose.__doc__ = f"Gaussian random-walk proposal with scale {scale!r}."
    return propose


def flip_one_bit_proposal() -> Callable:
    """Symmetric proposal for binary (0/1) vectors: each chain flips one bit chosen uniformly.

    ``q(y | x) = 1/d`` when ``y`` differs from ``x`` in exactly one of its ``d``
    bits, so ``q(y | x) = q(x | y)``.

    Returns
    -------
    callable ``proposal(x, generator=None)`` for :func:`metropolis_hastings`;
    ``x`` of shape (n_chains, d) with entries 0 and 1.
    """

    def propose(x, generator=None):
        n_chains, d = x.shape
        rows = torch.arange(n_chains, device=x.device)
        cols = torch.randint(d, (n_chains,), generator=generator, device=x.device)
        y = x.clone()
        y[rows, cols] = 1 - y[rows, cols]
        return y

    propose.__doc__ = "Flip one uniformly chosen bit per chain."
    return propose


# ============================================================================ Langevin dynamics (ULA, MALA)
def _value_and_grad(log_prob, x, at):
    """``(log p(x), grad_x log p(x))`` per chain by autograd, both detached.

    Rows with ``log p = -inf`` get a zero gradient (they are never moved to);
    a NaN or infinite gradient at a finite ``log p`` is an error naming ``at``.
    The graph is built on a detached copy of ``x``, and only ``x`` is
    differentiated: nothing accumulates in the ``.grad`` of parameters that
    ``log_prob`` uses.
    """
    n_chains = x.shape[0]
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        lp = log_prob(xg)
        if not isinstance(lp, torch.Tensor):
            raise TypeError(f"log_prob must return a torch.Tensor computed from x with torch operations (its "
                            f"gradient comes from autograd), got {type(lp).__name__} at {at}")
        lp = _check_lp(lp, n_chains, at)
        if not lp.requires_grad:
            raise ValueError(f"log_prob(x) has no autograd graph back to x at {at}, so its gradient is unknown; "
                             "compute it with torch operations on x, without .detach(), .item(), numpy or "
                             "torch.no_grad()")
        (grad,) = torch.autograd.grad(lp.sum(), xg)  # chains are independent: row n of the result is d lp_n / d x_n
    lp = lp.detach()
    possible = lp > -math.inf
    bad = possible & ~torch.isfinite(grad).flatten(1).all(1)
    if bad.any():
        raise ValueError(f"the gradient of log_prob is NaN or infinite for {int(bad.sum())} chain(s), e.g. chain "
                         f"{int(bad.nonzero()[0, 0])}, at {at}, where log_prob itself is finite; make log_prob "
                         "smooth there (e.g. clamp a log or a division), or use a smaller step_size if the "
                         "chains are running away")
    if not possible.all():
        grad = torch.where(_rows(possible, grad), grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    return lp, grad


def _rows(mask, x):
    """A per-chain mask of shape (n_chains,) viewed to broadcast against x of shape (n_chains, ...)."""
    return mask.view((-1,) + (1,) * (x.dim() - 1))


def grad_log_prob(log_prob: Callable, x: torch.Tensor) -> torch.Tensor:
    """Gradient of a log-density with respect to the states, by autograd: the score ``grad_x log p(x)``.

    Parameters
    ----------
    log_prob : callable
        ``log_prob(x)`` returns shape (n_chains,), in nats, computed from ``x``
        with torch operations, each value from its own row (chains independent).
    x : Tensor, shape (n_chains, d) or (n_chains, ...), floating point

    Returns
    -------
    Tensor, same shape and dtype as ``x``, in nats per unit of ``x``; detached
    (no graph, and no ``.grad`` accumulated on parameters of ``log_prob``).
    Zero for chains where ``log_prob`` is ``-inf``; a NaN or infinite gradient
    elsewhere raises ``ValueError``.
    """
    _check_callable("log_prob", log_prob, _LOG_PROB_HINT)
    _check_states(x, "x", max_dim=None, floating=True)
    return _value_and_grad(log_prob, x, "x")[1]


def _check_step_size(step_size):
    return check_real("step_size (units of x squared)", step_size, 0, low_ok=False)


def _start_langevin(log_prob, x, at):
    lp, grad = _value_and_grad(log_prob, x, at)
    if (lp == -math.inf).any():
        raise ValueError(f"log_prob is -inf for {int((lp == -math.inf).sum())} chain(s), e.g. chain "
                         f"{int((lp == -math.inf).nonzero()[0, 0])}, at {at}; a Langevin step needs a finite "
                         "log-density and gradient, so start every chain inside the support")
    return lp, grad


def _langevin_transition(log_prob, x, lp, grad, h, adjust, generator, at):
    """One Langevin step of every chain from ``x`` with log-density ``lp`` and score ``grad``.

    The one implementation behind :func:`langevin` and :func:`langevin_step`.
    Proposal ``y = x + h grad + sqrt(2h) xi``, i.e. ``q(y | x) = N(y; x + h grad log p(x), 2h I)``.
    ULA (``adjust=False``) always moves; MALA accepts with the Metropolis-Hastings
    ratio including ``log q(x | y) - log q(y | x)``. Random stream: one normal per
    coordinate, then (MALA) one uniform per chain.
    Returns ``(x_new, lp_new, grad_new, accepted)``; ``accepted`` is None for ULA.
    """
    xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    y = x + h * grad + math.sqrt(2.0 * h) * xi
    lp_y, grad_y = _value_and_grad(log_prob, y, f"the proposals of {at}")
    if not adjust:
        if (lp_y == -math.inf).any():
            raise ValueError(f"ULA moved {int((lp_y == -math.inf).sum())} chain(s) to states of zero probability "
                             f"(log_prob -inf) at {at}; ULA cannot reject a move: use adjust=True (MALA) or a "
                             "smaller step_size")
        return y, lp_y, grad_y, None
    # log q(x | y) - log q(y | x) with log q(b | a) = -|b - a - h grad(a)|^2 / (4h) + const;
    # the forward residual y - x - h grad(x) is sqrt(2h) xi exactly, so its term is |xi|^2 / 2.
    back = x - y - h * grad_y
    log_q_ratio = 0.5 * xi.pow(2).flatten(1).sum(1) - back.pow(2).flatten(1).sum(1) / (4.0 * h)
    accept = _accept(lp, lp_y, log_q_ratio.to(lp.dtype), generator)
    rows = _rows(accept, x)
    return torch.where(rows, y, x), torch.where(accept, lp_y, lp), torch.where(rows, grad_y, grad), accept


def langevin(log_prob: Callable, x0: torch.Tensor, n_steps: int, step_size: float, *, adjust: bool = True,
             generator: torch.Generator | None = None, thin: int = 1) -> MHResult:
    """Langevin dynamics on a differentiable log-density: MALA (default) or unadjusted (ULA).

    Each step moves every chain to ``y = x + h grad log p(x) + sqrt(2h) xi``
    with ``xi ~ N(0, I)`` and ``h = step_size`` (the Euler-Maruyama step of
    ``dx = grad log p(x) dt + sqrt(2) dW``, whose stationary law is ``p``).

    * ``adjust=False``, ULA: every move is taken. Its stationary law is *not*
      ``p`` at finite ``h``: the bias grows with ``h`` (for ``p = N(0, s^2)``
      the chain is AR(1) with variance ``s^2 / (1 - h / (2 s^2))``). This is the
      sampler of most energy-based-model papers.
    * ``adjust=True``, MALA: the move is a Metropolis-Hastings proposal with
      ``q(y | x) = N(y; x + h grad log p(x), 2h I)``, accepted with probability
      ``min(1, p(y) q(x | y) / (p(x) q(y | x)))``, so ``p`` is sampled exactly
      at any ``h``; a too large ``h`` shows as a low acceptance rate (aim for
      about 0.5-0.8).

    Parameters
    ----------
    log_prob : callable
        ``log_prob(x)`` returns the log-density up to a constant, shape
        (n_chains,), in nats, computed from ``x`` with torch operations
        (differentiable; the score comes from ``torch.autograd``), each value
        from its own row. ``-inf`` is allowed for proposals (MALA rejects them)
        but not at ``x0``; NaN, or a NaN/infinite gradient, is an error naming
        the step. Evaluated once per step, with its gradient.
    x0 : Tensor, shape (n_chains, d) or (n_chains, ...), floating point
        Initial states (e.g. images of shape (n_chains, 1, 28, 28)). Not modified.
    n_steps : int
        Number of steps, >= 1.
    step_size : float
        ``h`` > 0, in units of ``x`` squared (the noise per step has standard
        deviation ``sqrt(2h)``).
    adjust : bool
        True for MALA, False for ULA.
    generator : torch.Generator, optional
        Source of the noise and of the accept/reject uniforms (per step: one
        normal per coordinate, then, for MALA, one uniform per chain).
    thin : int
        Keep every ``thin``-th state (``1 <= thin <= n_steps``).

    Returns
    -------
    MHResult
        ``samples`` (n_steps // thin, n_chains, ...), detached, in ``x0``'s
        dtype; ``acceptance_rate`` (n_chains,), all 1 for ULA; ``log_prob``
        (n_steps // thin, n_chains).
    """
    _check_callable("log_prob", log_prob, _LOG_PROB_HINT)
    _check_states(x0, max_dim=None, floating=True)
    h = _check_step_size(step_size)
    n_steps, thin, generator = _check_run(n_steps, thin, generator)

    with torch.no_grad():
        x = x0.detach().clone()
        lp, grad = _start_langevin(log_prob, x, "x0")
        trace = _Trace(x, lp, n_steps, thin)
        for step in range(1, n_steps + 1):
            x, lp, grad, accept = _langevin_transition(log_prob, x, lp, grad, h, adjust, generator, f"step {step}")
            trace.record(step, x, lp, accept)
    return trace.result()


# ============================================================================ persistent chains on any transition
def mh_step(log_prob: Callable, proposal: Callable) -> Callable:
    """One Metropolis-Hastings step as a function ``step(x, generator=None) -> x`` for :class:`MarkovChains`.

    The same transition as one step of :func:`metropolis_hastings` (same code,
    same random stream), except that ``log_prob`` of the current states is
    evaluated afresh at every call (one extra evaluation per step): that keeps
    the step right when the target changes between calls, e.g. a model in training.

    Parameters
    ----------
    log_prob, proposal : callable
        As for :func:`metropolis_hastings` (symmetric ``y`` or ``(y, log_q_ratio)``).

    Returns
    -------
    callable ``step(x, generator=None)``: ``x`` (n_chains, d) -> new states, same
    shape. Its attribute ``last_accepted`` (bool tensor (n_chains,)) holds the
    decisions of the latest call (None before the first).
    """
    _check_callable("log_prob", log_prob, _LOG_PROB_HINT)
    _check_callable("proposal", proposal, _PROPOSAL_HINT)

    def step(x, generator=None):
        _check_states(x, "x")
        with torch.no_grad():
            lp = _evaluate(log_prob, x, x.shape[0], "the current states")
            x, _, accept = _mh_transition(log_prob, proposal, x, lp, generator, "this step")
        step.last_accepted = accept
        return x

    step.last_accepted = None
    return step


def langevin_step(log_prob: Callable, step_size: float, adjust: bool = True) -> Callable:
    """One Langevin step (MALA, or ULA with ``adjust=False``) as ``step(x, generator=None) -> x``.

    The same transition as one step of :func:`langevin` (same code, same random
    stream), except that ``log_prob`` and its gradient at the current states are
    evaluated afresh at every call (one extra evaluation with its gradient per
    step), so the step follows a target that changes between calls (an
    energy-based model in training).

    Parameters
    ----------
    log_prob, step_size, adjust
        As for :func:`langevin`.

    Returns
    -------
    callable ``step(x, generator=None)``: ``x`` (n_chains, ...) floating point ->
    new states, same shape, detached. Attribute ``last_accepted`` as for :func:`mh_step`
    (all True for ULA).
    """
    _check_callable("log_prob", log_prob, _LOG_PROB_HINT)
    h = _check_step_size(step_size)

    def step(x, generator=None):
        _check_states(x, "x", max_dim=None, floating=True)
        with torch.no_grad():
            x = x.detach()
            lp, grad = _start_langevin(log_prob, x, "the current states")
            x, _, _, accept = _langevin_transition(log_prob, x, lp, grad, h, adjust, generator, "this step")
        step.last_accepted = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if accept is None else accept
        return x

    step.last_accepted = None
    return step


class MarkovChains:
    """A batch of chains that persist between calls, advanced by any one-step transition.

    The model-agnostic form of :class:`PersistentChains`: fantasy particles for
    an energy-based model, the negative phase of persistent contrastive
    divergence, or a long run done piecewise.

    Parameters
    ----------
    step : callable
        ``step(x, generator) -> x``: one transition of every chain, returning
        new states of the same shape, e.g. ``mh_step(log_prob, proposal)``,
        ``langevin_step(log_prob, step_size)`` or a Gibbs sweep
        ``lambda x, g: gibbs_sample(rbm, x, 1, g)``. It is called with the
        chains' generator, so the same seed gives the same chains whether they
        advance one step per call or many.
    x0 : Tensor, shape (n_chains, ...)
        Initial states (copied, detached).
    generator : torch.Generator, optional
        Source of every draw of ``step``.

    Attributes
    ----------
    x : Tensor, shape (n_chains, ...)
        The current states (detached). Read it; do not modify it in place.
    n_steps_done : int
        Transitions run so far.
    acceptance_rate : Tensor (n_chains,) float64, or None
        Fraction of accepted proposals per chain since the start, for a ``step``
        that reports its decisions in an attribute ``last_accepted`` (as
        :func:`mh_step` and :func:`langevin_step` do); None otherwise.

    Examples
    --------
    >>> chains = MarkovChains(langevin_step(log_prob, 0.1), x0, generator=torch.Generator().manual_seed(0))
    >>> x = chains.step(20)            # 20 MALA steps; chains.step() 20 times gives the same states
    """

    def __init__(self, step: Callable, x0: torch.Tensor, generator: torch.Generator | None = None):
        _check_callable("step", step, "(x, generator) -> new x, e.g. mh_step(log_prob, proposal), "
                                      "langevin_step(log_prob, step_size) or lambda x, g: gibbs_sample(rbm, x, 1, g)")
        _check_states(x0, max_dim=None)
        self._step = step
        self.generator = _check_generator(generator)
        self.x = x0.detach().clone()
        self.n_steps_done = 0
        self._n_accepted = torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)
        self._n_reported = 0

    @property
    def acceptance_rate(self):
        if self._n_reported == 0:
            return None
        return self._n_accepted.to(torch.float64) / self._n_reported

    def step(self, n: int = 1) -> torch.Tensor:
        """Advance every chain by ``n`` transitions (>= 1) and return the new states ``x``."""
        n = _check_count("n", n)
        for _ in range(n):
            try:
                x = self._step(self.x, self.generator)
            except (ValueError, TypeError) as err:
                err.add_note(f"(in MarkovChains.step, at transition {self.n_steps_done + 1} of these chains)")
                raise
            if not isinstance(x, torch.Tensor) or x.shape != self.x.shape:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"step must return the new states, a tensor of shape {tuple(self.x.shape)}, "
                                 f"but returned {got} at transition {self.n_steps_done + 1}")
            self.x = x.detach()
            self.n_steps_done += 1
            accepted = getattr(self._step, "last_accepted", None)
            if isinstance(accepted, torch.Tensor) and accepted.shape == (self.x.shape[0],):
                self._n_accepted += accepted.to(self._n_accepted.device)
                self._n_reported += 1
        return self.x

    def __repr__(self):
        return f"MarkovChains(n_chains={self.x.shape[0]}, state_shape={tuple(self.x.shape[1:])}, " \
               f"n_steps_done={self.n_steps_done})"


# ============================================================================ Gibbs sampling in an RBM
def gibbs_sample(rbm, x0: torch.Tensor, n_sweeps: int, generator: torch.Generator | None = None,
                 keep_every: int | None = None) -> torch.Tensor:
    """Block Gibbs sampling in a Bernoulli RBM: ``n_sweeps`` sweeps x -> h -> x for every chain.

    A sweep draws ``h ~ p(h | x)`` and then ``x ~ p(x | h)`` (both factorize
    over units), one independent Bernoulli draw per unit and per chain.

    Parameters
    ----------
    rbm : helpers.rbm.BernoulliRBM
        The model; its current ``W``, ``a``, ``b`` are used (no gradients recorded).
    x0 : Tensor, shape (n_chains, n_visible)
        Binary (0/1) initial visible states, one row per chain (validated once).
    n_sweeps : int
        Number of sweeps, >= 1.
    generator : torch.Generator, optional
        Source of all Bernoulli draws.
    keep_every : int, optional
        If given, also keep the visible states after sweeps ``keep_every,
        2 keep_every, ...`` (``1 <= keep_every <= n_sweeps``).

    Returns
    -------
    Tensor
        The visible states after the last sweep, shape (n_chains, n_visible),
        in the model's dtype; or, with ``keep_every``, the kept states, shape
        (n_sweeps // keep_every, n_chains, n_visible).
    """
    x = rbm.check_visible(x0)
    n_sweeps = _check_count("n_sweeps", n_sweeps)
    if keep_every is not None:
        keep_every = _check_count("keep_every", keep_every)
        if keep_every > n_sweeps:
            raise ValueError(f"keep_every={keep_every} is larger than n_sweeps={n_sweeps}; nothing would be kept")
    generator = _check_generator(generator)
    kept = None if keep_every is None else torch.empty((n_sweeps // keep_every,) + tuple(x.shape), dtype=x.dtype,
                                                        device=x.device)
    with torch.no_grad():
        workspace = {}
        for sweep in range(1, n_sweeps + 1):
            x = rbm.gibbs_sweep(x, generator, workspace=workspace)   # the RBM's own sweep
            if kept is not None and sweep % keep_every == 0:
                kept[sweep // keep_every - 1] = x
    return x if kept is None else kept


class PersistentChains:
    """Gibbs chains that persist between calls: the negative phase of PCD and fantasy particles.

    Parameters
    ----------
    rbm : helpers.rbm.BernoulliRBM
        The model. Each :meth:`step` reads its *current* parameters, so the
        chains follow the model while it trains.
    n_chains : int
        Number of chains, >= 1.
    generator : torch.Generator, optional
        Source of the initial states (when ``init`` is None) and of every draw.
    init : Tensor, shape (n_chains, n_visible), optional
        Binary initial visible states, e.g. a batch of data. Default: each unit
        on with probability 1/2.

    Attributes
    ----------
    x : Tensor, shape (n_chains, n_visible)
        The current visible states (model dtype). Read it; do not modify it in place.
    n_sweeps_done : int
        Sweeps run so far.

    Examples
    --------
    >>> chains = PersistentChains(rbm, 100, generator=torch.Generator().manual_seed(0))
    >>> x_neg = chains.step()          # one sweep, shape (100, rbm.n_visible)
    """

    def __init__(self, rbm, n_chains: int, generator: torch.Generator | None = None, init: torch.Tensor | None = None):
        self.rbm = rbm
        self.n_chains = _check_count("n_chains", n_chains)
        self.generator = _check_generator(generator)
        if init is None:
            init = torch.rand((self.n_chains, rbm.n_visible), generator=generator) < 0.5
            init = init.to(device=rbm.device)
        x = rbm.check_visible(init)
        if x.shape[0] != self.n_chains:
            raise ValueError(f"init has {x.shape[0]} rows but n_chains={self.n_chains}; "
                             "pass one initial state per chain")
        self.x = x.clone()
        self.n_sweeps_done = 0
        self._workspace = {}   # buffers of the uniform draws, reused across calls

    def step(self, n_sweeps: int = 1) -> torch.Tensor:
        """Advance every chain by ``n_sweeps`` Gibbs sweeps (>= 1) and return the
        new visible states, shape (n_chains, n_visible)."""
        n_sweeps = _check_count("n_sweeps", n_sweeps)
        with torch.no_grad():
            for _ in range(n_sweeps):
                self.x = self.rbm.gibbs_sweep(self.x, self.generator, workspace=self._workspace)
        self.n_sweeps_done += n_sweeps
        return self.x

    def __repr__(self):
        return f"PersistentChains(n_chains={self.n_chains}, n_visible={self.rbm.n_visible}, " \
               f"n_sweeps_done={self.n_sweeps_done})"


# ============================================================================ diagnostics
def _as_series(series, name="series", min_steps=2, min_chains=1) -> np.ndarray:
    """A scalar chain trace as a float64 array (n_steps, n_chains); 1-D input is one chain."""
    if isinstance(series, torch.Tensor):
        series = series.detach().cpu().numpy()
    arr = np.asarray(series, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n_steps, n_chains) (time first), got {arr.shape}; "
                         "reduce each state to a scalar first (e.g. an energy or a magnetization)")
    if arr.shape[0] < min_steps:
        raise ValueError(f"{name} needs at least {min_steps} steps, got {arr.shape[0]} (shape is (n_steps, "
                         f"n_chains) = {arr.shape}; did you pass (n_chains, n_steps)? then use .T)")
    if arr.shape[1] < min_chains:
        raise ValueError(f"{name} needs at least {min_chains} chains, got {arr.shape[1]} (shape {arr.shape}); "
                         "run several independent chains from dispersed starting points")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    return arr


def acceptance_rate(samples) -> np.ndarray:
    """Fraction of steps at which each chain moved, from its trace.

    Parameters
    ----------
    samples : array or Tensor, shape (n_steps, n_chains) or (n_steps, n_chains, ...)
        States in time order (e.g. ``MHResult.samples`` with ``thin=1``).

    Returns
    -------
    ndarray, shape (n_chains,)
        For each chain, the fraction of the ``n_steps - 1`` transitions where
        the state changed. For Metropolis-Hastings this is the acceptance rate
        when every proposal differs from the current state (true for the
        proposals in this module); otherwise it is a lower bound.
    """
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    arr = np.asarray(samples)
    if arr.ndim < 2 or arr.shape[0] < 2:
        raise ValueError(f"samples must have shape (n_steps, n_chains, ...) with n_steps >= 2, got {arr.shape}")
    moved = (arr[1:] != arr[:-1]).reshape(arr.shape[0] - 1, arr.shape[1], -1).any(axis=2)
    return moved.mean(axis=0)


def autocorrelation(series, max_lag: int | None = None) -> np.ndarray:
    """Normalized autocorrelation function rho(k), averaged over chains (FFT, O(n log n)).

    rho(k) = C(k) / C(0) with C(k) the chain-averaged autocovariance
    ``mean_c (1/n) sum_t (x_t - xbar_c)(x_{t+k} - xbar_c)`` (each chain about its
    own mean; the biased 1/n estimator, which keeps the sum over lags stable).

    Parameters
    ----------
    series : array or Tensor, shape (n_steps, n_chains) or (n_steps,)
        A scalar observable along the chains, time first.
    max_lag : int, optional
        Largest lag returned, ``0 <= max_lag < n_steps`` (default ``n_steps - 1``).

    Returns
    -------
    ndarray, shape (max_lag + 1,), with ``rho[0] == 1``.
    """
    x = _as_series(series)
    n = x.shape[0]
    if max_lag is None:
        max_lag = n - 1
    else:
        max_lag = _check_count("max_lag", max_lag, 0)
        if max_lag >= n:
            raise ValueError(f"max_lag must be an int in [0, n_steps - 1] = [0, {n - 1}], got {max_lag!r}")
    x = x - x.mean(axis=0)
    size = 1 << (2 * n - 1).bit_length()  # zero-padding to >= 2n avoids circular wrap-around
    f = np.fft.rfft(x, n=size, axis=0)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=0)[:n].mean(axis=1) / n
    if acov[0] <= 0:
        raise ValueError("the series is constant along every chain, so its autocorrelation is undefined "
                         "(did the chains move? check the acceptance rate)")
    return acov[: max_lag + 1] / acov[0]


def integrated_autocorrelation_time(series, c: float = 5.0) -> float:
    """Integrated autocorrelation time tau = 1 + 2 sum_{k>=1} rho(k), with Sokal's automatic window.

    The sum is cut at the smallest window M with ``M >= c * tau(M)``, where
    ``tau(M) = 1 + 2 sum_{k=1}^{M} rho(k)`` (Sokal 1997; ``c = 5`` is his
    choice, fine for roughly exponential decay). Variances of chain averages
    are ``tau`` times larger than for independent samples.

    Parameters
    ----------
    series : array or Tensor, shape (n_steps, n_chains) or (n_steps,)
    c : float
        Window constant, > 0.

    Returns
    -------
    float
        tau in units of steps (of the series as given, i.e. after thinning).
        Warns (``RuntimeWarning``) when the series is shorter than 50 tau
        (emcee's rule of thumb): the estimate is then unreliable, usually too
        small, so run longer. Anticorrelated series can
        give tau < 1; tau is floored at ``1 / log10(n_steps * n_chains)`` (the
        cap on the effective sample size that ArviZ also uses).
    """
    if not (isinstance(c, (int, float, np.floating)) and c > 0):
        raise ValueError(f"c must be a positive number, got {c!r}")
    x = _as_series(series)
    rho = autocorrelation(x)
    taus = 2.0 * np.cumsum(rho) - 1.0  # taus[M] = 1 + 2 sum_{k=1}^{M} rho(k)
    ok = np.arange(len(taus)) >= c * taus
    tau = taus[np.argmax(ok)] if ok.any() else taus.max()
    if not ok.any() or x.shape[0] < 50 * tau:
        warnings.warn(f"the series is too short for a reliable tau: {x.shape[0]} steps, fewer than 50 tau "
                      f"(tau ~ {tau:.1f}); run the chains longer", RuntimeWarning, stacklevel=2)
    return float(max(tau, 1.0 / math.log10(max(x.size, 10))))


def effective_sample_size(series, c: float = 5.0) -> float:
    """Effective number of independent samples, ``n_steps * n_chains / tau``.

    ``tau`` is :func:`integrated_autocorrelation_time` (same ``c``). The
    standard error of the mean of the series is ``std / sqrt(ESS)``.

    Parameters
    ----------
    series : array or Tensor, shape (n_steps, n_chains) or (n_steps,)

    Returns
    -------
    float
    """
    x = _as_series(series)
    return x.size / integrated_autocorrelation_time(x, c)


def r_hat(series) -> float:
    """Split-R-hat (Gelman-Rubin potential scale reduction, BDA3 section 11.4).

    Each chain is split into halves (the last step is dropped if ``n_steps`` is
    odd), giving m = 2 n_chains sequences of length n. With W the mean of
    their variances and B/n the variance of their means,
    ``R = sqrt(((n - 1)/n W + B/n) / W)``. Near 1 (say below 1.01-1.05) when
    the chains agree; values above 1.1 mean they have not mixed. Splitting also
    catches a trend within each chain. (No rank-normalization.)

    Parameters
    ----------
    series : array or Tensor, shape (n_steps, n_chains)
        At least 2 chains and 4 steps.

    Returns
    -------
    float (``inf`` when every chain is constant but they differ; 1.0 when all are equal and constant).
    """
    x = _as_series(series, min_steps=4, min_chains=2)
    n = x.shape[0] // 2
    halves = np.concatenate([x[:n], x[n:2 * n]], axis=1)  # (n, 2 n_chains)
    within = halves.var(axis=0, ddof=1).mean()
    between_over_n = halves.mean(axis=0).var(ddof=1)
    if within == 0:
        return 1.0 if between_over_n == 0 else math.inf
    return float(math.sqrt(((n - 1) / n * within + between_over_n) / within))
