"""A mixture of Bernoullis fitted by expectation-maximisation (EM): an exact likelihood for binary images.

The model has K components, each a product of independent Bernoulli pixels::

    p(x) = sum_k pi_k prod_d mu_kd^{x_d} (1 - mu_kd)^{1 - x_d},     x in {0, 1}^D,

with mixing weights ``pi`` (K,) summing to 1 and pixel probabilities ``mu`` (K, D). Its
log-likelihood is exact (a log-sum-exp over K terms), in nats per image; K = 1 is the
independent-pixel model of :mod:`helpers.baselines`.

EM (Dempster, Laird & Rubin 1977) alternates

* E-step: responsibilities r_nk = p(k | x_n) = pi_k p(x_n | k) / p(x_n);
* M-step: the closed-form maximiser of sum_nk r_nk log(pi_k p(x_n | k)) plus a log prior,

    mu_kd = (sum_n r_nk x_nd + alpha) / (N_k + 2 alpha),     pi_k = (N_k + alpha) / (N + K alpha),

  with N_k = sum_n r_nk and ``alpha = pseudo_count`` > 0: the maximum a posteriori update
  under Beta(1 + alpha, 1 + alpha) priors on every mu_kd and a Dirichlet(1 + alpha) prior on
  pi. It keeps every mu_kd strictly inside (0, 1), so no test image ever gets log 0.

Every EM iteration can only raise the training objective (the MAP objective, per image)::

    objective = (1/N) [ sum_n log p(x_n) + alpha sum_kd (log mu_kd + log(1 - mu_kd)) + alpha sum_k log pi_k ],

which is the training log-likelihood plus a penalty that vanishes as alpha -> 0: the E-step
makes Jensen's lower bound on it tight, the M-step maximises the bound. :func:`fit_mixture`
records both per iteration. The loop is :func:`helpers.train.fit` (one "epoch" = one EM
iteration on the whole training set).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import checkpoint as checkpoint_io
from ._validate import check_choice, check_count, check_real
from .config import threads_for
from .train import History, build_settings, fit

__all__ = ["BernoulliMixture", "MixtureSettings", "fit_mixture", "em_statistics", "m_step"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_CHECKPOINT_FORMAT = "helpers.mixture checkpoint 1"


def _check_binary(x, n_pixels: int | None) -> torch.Tensor:
    """``x`` flattened to (n, n_pixels) if it is a float tensor of binary images (any number of pixels for
    ``n_pixels=None``); ValueError otherwise."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor of images (n, ...), got {shape}")
    x = x.reshape(len(x), -1)
    if n_pixels is not None and x.shape[1] != n_pixels:
        raise ValueError(f"x has {x.shape[1]} pixels per image but the mixture models {n_pixels}")
    bad = (x != 0) & (x != 1)
    if bad.any():
        example = x[bad].flatten()[0].item()
        raise ValueError(f"a Bernoulli mixture needs binary images (every pixel 0 or 1), but {int(bad.sum())} "
                         f"values are not, e.g. {example:.4g}; binarize first "
                         "(helpers.data.load_mnist(..., binarize='sample'))")
    return x


