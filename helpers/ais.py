"""Annealed importance sampling (AIS) for the partition function of a Bernoulli RBM.

Salakhutdinov & Murray (2008), "On the quantitative analysis of deep belief
networks". The base model A has ``W = 0``, ``b = 0`` and a visible bias
``a_A`` (the base rates of the data, :func:`helpers.rbm.base_rate_visible_bias`),
so ``Z_A = 2**N prod_i (1 + exp(a_A_i))`` is known. The intermediate
distributions ``0 = beta_0 < beta_1 < ... < beta_K = 1`` interpolate the
parameters::

    p*_k(x) = exp((1 - beta_k) a_A.x + beta_k a.x) prod_j (1 + exp(beta_k (b_j + (x W)_j)))

(``p*_0`` is the base model, ``p*_K`` the RBM's ``exp(-F(x))``). One run draws
``x_1 ~ p_0``, then alternates a weight update and a block-Gibbs transition
that leaves ``p_k`` invariant (``h_j ~ sigmoid(beta_k (b_j + (x W)_j))``,
``x_i ~ sigmoid((1 - beta_k) a_A_i + beta_k (a_i + (W h)_i))``)::

    log w = sum_{k=1..K} [log p*_k(x_k) - log p*_{k-1}(x_k)],   x_{k+1} ~ T_k(x_k).

``E[w] = Z / Z_A``, so ``log Z ~ log Z_A + log mean(w)``. The estimate of
``log Z`` is consistent but, by Jensen's inequality, biased low for a finite
number of runs: a too-short schedule tends to *under*-estimate ``log Z`` and
so to over-estimate log-likelihoods.

All runs advance together (one batch of ``n_runs`` chains); the loop is over
the inverse temperatures. Log-weights are accumulated in float64.

The other side of the bracket: :func:`reverse_ais_log_partition` anneals backwards from exact
samples (:func:`exact_samples`) and over-estimates log Z in expectation (bidirectional Monte
Carlo, Grosse et al. 2015); :func:`raise_log_likelihood` anneals backwards from test images and
under-estimates their log-likelihood (RAISE, Burda et al. 2015).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import checkpoint as checkpoint_io
from ._linear import linear_for
from ._numerics import bernoulli as _bernoulli, softplus as _softplus
from ._validate import check_count
from .config import threads_for
from .rbm import DEFAULT_CHUNK, MAX_EXACT_UNITS, BernoulliRBM, base_rate_visible_bias

__all__ = ["AISResult", "LogLikelihood", "ais_log_partition", "anneal", "log_likelihood", "base_log_partition",
           "ExactSamples", "exact_samples", "reverse_anneal", "reverse_ais_log_partition", "raise_log_likelihood"]


_AIS_FORMAT = "helpers.ais result 1"


class AISResult(NamedTuple):
    """Result of :func:`ais_log_partition` (all in nats)."""

    #: The estimate of log Z: ``log Z_A + log(mean_r w_r)``, computed with a log-sum-exp.
    log_z: float
    #: Standard error of ``log_z`` by the delta method: ``std(w) / (sqrt(n_runs) * mean(w))``
    #: (sample std, ddof=1; NaN for a single run). It is itself estimated from the
    #: weights, so it can be too small when the weights are heavy-tailed.
    stderr: float
    #: ``log w_r`` of every run, Tensor (n_runs,), float64.
    log_weights: torch.Tensor
    #: Exact log Z of the base model, ``N log 2 + sum_i softplus(a_A_i)``.
    log_z_base: float
    #: Effective sample size ``(sum w)^2 / sum w^2`` of the weights (1 to n_runs).
    ess: float


class LogLikelihood(NamedTuple):
    """Result of :func:`log_likelihood`: ``-F(x) - log Z`` in nats."""

    #: Tensor (B,), float64: nats per image.
    per_image: torch.Tensor
    #: Their mean, nats per image.
    mean: float


def base_log_partition(n_hidden: int, base_visible_bias: torch.Tensor) -> float:
    """log Z of the base model (``W = 0``, ``b = 0``, visible bias ``a_A``): ``N log 2 + sum_i softplus(a_A_i)``."""
    return n_hidden * math.log(2.0) + float(_softplus(base_visible_bias.to(torch.float64)).sum())


def _betas(n_betas, betas):
    if betas is not None and n_betas is not None:
        raise ValueError("give either n_betas (a linear schedule) or betas (a tensor), not both")
    if betas is None:
        n_betas = 10000 if n_betas is None else n_betas
        if isinstance(n_betas, torch.Tensor):  # n_betas=<tensor> reads as betas=<tensor>
            betas = n_betas
        else:
            n_betas = check_count("n_betas", n_betas, 2)
            return torch.linspace(0.0, 1.0, n_betas, dtype=torch.float64)
    if not isinstance(betas, torch.Tensor) or betas.dim() != 1 or betas.numel() < 2:
        raise ValueError("betas must be a 1-D tensor with at least 2 inverse temperatures, from 0 to 1")
    betas = betas.detach().to("cpu", torch.float64)
    if betas[0] != 0 or betas[-1] != 1 or (torch.diff(betas) <= 0).any():
        raise ValueError(f"betas must increase strictly from exactly 0 to exactly 1; got {betas[0].item()} ... "
                         f"{betas[-1].item()} ({int((torch.diff(betas) <= 0).sum())} non-increasing steps)")
    return betas


def ais_log_partition(rbm: BernoulliRBM, n_runs: int = 100, n_betas: int | None = None, *,
                      betas: torch.Tensor | None = None, base_visible_bias: torch.Tensor | None = None,
                      data: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      progress: bool = True, checkpoint=None) -> AISResult:
    """Estimate log Z of ``rbm`` (nats) by annealed importance sampling from a base-rate model.

    Parameters
    ----------
    rbm : BernoulliRBM
        float32 or float64; the Gibbs transitions run in the model's dtype, the
        weights are accumulated in float64.
    n_runs : int >= 1
        Independent AIS runs (chains), all advanced together.
    n_betas : int >= 2, default 10000
        Number of inverse temperatures, linearly spaced from 0 to 1 (a tensor here
        is read as ``betas``).
    betas : Tensor (K + 1,), optional
        A custom schedule, strictly increasing from exactly 0 to exactly 1
        (e.g. denser near 1). Not together with ``n_betas``.
    base_visible_bias : Tensor (n_visible,), optional
        Visible bias ``a_A`` of the base model.
    data : Tensor (n, n_visible), binary, optional
        Fit ``a_A = base_rate_visible_bias(data)`` instead (recommended: the
        closer the base model is to the RBM, the lower the variance).
        Neither given: ``a_A = 0`` (uniform base model).
    generator : torch.Generator, optional
        Source of all draws (on the model's device).
    progress : bool
        ``tqdm.auto`` progress bar over the betas.
    checkpoint : path, optional
        Cache the run's log-weights there (lecturer mode: ``helpers.config.checkpoint_path``).
        A file made for the same RBM parameters, base model, schedule, number of runs and
        generator state is loaded instead of annealing again (weights-only loading, as for
        the trainers' checkpoints); a loaded result leaves ``generator`` untouched.

    Returns
    -------
    AISResult
        ``log_z``, ``stderr`` (delta method), ``log_weights`` (n_runs,),
        ``log_z_base``, ``ess``.

    Raises
    ------
    ValueError
        ``n_runs < 1``, fewer than 2 betas, a schedule that does not run from 0
        to 1, both or a malformed base bias / data.
    """
    if not isinstance(rbm, BernoulliRBM):
        raise TypeError(f"rbm must be a BernoulliRBM, got {type(rbm).__name__}")
    n_runs = check_count("n_runs", n_runs)
    schedule = _betas(n_betas, betas)
    if base_visible_bias is not None and data is not None:
        raise ValueError("give base_visible_bias or data (to fit it), not both")
    dt, dev, M, N = rbm.dtype, rbm.device, rbm.n_visible, rbm.n_hidden
    if data is not None:
        a_base = base_rate_visible_bias(rbm.check_visible(data), dtype=dt).to(dev)
    elif base_visible_bias is not None:
        if not isinstance(base_visible_bias, torch.Tensor) or tuple(base_visible_bias.shape) != (M,):
            raise ValueError(f"base_visible_bias must be a tensor of shape ({M},)")
        a_base = base_visible_bias.detach().to(dev, dt)
        if not torch.isfinite(a_base).all():
            raise ValueError("base_visible_bias must be finite")
    else:
        a_base = torch.zeros(M, dtype=dt, device=dev)
    log_z_base = base_log_partition(N, a_base)

    def runs():
        with threads_for(n_runs * M * N):
            return {"log_weights": anneal(rbm, a_base, schedule, n_runs, generator, progress)}

    fingerprint = None if checkpoint is None else {
        "rbm": checkpoint_io.digest(rbm.W, rbm.a, rbm.b), "base": checkpoint_io.digest(a_base),
        "betas": checkpoint_io.digest(schedule), "n_runs": n_runs,
        "generator": "none" if generator is None else checkpoint_io.digest(generator.get_state())}
    log_w = checkpoint_io.cached(checkpoint, fingerprint, _AIS_FORMAT, runs, what="AIS result",
                                 redo="running AIS")["log_weights"]
    log_mean_w = torch.logsumexp(log_w, 0).item() - math.log(n_runs)
    w = torch.exp(log_w - log_w.max())  # scaled weights in (0, 1], the largest is 1
    ess = float(w.sum() ** 2 / (w ** 2).sum())
    stderr = float(w.std() / (math.sqrt(n_runs) * w.mean())) if n_runs > 1 else math.nan
    return AISResult(log_z=log_z_base + log_mean_w, stderr=stderr, log_weights=log_w,
                     log_z_base=log_z_base, ess=ess)


def anneal(rbm: BernoulliRBM, base_visible_bias: torch.Tensor, betas: torch.Tensor, n_runs: int,
           generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """The AIS runs themselves: ``n_runs`` log-weights log w_r (nats), float64 on the CPU, shape (n_runs,).

    ``x_1`` is drawn from the base model (independent pixels, on with probability
    ``sigmoid(base_visible_bias)``); then for k = 1..K the weight gains
    ``log p*_k(x_k) - log p*_{k-1}(x_k)`` and x moves by one sweep of the tempered RBM at
    ``betas[k]`` (:meth:`helpers.rbm.BernoulliRBM.gibbs_sweep`), which leaves p_k invariant.
    All runs advance together. ``betas`` (K + 1,) rise from 0 to 1 (checked by
    :func:`ais_log_partition`, which also validates everything else and adds ``log Z_A``).
    """
    from tqdm.auto import tqdm

    dt, dev, N = rbm.dtype, rbm.device, rbm.n_hidden
    with torch.no_grad():
        a_base = base_visible_bias.to(dt)
        # one product per step gives both x W (N columns) and x.(a - a_A) (last column), on helpers._linear's
        # kernel: lin(inp, weight, bias, "none") = inp @ weight.T + bias
        lin = linear_for(dt, dev)
        Wd = torch.cat([rbm.W.detach(), (rbm.a.detach() - a_base)[:, None]], 1)
        b64 = rbm.b.detach().to(torch.float64)
        x = _bernoulli(torch.sigmoid(a_base).expand(n_runs, -1), generator)   # x_1 ~ p_0
        log_w = torch.zeros(n_runs, dtype=torch.float64, device=dev)
        workspace = {}
        beta_list = betas.tolist()
        K = len(beta_list) - 1
        for step in tqdm(range(1, K + 1), desc="AIS", unit="beta", disable=not progress, mininterval=0.5):
            prev, beta = beta_list[step - 1], beta_list[step]
            ext = lin(x, Wd.T, None, "none").to(torch.float64)
            pre = ext[:, :N] + b64  # b + x W, float64
            # log p*_k(x) - log p*_{k-1}(x) at the current x
            log_w += (beta - prev) * ext[:, N] + (_softplus(beta * pre) - _softplus(prev * pre)).sum(1)
            if step < K:  # a transition that leaves p_k invariant
                x = rbm.gibbs_sweep(x, generator, beta=beta, base_visible_bias=a_base, pre=pre, workspace=workspace)
    return log_w.cpu()


def log_likelihood(rbm: BernoulliRBM, x: torch.Tensor, log_z) -> LogLikelihood:
    """log p(x) = -F(x) - log Z in nats per image, and the mean over the rows of ``x``.

    Parameters
    ----------
    x : Tensor (B, n_visible), binary
    log_z : float, Tensor of shape (), or AISResult
        For example ``ais_log_partition(rbm, ...)`` or ``rbm.log_partition_exact()``.
        An error of ``d`` nats in ``log_z`` shifts every value by ``-d``
        (with an AISResult, ``log_z.stderr`` is the standard error of the mean
        that comes from ``log Z``).

    Returns
    -------
    LogLikelihood
        ``per_image`` (B,) float64 and ``mean``.
    """
    if isinstance(log_z, AISResult):
        log_z = log_z.log_z
    log_z = float(log_z)
    if not math.isfinite(log_z):
        raise ValueError(f"log_z must be finite, got {log_z}")
    x = rbm.check_visible(x)
    with torch.no_grad():
        per_image = -rbm.free_energy(x).to(torch.float64) - log_z
    return LogLikelihood(per_image=per_image.cpu(), mean=float(per_image.mean()))


# ---------------------------------------------------------------------- reverse annealing
#
# Forward AIS is biased low in log Z (Jensen), so its log-likelihoods are optimistic. Two reverse runs
# give the other side (Grosse, Ghahramani & Adams 2015; Burda, Grosse & Salakhutdinov 2015):
#
# * from exact samples of the RBM, annealing backwards (beta = 1 -> 0) gives weights with E[w] = Z_A / Z,
#   so log Z_A - log mean(w) over-estimates log Z in expectation: with forward AIS a bracket;
# * from test images (RAISE), the same backward chain is an importance sampler for the *annealing model*
#   (x_0 ~ p_0, then T_1, ..., T_K forward; its last state is the image), a proper normalised model close
#   to the RBM for slow schedules: its estimate is a stochastic lower bound on that model's log-likelihood.

class ExactSamples(NamedTuple):
    """Result of :func:`exact_samples`."""

    #: Tensor (n, n_visible), binary, in the RBM's dtype and on its device: independent draws of p(x).
    x: torch.Tensor
    #: Exact log Z in nats (from the same enumeration, float64).
    log_z: float


def exact_samples(rbm: BernoulliRBM, n_samples: int, generator: torch.Generator | None = None, *,
                  chunk: int = DEFAULT_CHUNK, max_units: int = MAX_EXACT_UNITS, checkpoint=None) -> ExactSamples:
    """Independent exact samples x ~ p(x) of a small RBM, and its exact log Z, from one enumeration.

    The smaller layer is enumerated in float64 (all 2^k states, k = min(n_visible, n_hidden) <= ``max_units``,
    in chunks of ``chunk``). With fewer hidden units, h is drawn from its exact marginal
    p(h) proportional to exp(b.h + sum_i softplus(a_i + (W h)_i)) by inverting the cumulative sum, then
    x ~ p(x | h); otherwise x is drawn from its marginal directly. All draws come from ``generator``
    (on the CPU). Cost: that of :meth:`BernoulliRBM.log_partition_exact`. ``checkpoint`` caches the
    samples and log Z for the same parameters, number of samples and generator state (lecturer mode); a
    loaded result leaves ``generator`` untouched.
    """
    if not isinstance(rbm, BernoulliRBM):
        raise TypeError(f"rbm must be a BernoulliRBM, got {type(rbm).__name__}")
    n_samples = check_count("n_samples", n_samples)
    k = min(rbm.n_visible, rbm.n_hidden)
    if k > max_units:
        raise ValueError(f"exact samples need 2**{k} states of the smaller layer ({rbm.n_visible} visible, "
                         f"{rbm.n_hidden} hidden); the limit is {max_units} units. Draw approximate samples with "
                         "long Gibbs chains instead (helpers.rbm.gibbs_sweeps), and say that they are approximate.")
    if checkpoint is not None:
        fingerprint = {"rbm": checkpoint_io.digest(rbm.W, rbm.a, rbm.b), "n_samples": n_samples,
                       "generator": "none" if generator is None else checkpoint_io.digest(generator.get_state())}

        def compute():
            res = exact_samples(rbm, n_samples, generator, chunk=chunk, max_units=max_units)
            return {"x": res.x.cpu(), "log_z": torch.tensor(res.log_z, dtype=torch.float64)}

        out = checkpoint_io.cached(checkpoint, fingerprint, _EXACT_FORMAT, compute, what="exact samples",
                                   redo="enumerating")
        return ExactSamples(x=out["x"].to(rbm.device, rbm.dtype), log_z=float(out["log_z"]))
    r64 = BernoulliRBM(rbm.n_visible, rbm.n_hidden, dtype=torch.float64)
    r64.W, r64.a, r64.b = (t.detach().to("cpu", torch.float64) for t in (rbm.W, rbm.a, rbm.b))
    layer = "hidden" if rbm.n_hidden <= rbm.n_visible else "visible"
    bits = torch.arange(k)
    with torch.no_grad(), threads_for(chunk * rbm.n_visible * rbm.n_hidden):
        log_m = torch.cat([r64.unnormalised_log_marginal(((torch.arange(s, min(s + chunk, 2**k))[:, None] >> bits) & 1)
                                                         .to(torch.float64), layer)
                           for s in range(0, 2**k, chunk)])
        log_z = torch.logsumexp(log_m, 0)
        cdf = torch.cumsum(torch.exp(log_m - log_z), 0)
        u = torch.rand(n_samples, generator=generator, dtype=torch.float64) * cdf[-1]
        idx = torch.searchsorted(cdf, u).clamp_(max=2**k - 1)
        states = ((idx[:, None] >> bits) & 1).to(torch.float64)
        x = states if layer == "visible" else _bernoulli(torch.sigmoid(states @ r64.W.T + r64.a), generator)
    return ExactSamples(x=x.to(rbm.device, rbm.dtype), log_z=float(log_z))


def _base_bias(rbm, base_visible_bias, data):
    """The base model's visible bias a_A (as in :func:`ais_log_partition`): fitted to ``data``, given, or 0."""
    if base_visible_bias is not None and data is not None:
        raise ValueError("give base_visible_bias or data (to fit it), not both")
    dt, dev, M = rbm.dtype, rbm.device, rbm.n_visible
    if data is not None:
        return base_rate_visible_bias(rbm.check_visible(data), dtype=dt).to(dev)
    if base_visible_bias is None:
        return torch.zeros(M, dtype=dt, device=dev)
    if not isinstance(base_visible_bias, torch.Tensor) or tuple(base_visible_bias.shape) != (M,):
        raise ValueError(f"base_visible_bias must be a tensor of shape ({M},)")
    if not torch.isfinite(base_visible_bias).all():
        raise ValueError("base_visible_bias must be finite")
    return base_visible_bias.detach().to(dev, dt)


def _tempered_terms(rbm, a_base):
    """The product AIS uses for its weights: x -> (x W | x.(a - a_A)) in float64 via helpers._linear."""
    lin = linear_for(rbm.dtype, rbm.device)
    Wd = torch.cat([rbm.W.detach(), (rbm.a.detach() - a_base)[:, None]], 1)
    b64 = rbm.b.detach().to(torch.float64)
    N = rbm.n_hidden

    def terms(x):
        ext = lin(x, Wd.T, None, "none").to(torch.float64)
        return ext[:, :N] + b64, ext[:, N]       # pre = b + x W, and x.(a - a_A)

    return terms


def _log_ratio(pre, lin_a, beta, prev):
    """log p*_beta(x) - log p*_prev(x) from ``pre = b + x W`` and ``lin_a = x.(a - a_A)``, float64 (rows,)."""
    return (beta - prev) * lin_a + (_softplus(beta * pre) - _softplus(prev * pre)).sum(1)


def reverse_anneal(rbm: BernoulliRBM, base_visible_bias: torch.Tensor, betas: torch.Tensor, x_start: torch.Tensor,
                   generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """AIS run backwards, from ``x_start`` at beta = 1 down to the base model: log-weights (nats), float64, (rows,).

    With x_K = ``x_start`` (rows, n_visible) and k = K, ..., 1::

        log w += log p*_{k-1}(x_k) - log p*_k(x_k),     then x_{k-1} ~ T_{k-1}(. | x_k)   (for k > 1),

    with the tempered sweeps of :func:`anneal` in the reverse order (each is reversible, so the reversed
    chain uses the same kernels). Started from exact samples of the RBM, E[w] = Z_A / Z exactly, for any
    schedule (:func:`reverse_ais_log_partition`). No input checks (see that function).
    """
    from tqdm.auto import tqdm

    with torch.no_grad():
        a_base = base_visible_bias.to(rbm.dtype)
        terms = _tempered_terms(rbm, a_base)
        x = x_start.to(rbm.dtype)
        log_w = torch.zeros(len(x), dtype=torch.float64, device=rbm.device)
        workspace = {}
        beta_list = betas.tolist()
        K = len(beta_list) - 1
        for step in tqdm(range(K, 0, -1), desc="reverse AIS", unit="beta", disable=not progress, mininterval=0.5):
            beta, prev = beta_list[step], beta_list[step - 1]
            pre, lin_a = terms(x)
            log_w -= _log_ratio(pre, lin_a, beta, prev)
            if step > 1:  # a transition that leaves p_{k-1} invariant
                x = rbm.gibbs_sweep(x, generator, beta=prev, base_visible_bias=a_base, pre=pre, workspace=workspace)
    return log_w.cpu()


def _summary(log_w, log_z_base, sign):
    """AISResult from log-weights: log Z = log Z_A + sign * log mean(w), delta-method stderr, ESS."""
    n_runs = len(log_w)
    log_mean_w = torch.logsumexp(log_w, 0).item() - math.log(n_runs)
    w = torch.exp(log_w - log_w.max())
    ess = float(w.sum() ** 2 / (w ** 2).sum())
    stderr = float(w.std() / (math.sqrt(n_runs) * w.mean())) if n_runs > 1 else math.nan
    return AISResult(log_z=log_z_base + sign * log_mean_w, stderr=stderr, log_weights=log_w,
                     log_z_base=log_z_base, ess=ess)


def reverse_ais_log_partition(rbm: BernoulliRBM, samples: torch.Tensor, n_betas: int | None = None, *,
                              betas: torch.Tensor | None = None, base_visible_bias: torch.Tensor | None = None,
                              data: torch.Tensor | None = None, generator: torch.Generator | None = None,
                              progress: bool = True, checkpoint=None) -> AISResult:
    """Estimate log Z (nats) by annealing backwards from exact samples: the upper side of the AIS bracket.

    One reverse run per row of ``samples`` (:func:`reverse_anneal`). When the rows are exact,
    independent samples of the RBM (:func:`exact_samples`), each weight has E[w] = Z_A / Z, so

        log Z_rev = log Z_A - log mean(w)    has    E[log Z_rev] >= log Z     (Jensen's inequality):

    a stochastic *upper* bound, where forward AIS (:func:`ais_log_partition`) gives a stochastic lower
    one. Together they bracket log Z, and the width of the bracket measures how far both are from it
    (bidirectional Monte Carlo, Grosse, Ghahramani & Adams 2015). Started from approximate samples
    (e.g. Gibbs chains) the upper bound no longer holds. Parameters as in :func:`ais_log_partition`;
    ``samples`` (n_runs, n_visible) binary.

    Returns
    -------
    AISResult
        ``log_z`` (the reverse estimate), ``stderr`` (delta method on the reverse weights),
        ``log_weights`` (the reverse log-weights, (n_runs,)), ``log_z_base``, ``ess``.
    """
    if not isinstance(rbm, BernoulliRBM):
        raise TypeError(f"rbm must be a BernoulliRBM, got {type(rbm).__name__}")
    x0 = rbm.check_visible(samples)
    schedule = _betas(n_betas, betas)
    a_base = _base_bias(rbm, base_visible_bias, data)
    log_z_base = base_log_partition(rbm.n_hidden, a_base)

    def runs():
        with threads_for(len(x0) * rbm.n_visible * rbm.n_hidden):
            return {"log_weights": reverse_anneal(rbm, a_base, schedule, x0, generator, progress)}

    fingerprint = None if checkpoint is None else {
        "rbm": checkpoint_io.digest(rbm.W, rbm.a, rbm.b), "base": checkpoint_io.digest(a_base),
        "betas": checkpoint_io.digest(schedule), "samples": checkpoint_io.digest(x0),
        "generator": "none" if generator is None else checkpoint_io.digest(generator.get_state())}
    log_w = checkpoint_io.cached(checkpoint, fingerprint, _REVERSE_FORMAT, runs, what="reverse AIS result",
                                 redo="running reverse AIS")["log_weights"]
    return _summary(log_w, log_z_base, -1.0)


def raise_log_likelihood(rbm: BernoulliRBM, x: torch.Tensor, n_runs: int = 1, n_betas: int | None = None, *,
                         betas: torch.Tensor | None = None, base_visible_bias: torch.Tensor | None = None,
                         data: torch.Tensor | None = None, generator: torch.Generator | None = None,
                         progress: bool = True, checkpoint=None) -> LogLikelihood:
    """RAISE (Burda, Grosse & Salakhutdinov 2015): a conservative estimate of log p(x) started from the data.

    The *annealing model* draws x_0 from the base model p_0 and applies the tempered sweeps T_1, ..., T_K
    (T_K is the RBM's own sweep); its last state is the image. It is a proper, normalised model,
    p_ann(v) = sum over paths p_0(x_0) T_1(x_1 | x_0) ... T_K(v | x_{K-1}), and p_ann -> p (the RBM) as the
    schedule gets slower. Running the chain backwards from the test image v, x_{k-1} ~ T_k(. | x_k) for
    k = K, ..., 1, is an importance sampler for it with weight (each T_k is reversible with respect to p_k)::

        log w = -F(v) - log Z_A + sum_{k=K..1} [log p*_{k-1}(x_{k-1}) - log p*_k(x_{k-1})],   E[w] = p_ann(v).

    With ``n_runs`` chains per image the estimate is log mean(w): E[estimate] <= log p_ann(v) (Jensen), a
    stochastic lower bound on the log-likelihood of the annealing model. It needs no log Z, and unlike
    forward AIS it errs towards *under*-estimating: a number it reports is (in expectation) achieved by a
    model one could sample from. Parameters as in :func:`ais_log_partition`; ``x`` (B, n_visible) binary.
    Cost: ``B * n_runs`` chains of K sweeps.

    Returns
    -------
    LogLikelihood
        ``per_image`` (B,) float64 nats and ``mean``.
    """
    if not isinstance(rbm, BernoulliRBM):
        raise TypeError(f"rbm must be a BernoulliRBM, got {type(rbm).__name__}")
    v = rbm.check_visible(x)
    n_runs = check_count("n_runs", n_runs)
    schedule = _betas(n_betas, betas)
    a_base = _base_bias(rbm, base_visible_bias, data)
    log_z_base = base_log_partition(rbm.n_hidden, a_base)

    def runs():
        with threads_for(len(v) * n_runs * rbm.n_visible * rbm.n_hidden):
            return {"log_weights": _raise_runs(rbm, a_base, schedule, v.repeat(n_runs, 1), generator, progress)}

    fingerprint = None if checkpoint is None else {
        "rbm": checkpoint_io.digest(rbm.W, rbm.a, rbm.b), "base": checkpoint_io.digest(a_base),
        "betas": checkpoint_io.digest(schedule), "x": checkpoint_io.digest(v), "n_runs": n_runs,
        "generator": "none" if generator is None else checkpoint_io.digest(generator.get_state())}
    log_w = checkpoint_io.cached(checkpoint, fingerprint, _RAISE_FORMAT, runs, what="RAISE estimate",
                                 redo="running RAISE")["log_weights"]
    with torch.no_grad():
        per_image = -rbm.free_energy(v).to(torch.float64).cpu() - log_z_base
        per_image += torch.logsumexp(log_w.reshape(n_runs, len(v)), 0) - math.log(n_runs)
    return LogLikelihood(per_image=per_image, mean=float(per_image.mean()))


def _raise_runs(rbm, a_base, betas, x, generator, progress):
    """The annealing part of RAISE's log-weights (without -F(v) - log Z_A), float64 (rows,) on the CPU."""
    from tqdm.auto import tqdm

    with torch.no_grad():
        terms = _tempered_terms(rbm, a_base)
        log_w = torch.zeros(len(x), dtype=torch.float64, device=rbm.device)
        workspace, pre = {}, None
        beta_list = betas.tolist()
        K = len(beta_list) - 1
        for step in tqdm(range(K, 0, -1), desc="RAISE", unit="beta", disable=not progress, mininterval=0.5):
            beta, prev = beta_list[step], beta_list[step - 1]
            x = rbm.gibbs_sweep(x, generator, beta=beta, base_visible_bias=a_base, pre=pre, workspace=workspace)
            pre, lin_a = terms(x)                    # at x_{k-1}, drawn by T_k
            log_w -= _log_ratio(pre, lin_a, beta, prev)
    return log_w.cpu()


_REVERSE_FORMAT = "helpers.ais reverse result 1"
_EXACT_FORMAT = "helpers.ais exact samples 1"
_RAISE_FORMAT = "helpers.ais RAISE result 1"
