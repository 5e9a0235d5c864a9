"""Markov chain Monte Carlo: Metropolis-Hastings, block Gibbs sampling for RBMs, diagnostics.

Three parts, each usable on its own:

* :func:`metropolis_hastings` runs a batch of independent chains for any
  log-probability known up to a constant, with a symmetric proposal
  (:func:`gaussian_proposal` for continuous states, :func:`flip_one_bit_proposal`
  for binary vectors). A proposal ``y ~ q(. | x)`` is accepted with probability
  ``min(1, p(y) / p(x))``; ``Z`` cancels, which is the whole point.
* :func:`gibbs_sample` and :class:`PersistentChains` run block Gibbs sampling in
  a :class:`helpers.rbm.BernoulliRBM`: one *sweep* is ``x -> h ~ p(h | x) -> x ~ p(x | h)``.
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

from ._linear import linear_for
from ._validate import check_count as _check_count, check_generator as _check_generator

__all__ = [
    "MHResult", "metropolis_hastings", "gaussian_proposal", "flip_one_bit_proposal",
    "gibbs_sample", "PersistentChains",
    "acceptance_rate", "autocorrelation", "integrated_autocorrelation_time", "effective_sample_size", "r_hat",
]




# ============================================================================ Metropolis-Hastings
class MHResult(NamedTuple):
    """Output of :func:`metropolis_hastings`.

    Attributes
    ----------
    samples : Tensor, shape (n_kept, n_chains, d)
        States after steps ``thin, 2 thin, ...`` (``n_kept = n_steps // thin``).
    acceptance_rate : Tensor, shape (n_chains,), float64
        Fraction of the ``n_steps`` proposals each chain accepted.
    log_prob : Tensor, shape (n_kept, n_chains)
        ``log_prob`` of the kept states (nats, up to the same constant as ``log_prob``).
    """

    samples: torch.Tensor
    acceptance_rate: torch.Tensor
    log_prob: torch.Tensor


def _evaluate(log_prob, x, n_chains, what):
    lp = log_prob(x)
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


def metropolis_hastings(log_prob: Callable, x0: torch.Tensor, n_steps: int, proposal: Callable,
                        generator: torch.Generator | None = None, thin: int = 1) -> MHResult:
    """Metropolis-Hastings with a symmetric proposal over a batch of independent chains.

    Each step proposes ``y = proposal(x, generator)`` for every chain and accepts
    it with probability ``min(1, exp(log_prob(y) - log_prob(x)))``; a rejected
    chain keeps its state (and the repeated state counts as a sample). The
    proposal must be symmetric, ``q(y | x) = q(x | y)``, because no Hastings
    correction is applied.

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
        ``proposal(x, generator)`` returns new states of the same shape as ``x``;
        see :func:`gaussian_proposal` and :func:`flip_one_bit_proposal`.
    generator : torch.Generator, optional
        Source of the proposals and of the accept/reject uniforms.
    thin : int
        Keep every ``thin``-th state (``1 <= thin <= n_steps``).

    Returns
    -------
    MHResult
        ``samples`` (n_steps // thin, n_chains, d), ``acceptance_rate``
        (n_chains,), ``log_prob`` (n_steps // thin, n_chains).
    """
    if not callable(log_prob):
        raise TypeError(f"log_prob must be a callable x -> log p(x) (shape (n_chains,)), got "
                        f"{type(log_prob).__name__}; pass a function, e.g. lambda x: -0.5 * (x**2).sum(1)")
    if not callable(proposal):
        raise TypeError(f"proposal must be a callable (x, generator) -> new x, got {type(proposal).__name__}; "
                        "use gaussian_proposal(scale) or flip_one_bit_proposal()")
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor of shape (n_chains, d), got {type(x0).__name__}")
    if x0.dim() != 2:
        hint = " (use x0[:, None] for one-dimensional states)" if x0.dim() == 1 else ""
        raise ValueError(f"x0 must have shape (n_chains, d), got {tuple(x0.shape)}{hint}")
    n_steps = _check_count("n_steps", n_steps)
    thin = _check_count("thin", thin)
    if thin > n_steps:
        raise ValueError(f"thin={thin} is larger than n_steps={n_steps}, so no sample would be kept; "
                         "use thin <= n_steps")
    generator = _check_generator(generator)

    n_chains = x0.shape[0]
    with torch.no_grad():
        x = x0.clone()
        lp = _evaluate(log_prob, x, n_chains, "x0")
        samples = torch.empty((n_steps // thin,) + tuple(x.shape), dtype=x.dtype, device=x.device)
        kept_lp = torch.empty((n_steps // thin, n_chains), dtype=lp.dtype, device=lp.device)
        n_accepted = torch.zeros(n_chains, dtype=torch.int64, device=x.device)
        for step in range(1, n_steps + 1):
            y = proposal(x, generator)
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"the proposal must return a tensor of the same shape as x, {tuple(x.shape)}, "
                                 f"but returned {got} at step {step}")
            lp_y = _evaluate(log_prob, y, n_chains, f"the proposals of step {step}")
            log_u = torch.rand(n_chains, generator=generator, dtype=lp.dtype, device=lp.device).log_()
            # Accept when log u < log p(y) - log p(x). When both are -inf the difference
            # is NaN and the comparison is False: a chain stuck at p = 0 stays put.
            accept = log_u < lp_y - lp
            x = torch.where(accept[:, None], y.to(x.dtype), x)
            lp = torch.where(accept, lp_y, lp)
            n_accepted += accept
            if step % thin == 0:
                samples[step // thin - 1] = x
                kept_lp[step // thin - 1] = lp
    return MHResult(samples, n_accepted.to(torch.float64) / n_steps, kept_lp)


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


# ============================================================================ Gibbs sampling in an RBM
def _gibbs_sweeps(x, W, a, b, n_sweeps, generator, keep_every=None):
    """The inner loop: ``n_sweeps`` sweeps x -> h -> x on already validated tensors.

    Same computation as ``rbm.sample_h_given_x`` followed by ``rbm.sample_x_given_h``
    (probabilities, then one uniform per unit and row: unit on when u < p),
    without re-validating the inputs. Returns the final ``x``, or the kept
    states stacked (n_sweeps // keep_every, n_chains, n_visible).
    """
    lin = linear_for(W.dtype, W.device)  # sigmoid(inp @ weight.T + bias), see helpers._linear
    # contiguous once here rather than once per sweep; W.T is then the transpose of a contiguous matrix
    W, a, b, x = W.contiguous(), a.contiguous(), b.contiguous(), x.contiguous()
    Wt = W.T  # (n_hidden, n_visible): the hidden layer's weight in (out, in) form
    u_h = torch.empty((x.shape[0], W.shape[1]), dtype=W.dtype, device=W.device)
    u_x = torch.empty_like(x)
    kept = None
    if keep_every is not None:
        kept = torch.empty((n_sweeps // keep_every,) + tuple(x.shape), dtype=x.dtype, device=x.device)
    for sweep in range(1, n_sweeps + 1):
        h = lin(x, Wt, b)                       # p(h = 1 | x), a fresh tensor ...
        torch.lt(u_h.uniform_(generator=generator), h, out=h)  # ... overwritten in place by the 0/1 draw
        x = lin(h, W, a)                        # p(x = 1 | h)
        torch.lt(u_x.uniform_(generator=generator), x, out=x)
        if kept is not None and sweep % keep_every == 0:
            kept[sweep // keep_every - 1] = x
    return x if kept is None else kept


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
    with torch.no_grad():
        return _gibbs_sweeps(x, rbm.W.detach(), rbm.a.detach(), rbm.b.detach(), n_sweeps, generator, keep_every)


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

    def step(self, n_sweeps: int = 1) -> torch.Tensor:
        """Advance every chain by ``n_sweeps`` Gibbs sweeps (>= 1) and return the
        new visible states, shape (n_chains, n_visible)."""
        n_sweeps = _check_count("n_sweeps", n_sweeps)
        rbm = self.rbm
        with torch.no_grad():
            self.x = _gibbs_sweeps(self.x, rbm.W.detach(), rbm.a.detach(), rbm.b.detach(), n_sweeps, self.generator)
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
    elif isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or not 0 <= max_lag < n:
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