class BernoulliMixture:
    """p(x) = sum_k weights[k] prod_d probs[k, d]^x_d (1 - probs[k, d])^(1 - x_d) for binary x.

    Parameters
    ----------
    weights : Tensor (K,)
        Mixing weights pi_k > 0, summing to 1 (checked to 1e-6, then renormalised).
    probs : Tensor (K, D)
        Pixel probabilities mu_kd, strictly between 0 and 1 (so every binary image has a
        finite log-likelihood). Same floating dtype and device as ``weights``.
    """

    def __init__(self, weights: torch.Tensor, probs: torch.Tensor):
        for name, t, dim in (("weights", weights, 1), ("probs", probs, 2)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != dim:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a floating-point tensor with {dim} dimension(s), got {shape}")
        if probs.shape[0] != weights.shape[0]:
            raise ValueError(f"weights has {weights.shape[0]} components but probs has {probs.shape[0]} rows")
        if probs.dtype != weights.dtype or probs.device != weights.device:
            raise ValueError("weights and probs need the same dtype and device")
        if not (torch.isfinite(probs).all() and (probs > 0).all() and (probs < 1).all()):
            raise ValueError("every pixel probability must lie strictly between 0 and 1 (a probability of "
                             "exactly 0 or 1 gives some binary images log-likelihood -inf); smooth it, e.g. "
                             "(counts + alpha) / (n + 2 alpha)")
        if not (torch.isfinite(weights).all() and (weights > 0).all()) or abs(weights.sum().item() - 1) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got sum {weights.sum().item():.8g}")
        self.weights = (weights / weights.sum()).detach()
        self.probs = probs.detach()

    @property
    def n_components(self) -> int:
        return self.probs.shape[0]

    @property
    def n_pixels(self) -> int:
        return self.probs.shape[1]

    @property
    def dtype(self):
        return self.probs.dtype

    def __repr__(self):
        return f"BernoulliMixture(n_components={self.n_components}, n_pixels={self.n_pixels}, dtype={self.dtype})"

    def check_data(self, x) -> torch.Tensor:
        """``x`` as a binary (n, D) tensor in the model's dtype; ValueError naming the problem otherwise
        (a non-tensor, a wrong number of pixels, NaNs, grey levels)."""
        return _check_binary(x, self.n_pixels).to(self.probs)

    def _log_tables(self):
        """(logit mu (K, D), sum_d log(1 - mu) + log pi (K,)): log p(x, k) = x @ logit.T + offset."""
        log1m = torch.log1p(-self.probs)
        return torch.log(self.probs) - log1m, log1m.sum(1) + torch.log(self.weights)

    def log_joint(self, x, *, checked: bool = False) -> torch.Tensor:
        """log pi_k + log p(x | k) for every image and component, nats: ``x`` (n, D) -> (n, K)."""
        x = x if checked else self.check_data(x)
        logit, offset = self._log_tables()
        return x @ logit.T + offset

    def log_prob(self, x, batch_size: int = 10000) -> torch.Tensor:
        """Exact log p(x) in nats per image (a log-sum-exp over the components): ``x`` (n, D) -> (n,)."""
        x = self.check_data(x)
        logit, offset = self._log_tables()
        return torch.cat([torch.logsumexp(x[i:i + batch_size] @ logit.T + offset, 1)
                          for i in range(0, len(x), batch_size)])

    def responsibilities(self, x) -> torch.Tensor:
        """The E-step: p(k | x) = pi_k p(x | k) / p(x) for every image: ``x`` (n, D) -> (n, K), rows sum to 1."""
        return torch.softmax(self.log_joint(x), 1)

    def sample(self, n: int, generator: torch.Generator | None = None, *, return_components: bool = False):
        """``n`` binary images: a component k ~ pi, then every pixel ~ Bernoulli(mu_kd).

        Returns Tensor (n, D) in the model's dtype (and the components (n,) with ``return_components``).
        """
        n = check_count("n", n)
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        p = self.probs.cpu()[k]
        x = (torch.rand(p.shape, generator=generator, dtype=p.dtype) < p).to(p.dtype).to(self.probs.device)
        return (x, k.to(self.probs.device)) if return_components else x

    def log_prior(self, pseudo_count: float) -> float:
        """alpha [sum_kd (log mu_kd + log(1 - mu_kd)) + sum_k log pi_k]: the log prior of the MAP objective
        (up to a constant), nats (not per image)."""
        p = self.probs
        return pseudo_count * float(torch.log(p).sum() + torch.log1p(-p).sum() + torch.log(self.weights).sum())


def em_statistics(mixture: BernoulliMixture, x, batch_size: int = 10000):
    """The E-step on binary ``x`` (n, D), in one pass, with the sufficient statistics of the M-step.

    No input checks (the inner loop of :func:`fit_mixture`, which validates the data once): pass
    ``mixture.check_data(x)``. Rows are processed ``batch_size`` at a time, so the responsibilities
    r_nk = p(k | x_n) are never stored.

    Returns
    -------
    (log_likelihood, counts, pixel_sums)
        ``log_likelihood``: sum_n log p(x_n) under ``mixture``, nats (a float, accumulated in float64);
        ``counts`` N_k = sum_n r_nk (K,); ``pixel_sums`` S_kd = sum_n r_nk x_nd (K, D).
    """
    logit, offset = mixture._log_tables()        # log p(x, k) = x @ logit.T + offset
    total = 0.0
    counts = torch.zeros(mixture.n_components, dtype=mixture.dtype, device=x.device)
    sums = torch.zeros_like(mixture.probs)
    with threads_for(min(batch_size, len(x)) * mixture.n_pixels * mixture.n_components):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            log_joint = torch.addmm(offset, xb, logit.T)         # log pi_k + log p(x | k), (batch, K)
            log_px = torch.logsumexp(log_joint, 1, keepdim=True)
            r = log_joint.sub_(log_px).exp_()                    # responsibilities, rows sum to 1
            total += float(log_px.sum(dtype=torch.float64))
            counts += r.sum(0)
            sums.addmm_(r.T, xb)
    return total, counts, sums


def m_step(counts, pixel_sums, n_images: int, pseudo_count: float) -> BernoulliMixture:
    """The M-step in closed form (MAP under Beta(1 + alpha, 1 + alpha) and Dirichlet(1 + alpha) priors):

        mu_kd = (S_kd + alpha) / (N_k + 2 alpha),     pi_k = (N_k + alpha) / (N + K alpha).
    """
    alpha = pseudo_count
    probs = (pixel_sums + alpha) / (counts[:, None] + 2 * alpha)
    weights = (counts + alpha) / (n_images + len(counts) * alpha)
    return BernoulliMixture(weights / weights.sum(), probs)


@dataclass(frozen=True)
class MixtureSettings:
    """Everything :func:`fit_mixture` needs besides the data; validated when built. Its fields are the
    checkpoint fingerprint and ``history.settings``."""

    n_components: int
    n_iter: int = 30
    pseudo_count: float = 1.0
    seed: int = 0
    dtype: str = "float64"

    def __post_init__(self):
        check_count("n_components", self.n_components)
        check_count("n_iter", self.n_iter)
        check_real("pseudo_count", self.pseudo_count, 0, low_ok=False)
        check_count("seed", self.seed, 0)
        check_choice("dtype", self.dtype, tuple(_DTYPES))


def _initial_mixture(x, s: MixtureSettings) -> BernoulliMixture:
    """Component k halfway between a random training image and the pixel means, squeezed into [0.05, 0.95]."""
    if s.n_components > len(x):
        raise ValueError(f"n_components={s.n_components} needs at least as many training images, got {len(x)}")
    gen = torch.Generator().manual_seed(s.seed)
    seeds = torch.randperm(len(x), generator=gen)[:s.n_components].to(x.device)
    probs = 0.05 + 0.9 * 0.5 * (x[seeds] + x.mean(0))
    weights = torch.full((s.n_components,), 1.0 / s.n_components, dtype=x.dtype, device=x.device)
    return BernoulliMixture(weights, probs)


def fit_mixture(x_train, n_components: int, x_test=None, *, progress: bool = True, checkpoint=None,
                **settings) -> tuple[BernoulliMixture, History]:
    """Fit a mixture of ``n_components`` Bernoulli components to binary images by EM.

    Parameters
    ----------
    x_train : Tensor (N, ...)
        Binary images (grey levels are refused: binarize first).
    n_components : int >= 1
        K.
    x_test : Tensor (M, ...), optional
        Binary images whose exact mean log-likelihood is recorded after every iteration.
    **settings
        The other fields of :class:`MixtureSettings`:
    n_iter : int
        EM iterations (default 30).
    pseudo_count : float > 0
        alpha of the MAP update (default 1, Laplace's rule for every pixel of every component).
    seed : int
        Seeds the initialisation: component k starts halfway between a randomly chosen training
        image and the pixel means, squeezed into [0.05, 0.95]; the weights start uniform.
    dtype : {"float64", "float32"}
        Arithmetic of the fit (float32 halves the time; its rounding is about 1e-5 nats per image).
    progress : bool
        A tqdm bar, one tick per iteration.
    checkpoint : path, optional
        The cache (``helpers.config.checkpoint_path`` in lecturer mode): a stored fit with the same
        settings and data is loaded instead of fitted (weights-only loading).

    Returns
    -------
    (mixture, history)
        The fitted :class:`BernoulliMixture` and a :class:`helpers.train.History` with one entry per
        iteration: ``log_likelihood`` and ``objective`` (training set, nats per image, after the
        iteration's update), ``time`` (seconds), ``test_log_likelihood`` (with ``x_test``).
        ``history.extras`` holds ``initial_log_likelihood`` and ``initial_objective`` (before the first
        update), so that ``[initial] + history["objective"]`` is the whole non-decreasing sequence.
    """
    s = build_settings(MixtureSettings, dict(settings, n_components=n_components))
    dtype = _DTYPES[s.dtype]
    x = _check_binary(x_train, None).to(dtype)
    x_eval = None if x_test is None else _check_binary(x_test, x.shape[1]).to(x)
    n = len(x)
    state = {"model": _initial_mixture(x, s)}

    def objective(log_lik_sum):
        return (log_lik_sum + state["model"].log_prior(s.pseudo_count)) / n

    state["stats"] = em_statistics(state["model"], x)
    initial = (state["stats"][0] / n, objective(state["stats"][0]))

    def step(idx):
        _, counts, sums = state["stats"]
        state["model"] = m_step(counts, sums, n, s.pseudo_count)       # the update ...
        state["stats"] = em_statistics(state["model"], x)                    # ... and the E-step of the new parameters
        return {"log_likelihood": state["stats"][0] / n, "objective": objective(state["stats"][0])}

    def evaluate(epoch):
        if x_eval is None:
            return {}
        return {"test_log_likelihood": float(state["model"].log_prob(x_eval).mean(dtype=torch.float64))}

    def restore(stored):
        state["model"] = BernoulliMixture(stored["weights"].to(x), stored["probs"].to(x))

    fingerprint = None
    if checkpoint is not None:
        fingerprint = checkpoint_io.fingerprint(s, x_train=x, x_test="none" if x_eval is None else x_eval,
                                                n_epochs=s.n_iter)      # EM iterations are fit's epochs
    history = fit(step, n, n_epochs=s.n_iter, batch_size=n, generator=None, shuffle=False, evaluate=evaluate,
                  progress=progress, desc=f"EM, K={s.n_components}", show=("log_likelihood", "test_log_likelihood"),
                  device=x.device, settings=dataclasses.asdict(s), checkpoint=checkpoint, fingerprint=fingerprint,
                  kind=_CHECKPOINT_FORMAT, restore=restore,
                  state=lambda: {"weights": state["model"].weights.cpu(), "probs": state["model"].probs.cpu()})
    history.extras["initial_log_likelihood"], history.extras["initial_objective"] = initial
    return state["model"], history

