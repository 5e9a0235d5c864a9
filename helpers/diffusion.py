"""Diffusion models (variance-preserving DDPM and DDIM): schedule, forward process, loss, training, samplers.

Notation (Ho et al. 2020, "Denoising diffusion probabilistic models"). Timesteps are integers
t = 1, ..., T; a schedule is the sequence of noise variances beta_t in (0, 1), with

    alpha_t = 1 - beta_t,    alpha_bar_t = prod_{s <= t} alpha_s,    alpha_bar_0 = 1.

The forward (noising) process adds Gaussian noise step by step, q(x_t | x_{t-1}) =
N(sqrt(alpha_t) x_{t-1}, beta_t I); its marginal is closed-form (:func:`q_marginal`, :func:`q_sample`),

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),  i.e.  x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps,

and "variance preserving": data of unit variance keep unit variance, and x_T ~ N(0, I) once alpha_bar_T
is small. The reverse step given x_0 is Gaussian too (:func:`q_posterior`). A network eps_theta(x_t, t)
predicts the noise eps; it is trained on the noise-prediction loss (:func:`noise_prediction_loss`),
the evidence lower bound's sum over t with every weight replaced by one (:func:`elbo_weights` gives the
ELBO's weights, :func:`variational_bound` the bound itself). The noise prediction is a score estimate,

    score(x_t, t) = grad log q_t(x_t) = -eps_hat / sqrt(1 - alpha_bar_t)      (:func:`score_from_noise`),

and Tweedie's formula turns it into the posterior mean E[x_0 | x_t] (:func:`tweedie_mean`). Samplers:
:func:`ancestral_sample` (DDPM, a discretisation of the reverse-time SDE) and :func:`ddim_sample`
(Song, Meng & Ermon 2021; eta = 0 is deterministic, a discretisation of the probability-flow ODE, and
may skip steps). Both count the network evaluations.

Exact references: the noised marginal q_t of a Gaussian mixture is again a Gaussian mixture
(:class:`GaussianMixture`, :meth:`GaussianMixture.noised`), whose density, score and optimal noise
predictor (:class:`ExactNoisePredictor`) are known in closed form; a sampler driven by the exact
predictor must reproduce the mixture.

Conventions. Data x_0 are batches (n, ...) of floats. Images are expected in [-1, 1]
(:func:`images_to_model` maps grey levels in [0, 1] there, as Ho et al. do): the process ends in
N(0, I), so data should be centred with a spread of order one, or the schedule's end point no longer
matches the prior. Losses are per dimension (mean squared error over every number of the batch);
bounds are in nats per sample, summed over dimensions. The model is called as ``model(x_t, t)`` with
x_t (n, ...) and t a LongTensor (n,) of timesteps in 1..T, and returns eps_hat of x_t's shape.
Every random draw takes a ``torch.Generator`` (a seed in :func:`train_diffusion`).

In a few lines (a 2-D toy; ``helpers.nets.TimeMLP`` is the network, ``helpers.nets.Denoiser`` for MNIST)::

    schedule = linear_schedule(200, 0.1 / 200, 20 / 200)
    model = TimeMLP(2, 200)
    history = train_diffusion(model, x, schedule, n_epochs=50, seed=0)
    samples = ddim_sample(model, schedule, (1000, 2), n_steps=50, generator=gen)   # .x, .n_evaluations

Langevin dynamics on a known log-density (and MALA) live in :mod:`helpers.mcmc`; this module's samplers
follow the learned score along the schedule instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from . import checkpoint as checkpoint_io
from ._validate import check_choice, check_count, check_generator, check_real
from .nets import _check_tensor
from .train import History, build_settings, fit, screened_step

__all__ = ["Schedule", "linear_schedule", "cosine_schedule", "q_marginal", "q_sample", "q_posterior",
           "predict_x0", "score_from_noise", "noise_from_score", "tweedie_mean", "noise_prediction_loss",
           "elbo_weights", "Bound", "variational_bound", "training_step", "DiffusionSettings", "train_diffusion",
           "Samples", "ancestral_sample", "ddim_timesteps", "ddim_sample", "GaussianMixture",
           "ExactNoisePredictor", "images_to_model", "images_from_model", "dequantize", "bits_per_dim", "VARIANCES"]

#: The reverse-step variances sigma_t^2 of :func:`ancestral_sample`: beta_t, or the posterior's beta_tilde_t.
VARIANCES = ("beta", "posterior")
_CHECKPOINT_FORMAT = "helpers.diffusion checkpoint 1"
_LOG_2PI = math.log(2 * math.pi)


# ====================================================================== the schedule
class Schedule:
    """A variance-preserving noise schedule: beta_t for t = 1..T and the derived alpha_t, alpha_bar_t.

    Parameters
    ----------
    betas : Tensor or sequence of floats, shape (T,)
        The per-step noise variances, each in the open interval (0, 1). Stored in float64 on the CPU;
        coefficients are cast to the data's dtype and device when used.

    Attributes
    ----------
    betas, alphas, alpha_bars, alpha_bars_prev, posterior_variances : Tensor (T,), float64
        Entry ``t - 1`` belongs to timestep t: beta_t; alpha_t = 1 - beta_t; alpha_bar_t = prod_{s <= t}
        alpha_s; alpha_bar_{t-1} (with alpha_bar_0 = 1); beta_tilde_t = (1 - alpha_bar_{t-1}) /
        (1 - alpha_bar_t) beta_t, the variance of q(x_{t-1} | x_t, x_0) (beta_tilde_1 = 0).

    Raises
    ------
    ValueError
        Betas outside (0, 1), not finite, not 1-D, so small that alpha_bar_t does not strictly decrease in
        floating point (the noise must grow at every step), or so large that alpha_bar_t underflows to 0.
    """

    def __init__(self, betas):
        try:
            b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"betas must be a 1-D tensor or sequence of floats, got {type(betas).__name__} "
                            f"({err})") from None
        if b.dim() != 1 or len(b) < 1:
            raise ValueError(f"betas must be a 1-D sequence with at least one step, got shape {tuple(b.shape)}")
        bad = ~(torch.isfinite(b) & (b > 0) & (b < 1))
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"every beta_t must lie in the open interval (0, 1), but beta_{i + 1} = {b[i].item()!r} "
                             f"({int(bad.sum())} of {len(b)} outside); beta_t is the variance of the noise added at "
                             "step t: rescale the schedule (e.g. linear_schedule(T, beta_1, beta_T) with "
                             "0 < beta_1, beta_T < 1)")
        alpha_bars = torch.cumprod(1 - b, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        if alpha_bars[-1] <= 0:
            i = int((alpha_bars <= 0).nonzero()[0, 0])
            raise ValueError(f"alpha_bar_{i + 1} underflows to 0 in float64 (x_t would carry no trace of x_0 and "
                             "x_0 could not be predicted from it); use smaller betas or fewer steps")
        flat = ~(alpha_bars < prev)
        if flat.any():
            i = int(flat.nonzero()[0, 0])
            raise ValueError(f"the noise must increase at every step (alpha_bar_t strictly decreasing), but "
                             f"alpha_bar_{i + 1} = alpha_bar_{i} = {prev[i].item():.17g} in float64 (beta_{i + 1} = "
                             f"{b[i].item():.3g} is too small to change it); use larger betas or fewer steps")
        self.betas, self.alphas, self.alpha_bars, self.alpha_bars_prev = b, 1 - b, alpha_bars, prev
        self.posterior_variances = (1 - prev) / (1 - alpha_bars) * b

    @property
    def T(self) -> int:
        """The number of steps."""
        return len(self.betas)

    def __len__(self):
        return self.T

    def __repr__(self):
        return (f"Schedule(T={self.T}, beta_1={self.betas[0].item():.4g}, beta_T={self.betas[-1].item():.4g}, "
                f"alpha_bar_T={self.alpha_bars[-1].item():.3g})")

    def timesteps(self, t, n: int | None = None) -> torch.Tensor:
        """``t`` (an int, or an integer tensor of shape () or (n,)) as a LongTensor (n,) on the CPU, checked.

        Raises ValueError for timesteps outside 1..T (t = 0 is the data, not a step) or a wrong shape.
        """
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"t must hold integer timesteps 1..{self.T}, got dtype {t.dtype} "
                                "(use torch.randint(1, T + 1, ...) or .long() on whole numbers)")
            t = t.detach().cpu().long()
        else:
            t = torch.tensor(check_count("t", t, -2**62), dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(1 if n is None else n)
        if t.dim() != 1 or (n is not None and len(t) != n):
            raise ValueError(f"t must be one timestep or one per sample, shape ({n if n is not None else 'n'},), "
                             f"got shape {tuple(t.shape)}")
        if len(t) and (t.min() < 1 or t.max() > self.T):
            raise ValueError(f"timesteps must lie in 1..T = 1..{self.T}, got values from {int(t.min())} to "
                             f"{int(t.max())} (t = 0 is the clean data; the schedule has {self.T} steps)")
        return t

    def at(self, name: str, t, like: torch.Tensor) -> torch.Tensor:
        """The schedule's ``name`` (e.g. ``"alpha_bars"``) at timesteps ``t``, shaped (n, 1, ..., 1) to
        broadcast against ``like`` (n, ...), in its dtype and on its device."""
        t = self.timesteps(t, like.shape[0])
        values = getattr(self, name)[t - 1]
        return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t for one timestep t in 1..T, as a float."""
        return self.alpha_bars[int(self.timesteps(t)[0]) - 1].item()


def linear_schedule(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> Schedule:
    """The linear schedule of Ho et al. (2020): beta_t from ``beta_1`` to ``beta_T`` in T equal steps.

    The defaults are DDPM's values for T = 1000 (alpha_bar_T = 4.0e-5). With far fewer steps the same
    betas add too little noise for x_T to be N(0, I); scale them by 1000 / T (beta_1 = 0.1 / T,
    beta_T = 20 / T, the discretised VP SDE of Song et al. 2021). A warning says so when
    alpha_bar_T > 0.01.
    """
    T = check_count("T", T)
    beta_1 = check_real("beta_1", beta_1, 0, 1, low_ok=False, high_ok=False)
    beta_T = check_real("beta_T", beta_T, 0, 1, low_ok=False, high_ok=False)
    schedule = Schedule(torch.linspace(beta_1, beta_T, T, dtype=torch.float64))
    end = schedule.alpha_bars[-1].item()
    if end > 0.01:
        warnings.warn(f"alpha_bar_T = {end:.3g}: after T = {T} steps the data are not yet pure noise, so sampling "
                      f"from x_T ~ N(0, I) starts from the wrong distribution; use larger betas, e.g. "
                      f"beta_1={0.1 / T:.3g}, beta_T={min(20 / T, 0.999):.3g}", stacklevel=2)
    return schedule


def cosine_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """The cosine schedule of Nichol & Dhariwal (2021): alpha_bar_t = f(t) / f(0), f = cos^2((t/T + s) / (1 + s) pi/2).

    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped at ``max_beta`` (their 0.999; alpha_bar_T = 0 would
    otherwise make beta_T = 1). The offset ``s`` keeps beta_1 from vanishing. The returned alpha_bars are
    recomputed from the clipped betas, so they differ from f(t) / f(0) only in the last steps.
    """
    T = check_count("T", T)
    s = check_real("s", s, 0, low_ok=False)
    max_beta = check_real("max_beta", max_beta, 0, 1, low_ok=False, high_ok=False)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bars = f / f[0]
    betas = (1 - alpha_bars[1:] / alpha_bars[:-1]).clamp(max=max_beta)
    return Schedule(betas)


# ====================================================================== the forward process
def _check_data(x, who: str) -> torch.Tensor:
    _check_tensor(x, who)
    if x.dim() < 2:
        raise ValueError(f"{who} needs a batch (n, ...), got shape {tuple(x.shape)}; use x[:, None] for n scalars")
    return x


def _check_schedule(schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a helpers.diffusion.Schedule (e.g. linear_schedule(1000)), "
                        f"got {type(schedule).__name__}")
    return schedule


def _randn(shape, generator, like):
    """Standard normal noise of ``shape`` with ``like``'s dtype and device, drawn from ``generator``."""
    generator = check_generator(generator)
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def q_marginal(schedule: Schedule, x0: torch.Tensor, t):
    """Mean and standard deviation of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

    Parameters
    ----------
    schedule : Schedule
    x0 : Tensor (n, ...)
        Clean data.
    t : int or LongTensor (n,)
        Timesteps in 1..T (one for all rows, or one per row).

    Returns
    -------
    (mean, std) : Tensor (n, ...) and Tensor (n, 1, ..., 1), in x0's units.
    """
    _check_schedule(schedule)
    _check_data(x0, "q_marginal")
    ab = schedule.at("alpha_bars", t, x0)
    return ab.sqrt() * x0, (1 - ab).sqrt()


def q_sample(schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw of x_t ~ q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

    ``noise`` (x0's shape; default a fresh N(0, I) draw from ``generator``) is the eps the network
    learns to predict. ``x0`` (n, ...), ``t`` int or LongTensor (n,) in 1..T -> x_t (n, ...).
    """
    mean, std = q_marginal(schedule, x0, t)
    if noise is None:
        noise = _randn(x0.shape, generator, x0)
    elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}, got {got}")
    return mean + std * noise


def q_posterior(schedule: Schedule, x0: torch.Tensor, xt: torch.Tensor, t):
    """Mean and variance of the reverse step given the data, q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I):

        mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1})
                   / (1 - alpha_bar_t) x_t,      beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

    At t = 1 the step is deterministic: mu_tilde = x_0, beta_tilde_1 = 0.

    ``x0``, ``xt`` (n, ...), ``t`` int or LongTensor (n,) -> (mean (n, ...), variance (n, 1, ..., 1)).
    """
    _check_schedule(schedule)
    _check_data(x0, "q_posterior")
    if not isinstance(xt, torch.Tensor) or xt.shape != x0.shape:
        got = tuple(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__
        raise ValueError(f"xt must be a tensor of x0's shape {tuple(x0.shape)}, got {got}")
    ab, ab_prev = schedule.at("alpha_bars", t, x0), schedule.at("alpha_bars_prev", t, x0)
    beta, alpha = schedule.at("betas", t, x0), schedule.at("alphas", t, x0)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * xt
    return mean, schedule.at("posterior_variances", t, x0)


# ====================================================================== score, noise and Tweedie
def predict_x0(schedule: Schedule, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """The x_0 that ``eps`` implies: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    With eps = the optimal predictor E[eps | x_t] this is E[x_0 | x_t] (:func:`tweedie_mean`).
    """
    ab = schedule.at("alpha_bars", t, _check_data(xt, "predict_x0"))
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


def score_from_noise(schedule: Schedule, eps: torch.Tensor, t) -> torch.Tensor:
    """The score the noise prediction implies: grad_x log q_t(x) = -eps / sqrt(1 - alpha_bar_t), units 1/x.

    Exact for the optimal predictor eps*(x_t, t) = E[eps | x_t], because grad log q_t(x_t) =
    E[grad log q(x_t | x_0) | x_t] = -E[eps | x_t] / sqrt(1 - alpha_bar_t) (denoising score matching,
    Vincent 2011). ``eps`` (n, ...), ``t`` int or LongTensor (n,).
    """
    ab = schedule.at("alpha_bars", t, _check_data(eps, "score_from_noise"))
    return -eps / (1 - ab).sqrt()


def noise_from_score(schedule: Schedule, score: torch.Tensor, t) -> torch.Tensor:
    """The inverse of :func:`score_from_noise`: eps = -sqrt(1 - alpha_bar_t) score."""
    ab = schedule.at("alpha_bars", t, _check_data(score, "noise_from_score"))
    return -(1 - ab).sqrt() * score


def tweedie_mean(schedule: Schedule, xt: torch.Tensor, t, score: torch.Tensor) -> torch.Tensor:
    """Tweedie's formula: E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) grad log q_t(x_t)) / sqrt(alpha_bar_t).

    The posterior mean of the clean data given a noisy observation needs only the score of the noisy
    marginal (Robbins 1956; Efron 2011). ``xt``, ``score`` (n, ...), ``t`` int or LongTensor (n,).
    """
    ab = schedule.at("alpha_bars", t, _check_data(xt, "tweedie_mean"))
    if not isinstance(score, torch.Tensor) or score.shape != xt.shape:
        raise ValueError(f"score must have xt's shape {tuple(xt.shape)}")
    return (xt + (1 - ab) * score) / ab.sqrt()


# ====================================================================== the loss and the bound
def _evaluate(model, xt, t):
    """``model(xt, t)`` with t a LongTensor (n,) on xt's device; checks the output's shape and values."""
    out = model(xt, t.to(xt.device))
    if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return a noise prediction of x_t's shape {tuple(xt.shape)}, got {got}")
    return out


def noise_prediction_loss(model: Callable, schedule: Schedule, x0: torch.Tensor,
                          generator: torch.Generator | None = None, *, t=None, noise=None,
                          reduction: str = "mean") -> torch.Tensor:
    """The noise-prediction loss of Ho et al. (2020), L_simple = E_{t, x_0, eps} |eps - eps_theta(x_t, t)|^2 / d.

    Per sample, t ~ Uniform{1, ..., T} and eps ~ N(0, I) (from ``generator``, unless given), and
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. The squared error is averaged over the
    d numbers of a sample (1.0 for the predictor eps_hat = 0), then over the batch.

    Relation to the ELBO: the bound is a sum over t of lambda_t E|eps - eps_theta|^2 (summed over
    dimensions) plus constants, with the weights lambda_t of :func:`elbo_weights`; L_simple sets every
    weight to the same value, which down-weights the small-t terms (lambda_t is largest there) and
    gives better samples (Ho et al. 2020, section 3.4). Its minimiser is the same for any positive
    weights when the network can represent E[eps | x_t] for each t: the optimal predictor.

    Parameters
    ----------
    model : callable ``(x_t (n, ...), t LongTensor (n,)) -> eps_hat (n, ...)``
    schedule : Schedule
    x0 : Tensor (n, ...)
    t : int or LongTensor (n,), optional
        Fixed timesteps instead of uniform draws (e.g. to measure the loss at one t).
    noise : Tensor (n, ...), optional
    reduction : {"mean", "none"}
        A scalar, or the per-sample losses (n,).

    Returns
    -------
    Tensor, dimensionless (the noise has unit variance); differentiable in the model's parameters.
    """
    _check_schedule(schedule)
    _check_data(x0, "noise_prediction_loss")
    check_choice("reduction", reduction, ("mean", "none"))
    n = x0.shape[0]
    if t is None:
        check_generator(generator)
        where = generator.device if generator is not None else "cpu"
        t = torch.randint(1, schedule.T + 1, (n,), generator=generator, device=where).cpu()
    t = schedule.timesteps(t, n)
    if noise is None:
        noise = _randn(x0.shape, generator, x0)
    xt = q_sample(schedule, x0, t, noise)
    per_sample = (noise - _evaluate(model, xt, t)).square().flatten(1).mean(1)
    return per_sample.mean() if reduction == "mean" else per_sample


def elbo_weights(schedule: Schedule, variance: str = "beta") -> torch.Tensor:
    """The ELBO's weight on the noise-prediction error at each t, lambda_t, float64 (T,).

    With reverse steps p(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) and mu_theta =
    (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t), the KL term of step t >= 2 is

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
                = lambda_t |eps - eps_theta(x_t, t)|^2 + (terms without theta),
        lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)),

    in nats, the squared error summed over dimensions. For t = 1 the same weight multiplies the error
    in -log N(x_0; mu_theta(x_1, 1), sigma_1^2 I). ``variance`` picks sigma_t^2: ``"beta"`` (beta_t,
    giving lambda_t = beta_t / (2 alpha_t (1 - alpha_bar_t))) or ``"posterior"`` (beta_tilde_t for
    t >= 2; beta_1 at t = 1, where beta_tilde_1 = 0).
    """
    _check_schedule(schedule)
    s2 = _reverse_variances(schedule, variance)
    return schedule.betas ** 2 / (2 * s2 * schedule.alphas * (1 - schedule.alpha_bars))


def _reverse_variances(schedule, variance):
    """sigma_t^2 (T,) float64 of the reverse steps; at t = 1 always beta_1 (used only by the bound)."""
    check_choice("variance", variance, VARIANCES)
    s2 = schedule.betas.clone() if variance == "beta" else schedule.posterior_variances.clone()
    s2[0] = schedule.betas[0]
    return s2


class Bound(NamedTuple):
    """The variational bound -log p(x_0) <= prior + diffusion + decoder, each (n,) in nats per sample."""
    prior: torch.Tensor      #: L_T = KL(q(x_T | x_0) || N(0, I)), exact
    diffusion: torch.Tensor  #: sum_{t=2}^T L_{t-1}, each KL exact given one draw of x_t
    decoder: torch.Tensor    #: L_0 = -log N(x_0; mu_theta(x_1, 1), beta_1 I), one draw of x_1

    @property
    def total(self) -> torch.Tensor:
        """The upper bound on -log p(x_0), nats per sample (the negative ELBO)."""
        return self.prior + self.diffusion + self.decoder


@torch.no_grad()
def variational_bound(model: Callable, schedule: Schedule, x0: torch.Tensor, *, variance: str = "beta",
                      n_timesteps: int | None = None, generator: torch.Generator | None = None) -> Bound:
    """The negative ELBO of a diffusion model, -log p_theta(x_0) <= L_T + sum_{t>=2} L_{t-1} + L_0, in nats.

    The prior term L_T is exact; each L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) is exact
    given one draw of x_t ~ q(x_t | x_0), and the decoder term L_0 = -log N(x_0; mu_theta(x_1, 1), beta_1 I)
    uses one draw of x_1. With ``n_timesteps=None`` every t = 2..T is visited (T network evaluations per
    sample); with ``n_timesteps = K`` the sum is estimated as (T - 1) times the mean of K terms at t drawn
    uniformly from 2..T per sample (K + 1 evaluations per sample). Both are unbiased estimates of the bound.

    The density is continuous (nats per sample for x_0 in the model's units): for dequantized images in
    [-1, 1] convert with :func:`bits_per_dim`. A bound on a continuous density of grey levels cannot be
    compared with a likelihood of binarized images (a different random variable).

    Parameters
    ----------
    model : callable ``(x_t, t) -> eps_hat``
    schedule : Schedule
    x0 : Tensor (n, ...)
    variance : {"beta", "posterior"}
        The reverse-step variances sigma_t^2 for t >= 2 (see :func:`elbo_weights`); the decoder p(x_0 | x_1)
        uses beta_1 in both cases.
    n_timesteps : int, optional
        Monte Carlo terms per sample for the sum over t (default: all T - 1 of them).
    generator : torch.Generator, optional

    Returns
    -------
    Bound(prior, diffusion, decoder), tensors (n,) in x0's dtype; ``.total`` is the bound.
    """
    _check_schedule(schedule)
    _check_data(x0, "variational_bound")
    n, d, T = x0.shape[0], x0[0].numel(), schedule.T
    s2 = _reverse_variances(schedule, variance)
    ab_T = schedule.alpha_bars[-1].item()
    prior = 0.5 * (ab_T * x0.flatten(1).square().sum(1) + d * (1 - ab_T) - d - d * math.log(1 - ab_T))
    diffusion = torch.zeros(n, dtype=x0.dtype, device=x0.device)
    if n_timesteps is None:
        for t in range(T, 1, -1):
            diffusion += _kl_term(model, schedule, x0, torch.full((n,), t, dtype=torch.long), s2, generator)
    elif T > 1:
        k = check_count("n_timesteps", n_timesteps)
        for _ in range(k):
            where = generator.device if generator is not None else "cpu"
            t = torch.randint(2, T + 1, (n,), generator=check_generator(generator), device=where).cpu()
            diffusion += _kl_term(model, schedule, x0, t, s2, generator) * ((T - 1) / k)
    one = torch.ones(n, dtype=torch.long)
    x1 = q_sample(schedule, x0, one, generator=generator)
    var = s2[0].item()
    mu = _reverse_mean(schedule, x1, one, _evaluate(model, x1, one))
    decoder = 0.5 * ((x0 - mu).flatten(1).square().sum(1) / var + d * (math.log(var) + _LOG_2PI))
    return Bound(prior, diffusion, decoder)


def _kl_term(model, schedule, x0, t, s2, generator):
    """KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, t), sigma_t^2 I)) per sample (n,), nats, for t >= 2."""
    d = x0[0].numel()
    xt = q_sample(schedule, x0, t, generator=generator)
    mu_p = _reverse_mean(schedule, xt, t, _evaluate(model, xt, t))
    mu_q, var_q = q_posterior(schedule, x0, xt, t)
    var_q, var_p = var_q.flatten(), s2[t - 1].to(x0.device, x0.dtype)
    return 0.5 * ((mu_q - mu_p).flatten(1).square().sum(1) / var_p + d * (var_q / var_p - 1 + (var_p / var_q).log()))


def _reverse_mean(schedule, xt, t, eps_hat):
    """mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t)."""
    beta, alpha, ab = (schedule.at(k, t, xt) for k in ("betas", "alphas", "alpha_bars"))
    return (xt - beta / (1 - ab).sqrt() * eps_hat) / alpha.sqrt()


# ====================================================================== training
def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, x0: torch.Tensor,
                  generator: torch.Generator | None = None) -> dict:
    """One Adam (or any optimiser) step on :func:`noise_prediction_loss` for the minibatch ``x0`` (n, ...).

    Returns ``{"loss": float}``, the batch's loss before the step (dimensionless, per dimension). Raises
    ``FloatingPointError`` for a non-finite loss or gradient before the weights change
    (:func:`helpers.train.screened_step`).
    """
    model.train()
    loss = noise_prediction_loss(model, schedule, x0, generator)
    screened_step(loss, optimizer, model.parameters())
    return {"loss": loss.item()}


@dataclass(frozen=True)
class DiffusionSettings:
    """Everything :func:`train_diffusion` needs besides the network, the data and the schedule; validated.

    Its fields are part of the checkpoint fingerprint and ``history.settings``.
    """

    n_epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        check_count("n_epochs", self.n_epochs)
        check_count("batch_size", self.batch_size)
        check_real("lr", self.lr, 0, low_ok=False)
        check_count("seed", self.seed, 0)


def _device_of(module):
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_training_data(model, x, schedule):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (eps_theta(x_t, t)), got {type(model).__name__}")
    _check_schedule(schedule)
    _check_data(x, "train_diffusion's x")
    if x.dim() == 4:
        _check_model_range(x, "train_diffusion's x")
    probe = x[:2].to(_device_of(model))
    mode = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                _evaluate(model, probe, torch.ones(len(probe), dtype=torch.long))
            except TypeError as err:
                raise TypeError(f"the model must be called as model(x_t, t) with t a LongTensor of timesteps "
                                f"(e.g. helpers.nets.TimeMLP), but calling it failed: {err}") from None
    finally:
        model.train(mode)


def train_diffusion(model: nn.Module, x: torch.Tensor, schedule: Schedule, *, progress: bool = True,
                    checkpoint=None, evaluate=None, **settings) -> History:
    """Train a noise-prediction network eps_theta(x_t, t) on ``x`` with Adam; returns the history per epoch.

    The loop is :func:`helpers.train.fit`; each minibatch is one :func:`training_step` (uniform t per
    sample, fresh noise, :func:`noise_prediction_loss`), screened for NaN/inf.

    Parameters
    ----------
    model : nn.Module
        ``(x_t (n, ...), t LongTensor (n,)) -> eps_hat (n, ...)``, e.g. ``helpers.nets.TimeMLP``;
        trained in place from its current weights; ends in eval mode.
    x : Tensor (n, ...)
        Training data (moved to the model's device). Image batches (n, C, H, W) must lie in [-1, 1]
        (:func:`images_to_model`); other data should be centred with a spread of order one.
    schedule : Schedule
    progress : bool
        The tqdm bar of :func:`helpers.train.fit`.
    checkpoint : path, optional
        The cache: a stored run with the same fingerprint (settings, the network's architecture and
        initial weights, the data's digest, the betas) is loaded instead of trained.
    evaluate : callable ``epoch -> dict``, optional
        After each epoch (not timed); its numbers join the history. It may switch the model to eval
        mode (each step switches it back).
    **settings
        The fields of :class:`DiffusionSettings`: ``n_epochs``; ``batch_size`` (128); ``lr`` (1e-3);
        ``seed`` (one ``torch.Generator`` for the batch order, the timesteps and the noise: the same
        seed and initial weights give bitwise identical runs on the CPU).

    Returns
    -------
    helpers.train.History with ``epoch``, ``time`` (seconds), ``loss`` (the epoch's mean noise-prediction
    loss per dimension, measured while the weights changed) and ``evaluate``'s keys.
    """
    s = build_settings(DiffusionSettings, settings)
    _check_training_data(model, x, schedule)
    device = _device_of(model)
    x = x.to(device)
    rng = torch.Generator(device=device).manual_seed(s.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)

    def step(idx):
        return training_step(model, optimizer, schedule, x[idx], rng)

    def state():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    fingerprint = None
    if checkpoint is not None:
        fingerprint = checkpoint_io.fingerprint(s, model=model, x=x, betas=schedule.betas)
    history = fit(step, len(x), n_epochs=s.n_epochs, batch_size=s.batch_size, generator=rng, evaluate=evaluate,
                  progress=progress, desc="training diffusion model", show=("loss",), device=device,
                  hint=f"Try a smaller learning rate (e.g. lr={s.lr / 4:g}) and rebuild the network.",
                  settings=dataclasses.asdict(s), checkpoint=checkpoint, fingerprint=fingerprint,
                  kind=_CHECKPOINT_FORMAT, state=state, restore=model.load_state_dict)
    model.eval()
    return history


# ====================================================================== samplers
class Samples(NamedTuple):
    """What a sampler returns."""
    x: torch.Tensor          #: the samples x_0, (n, ...)
    n_evaluations: int       #: network evaluations per sample (each call evaluates the whole batch once)
    timesteps: list          #: the timesteps visited, from T down
    seconds: float           #: wall-clock time of the sampling loop (network evaluations and updates)
    path: dict               #: {t: x_t} for the timesteps asked for with ``record`` (clones, on x's device)


@contextlib.contextmanager
def _eval_mode(model):
    mode = model.training if isinstance(model, nn.Module) else None
    if mode is not None:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if mode is not None:
            model.train(mode)


def _start(model, schedule, shape, generator, x_T, who, dtype=None):
    _check_schedule(schedule)
    check_generator(generator)
    if not callable(model):
        raise TypeError(f"{who} needs a model (x_t, t) -> eps_hat, got {type(model).__name__}")
    if x_T is not None:
        _check_data(x_T, f"{who}'s x_T")
        return x_T.clone()
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 2:
        raise ValueError(f"shape must be (n, ...) with the number of samples first, e.g. (1000, 2), got {shape!r}")
    shape = tuple(check_count("shape entry", s) for s in shape)
    like = torch.empty(0)
    if isinstance(model, nn.Module):
        p = next(model.parameters(), None)
        like = torch.empty(0, device=p.device, dtype=p.dtype) if p is not None else like
    if dtype is not None:
        like = like.to(dtype)
    return _randn(shape, generator, like)


def ancestral_sample(model: Callable, schedule: Schedule, shape, *, variance: str = "beta",
                     generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                     clip_denoised: bool = False, dtype: torch.dtype | None = None, record=()) -> Samples:
    """DDPM's ancestral sampler: x_T ~ N(0, I), then x_{t-1} = mu_theta(x_t, t) + sigma_t z for t = T, ..., 1.

    mu_theta is the posterior mean q(x_{t-1} | x_t, x_0 = x0_hat) at the predicted x0_hat
    (:func:`predict_x0`), which equals (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t)
    = (x_t + beta_t score) / sqrt(alpha_t) ~ x_t + beta_t score / 2 + ...: an Euler-Maruyama step of the
    reverse-time SDE dx = -beta (x / 2 + score) dt + sqrt(beta) dW. z ~ N(0, I), none at t = 1.

    Parameters
    ----------
    model : callable ``(x_t, t LongTensor (n,)) -> eps_hat``
        Run without gradients (and in eval mode for a module, restored after).
    schedule : Schedule
    shape : tuple (n, ...)
        The samples' shape (ignored when ``x_T`` is given).
    variance : {"beta", "posterior"}
        sigma_t^2 = beta_t (the upper bound of Ho et al.) or beta_tilde_t (the lower; exact for a point
        mass). Both are consistent as T grows.
    generator : torch.Generator, optional
        x_T first, then one noise draw per step with t >= 2.
    x_T : Tensor (n, ...), optional
        The starting noise instead of a draw.
    clip_denoised : bool
        Clamp x0_hat to [-1, 1] at each step (for images in [-1, 1]); off by default (exact mathematics).
    dtype : torch.dtype, optional
        Of x_T when drawn (default: the model's parameters' dtype, float32 for a plain callable).
    record : sequence of int
        Timesteps t at which to keep the state x_t (the sample at noise level t, before the step at t),
        e.g. to plot the reverse process.

    Returns
    -------
    Samples(x, n_evaluations=T, timesteps=[T, ..., 1], seconds, path).
    """
    check_choice("variance", variance, VARIANCES)
    x = _start(model, schedule, shape, generator, x_T, "ancestral_sample", dtype)
    sigma2 = schedule.betas if variance == "beta" else schedule.posterior_variances
    n, start, keep, path = x.shape[0], time.perf_counter(), _record(schedule, record), {}
    with _eval_mode(model):
        for t in range(schedule.T, 0, -1):
            if t in keep:
                path[t] = x.clone()
            tt = torch.full((n,), t, dtype=torch.long)
            x0_hat = predict_x0(schedule, x, tt, _evaluate(model, x, tt))
            if clip_denoised:
                x0_hat = x0_hat.clamp(-1, 1)
            if t == 1:                           # mu_tilde = x0_hat exactly (no rounding), no noise
                x = x0_hat
                break
            x, _ = q_posterior(schedule, x0_hat, x, tt)
            x = x + math.sqrt(sigma2[t - 1].item()) * _randn(x.shape, generator, x)
    return Samples(x, schedule.T, list(range(schedule.T, 0, -1)), time.perf_counter() - start, path)


def _record(schedule, record):
    """The set of timesteps to record, checked against 1..T."""
    if not isinstance(record, (list, tuple, range, set, torch.Tensor)):
        raise TypeError(f"record must be a sequence of timesteps, e.g. (1000, 500, 100), got {record!r}")
    record = list(record)
    return set(schedule.timesteps(torch.as_tensor(record, dtype=torch.long)).tolist()) if record else set()


def ddim_timesteps(T: int, n_steps: int) -> list:
    """``n_steps`` timesteps spread evenly over 1..T, both ends included: round(1 + (T - 1) i / (n_steps - 1)).

    ``n_steps = T`` gives every step; ``n_steps = 1`` gives [T] (one jump from x_T to x_0).
    """
    T, n_steps = check_count("T", T), check_count("n_steps", n_steps)
    if n_steps > T:
        raise ValueError(f"n_steps must be at most T = {T}, got {n_steps}")
    if n_steps == 1:
        return [T]
    return sorted({round(1 + (T - 1) * i / (n_steps - 1)) for i in range(n_steps)})


def _check_subsequence(schedule, timesteps, n_steps):
    if timesteps is None:
        return ddim_timesteps(schedule.T, schedule.T if n_steps is None else n_steps)
    if n_steps is not None:
        raise ValueError("give either n_steps or timesteps, not both")
    steps = schedule.timesteps(torch.as_tensor(list(timesteps), dtype=torch.long)).tolist()
    if len(steps) == 0 or any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] != schedule.T:
        raise ValueError(f"timesteps must increase strictly and end at T = {schedule.T} (sampling starts from "
                         f"x_T ~ N(0, I)), got {steps[:3]}...{steps[-3:]}; see ddim_timesteps(T, n_steps)")
    return steps


def ddim_sample(model: Callable, schedule: Schedule, shape, *, n_steps: int | None = None, timesteps=None,
                eta: float = 0.0, generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                clip_denoised: bool = False, dtype: torch.dtype | None = None, record=()) -> Samples:
    """DDIM (Song, Meng & Ermon 2021) on a subsequence tau_1 < ... < tau_S = T of the timesteps.

    From x_T ~ N(0, I), each step from t = tau_i to s = tau_{i-1} (s = 0 after tau_1, alpha_bar_0 = 1):

        x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t),
        sigma  = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s),
        x_s    = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z.

    eta = 0 is deterministic (x_T fixes x_0): a discretisation of the probability-flow ODE, which has the
    same marginals q_t as the diffusion. eta = 1 with every step is DDPM's ancestral sampler with the
    posterior variance (sigma^2 = beta_tilde_t): with the same generator it gives the same numbers as
    ``ancestral_sample(..., variance="posterior")``.

    Parameters
    ----------
    model, schedule, shape, generator, x_T, clip_denoised, dtype, record
        As in :func:`ancestral_sample`; the generator draws x_T, then z at every step with s >= 1 when eta > 0.
    n_steps : int, optional
        Network evaluations: the subsequence :func:`ddim_timesteps` (T, n_steps) (default: all T steps).
    timesteps : sequence of int, optional
        The subsequence itself, increasing, ending at T (instead of ``n_steps``).
    eta : float >= 0
        The noise scale (0: deterministic).

    Returns
    -------
    Samples(x, n_evaluations=S, timesteps=[tau_S, ..., tau_1], seconds, path); ``record`` keeps x_t only at
    timesteps of the subsequence.
    """
    eta = check_real("eta", eta, 0)
    steps = _check_subsequence(_check_schedule(schedule), timesteps, n_steps)
    x = _start(model, schedule, shape, generator, x_T, "ddim_sample", dtype)
    n, start, keep, path = x.shape[0], time.perf_counter(), _record(schedule, record), {}
    abs_ = schedule.alpha_bars
    with _eval_mode(model):
        for i in range(len(steps) - 1, -1, -1):
            t = steps[i]
            if t in keep:
                path[t] = x.clone()
            ab_t, ab_s = abs_[t - 1].item(), (abs_[steps[i - 1] - 1].item() if i > 0 else 1.0)
            tt = torch.full((n,), t, dtype=torch.long)
            eps = _evaluate(model, x, tt)
            x0_hat = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
            if clip_denoised:
                x0_hat = x0_hat.clamp(-1, 1)
                eps = (x - math.sqrt(ab_t) * x0_hat) / math.sqrt(1 - ab_t)
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
            x = math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * _randn(x.shape, generator, x)
    return Samples(x, len(steps), steps[::-1], time.perf_counter() - start, path)


# ====================================================================== exact references: Gaussian mixtures
class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in d dimensions: density, exact score, samples, noised marginals.

    Under the VP forward process the mixture stays a mixture: q_t = sum_k w_k N(sqrt(ab) mu_k,
    ab Sigma_k + (1 - ab) I) with ab = alpha_bar_t (:meth:`noised`), so scores, posterior means and the
    optimal noise predictor (:class:`ExactNoisePredictor`) are exact. Computations in float64.

    Parameters
    ----------
    weights : Tensor (K,)
        Positive, summing to 1.
    means : Tensor (K, d)
    covariances : Tensor (K, d, d)
        Symmetric positive definite.
    """

    def __init__(self, weights, means, covariances):
        w, m, c = (torch.as_tensor(a, dtype=torch.float64).detach().cpu() for a in (weights, means, covariances))
        if w.dim() != 1 or m.dim() != 2 or c.dim() != 3 or not (len(w) == len(m) == len(c)) \
                or c.shape[1:] != (m.shape[1], m.shape[1]):
            raise ValueError(f"need weights (K,), means (K, d), covariances (K, d, d); got {tuple(w.shape)}, "
                             f"{tuple(m.shape)}, {tuple(c.shape)}")
        if not (torch.isfinite(w).all() and torch.isfinite(m).all() and torch.isfinite(c).all()):
            raise ValueError("the mixture's weights, means and covariances must be finite")
        if (w <= 0).any() or abs(w.sum().item() - 1) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()} (sum {w.sum().item():.6g}); "
                             "divide by their sum")
        if not torch.allclose(c, c.transpose(1, 2), atol=1e-10):
            raise ValueError("covariances must be symmetric")
        chol, info = torch.linalg.cholesky_ex(c)
        if (info != 0).any():
            raise ValueError(f"covariance {int((info != 0).nonzero()[0, 0])} is not positive definite")
        self.weights, self.means, self.covariances, self._chol = w, m, c, chol

    @classmethod
    def isotropic(cls, weights, means, stds) -> GaussianMixture:
        """Components N(mu_k, std_k^2 I): ``stds`` a float or (K,)."""
        m = torch.as_tensor(means, dtype=torch.float64)
        s = torch.as_tensor(stds, dtype=torch.float64).expand(len(m))
        return cls(weights, m, s[:, None, None] ** 2 * torch.eye(m.shape[1], dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return len(self.weights)

    def __repr__(self):
        return f"GaussianMixture(K={self.n_components}, d={self.dim})"

    def _check_x(self, x, who):
        _check_tensor(x, f"GaussianMixture.{who}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GaussianMixture.{who} expects points of shape (n, {self.dim}), got {tuple(x.shape)}"
                             + ("; use x[:, None] for scalars" if x.dim() == 1 and self.dim == 1 else ""))
        return x.to(torch.float64)

    def _component_terms(self, x):
        """log w_k + log N(x; mu_k, Sigma_k) (n, K) and Sigma_k^{-1} (x - mu_k) (n, K, d)."""
        diff = x[:, None, :] - self.means                                          # (n, K, d)
        per_k = diff.permute(1, 2, 0)                                              # (K, d, n)
        white = torch.linalg.solve_triangular(self._chol, per_k, upper=False)
        prec_diff = torch.cholesky_solve(per_k, self._chol)                        # (K, d, n)
        log_det = 2 * self._chol.diagonal(dim1=1, dim2=2).log().sum(1)
        log_n = -0.5 * (white.square().sum(1) + log_det[:, None] + self.dim * _LOG_2PI)  # (K, n)
        return (self.weights.log()[:, None] + log_n).T, prec_diff.permute(2, 0, 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, ``x`` (n, d) -> (n,) float64."""
        terms, _ = self._component_terms(self._check_x(x, "log_prob"))
        return torch.logsumexp(terms, 1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(k | x) (n, K), float64."""
        terms, _ = self._component_terms(self._check_x(x, "responsibilities"))
        return torch.softmax(terms, 1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) = -sum_k p(k | x) Sigma_k^{-1} (x - mu_k), ``x`` (n, d) -> (n, d) float64, units 1/x."""
        terms, prec_diff = self._component_terms(self._check_x(x, "score"))
        return -(torch.softmax(terms, 1)[:, :, None] * prec_diff).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws (n, d) float64: a component k ~ w, then mu_k + L_k z."""
        n = check_count("n", n)
        check_generator(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, 1, generator=generator, dtype=torch.float64)
        return self.means[k] + (self._chol[k] @ z)[..., 0]

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of sqrt(ab) x + sqrt(1 - ab) eps: components N(sqrt(ab) mu_k, ab Sigma_k + (1 - ab) I)."""
        ab = check_real("alpha_bar", alpha_bar, 0, 1, low_ok=False)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, math.sqrt(ab) * self.means, ab * self.covariances + (1 - ab) * eye)

    def posterior_mean(self, xt: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """E[x_0 | x_t] for x_0 from this mixture and x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps, by Gaussian
        conditioning within each component (not through the score):

            E[x_0 | x_t, k] = mu_k + sqrt(ab) Sigma_k C_k^{-1} (x_t - sqrt(ab) mu_k),   C_k = ab Sigma_k + (1 - ab) I,

        weighted by p(k | x_t) under the noised mixture. ``xt`` (n, d) -> (n, d) float64.
        """
        noisy = self.noised(alpha_bar)
        xt = self._check_x(xt, "posterior_mean")
        r = noisy.responsibilities(xt)                                              # (n, K)
        resid = (xt[:, None, :] - noisy.means).permute(1, 2, 0)                     # (K, d, n)
        gain = math.sqrt(alpha_bar) * self.covariances @ torch.linalg.solve(noisy.covariances, resid)
        cond = self.means[:, :, None] + gain                                        # (K, d, n)
        return (r.T[:, None, :] * cond).sum(0).T


class ExactNoisePredictor:
    """The optimal noise predictor for data from a :class:`GaussianMixture`: eps*(x_t, t) = E[eps | x_t]
    = -sqrt(1 - alpha_bar_t) grad log q_t(x_t), with q_t the noised mixture (exact, float64 inside).

    Called like a network, ``predictor(x_t (n, d), t LongTensor (n,)) -> (n, d)`` in x_t's dtype; it
    minimises :func:`noise_prediction_loss` over all functions, so samplers driven by it isolate the
    error of the sampler itself. ``calls`` counts the calls (batched network evaluations).
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        self.mixture, self.schedule = mixture, _check_schedule(schedule)
        self._noised: dict = {}
        self.calls = 0

    def noised(self, t: int) -> GaussianMixture:
        """q_t, the mixture noised to timestep t (cached)."""
        t = int(self.schedule.timesteps(t)[0])
        if t not in self._noised:
            self._noised[t] = self.mixture.noised(self.schedule.alpha_bar(t))
        return self._noised[t]

    def score(self, xt: torch.Tensor, t) -> torch.Tensor:
        """grad log q_t(x_t), (n, d) float64, for one t or one per row."""
        t = self.schedule.timesteps(t, xt.shape[0])
        out = torch.empty(xt.shape, dtype=torch.float64)
        for s in t.unique().tolist():
            rows = t == s
            out[rows] = self.noised(s).score(xt[rows.to(xt.device)].detach().cpu())
        return out

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        t = self.schedule.timesteps(t, xt.shape[0])
        eps = noise_from_score(self.schedule, self.score(xt, t), t)
        return eps.to(xt.device, xt.dtype)


# ====================================================================== images
def _check_model_range(x, who):
    lo, hi = x.min().item(), x.max().item()
    if lo < -1 or hi > 1:
        raise ValueError(f"{who} must lie in [-1, 1] (the diffusion module's image scale), got values from {lo:.4g} "
                         f"to {hi:.4g}; map grey levels in [0, 1] with images_to_model(x) = 2 x - 1")


def _check_images(x, who):
    _check_tensor(x, who)
    if x.dim() != 4:
        raise ValueError(f"{who} expects a batch of images (n, channels, height, width), e.g. (n, 1, 28, 28), got "
                         f"shape {tuple(x.shape)}" + ("; use x.reshape(-1, 1, 28, 28) for flat MNIST"
                                                      if x.dim() == 2 and x.shape[1] == 784 else ""))


def images_to_model(x: torch.Tensor) -> torch.Tensor:
    """Grey levels in [0, 1] -> the model's scale [-1, 1]: 2 x - 1. ``x`` (n, C, H, W) -> same shape.

    Why [-1, 1]: the forward process ends in N(0, I) and its schedule assumes data of spread ~1 centred at
    0 (Ho et al. 2020 scale images this way); data in [0, 1] would have a mean of 0.13 and spread 0.3 for
    MNIST, so the early steps would barely change them relative to their scale.
    """
    _check_images(x, "images_to_model")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"images_to_model expects grey levels in [0, 1], got values from {lo:.4g} to {hi:.4g}"
                         + ("; uint8-style values: divide by 255 first" if hi > 1.5 else "")
                         + ("; these look already scaled to [-1, 1]" if lo >= -1 and lo < 0 and hi <= 1 else ""))
    return 2 * x - 1


def images_from_model(x: torch.Tensor) -> torch.Tensor:
    """The model's scale back to grey levels: (x + 1) / 2 clamped to [0, 1] (samples may overshoot slightly)."""
    _check_images(x, "images_from_model")
    return ((x + 1) / 2).clamp(0, 1)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None, levels: int = 256) -> torch.Tensor:
    """Grey levels k / (levels - 1) (as ``helpers.data.load_mnist`` gives them) -> (k + u) / levels, u ~ U(0, 1).

    Uniform dequantization (Theis, van den Oord & Bethge 2016): a continuous density p on [0, 1)^d fitted to
    the dequantized images bounds the probability of the discrete ones, log P(k) >= E_u log p((k + u) / levels)
    - d log levels (Jensen), so a continuous bound becomes a bound on a discrete likelihood
    (:func:`bits_per_dim`). ``x`` (n, ...) in [0, 1] on the grid k / (levels - 1) -> same shape in [0, 1).
    """
    _check_tensor(x, "dequantize")
    levels = check_count("levels", levels, 2)
    k = x * (levels - 1)
    if (k - k.round()).abs().max() > 1e-3 or x.min() < 0 or x.max() > 1:
        raise ValueError(f"dequantize expects grey levels k / {levels - 1} with integer k in 0..{levels - 1} "
                         "(e.g. helpers.data.load_mnist(binarize=None)); these are not on that grid")
    return (k.round() + torch.rand(x.shape, generator=check_generator(generator), dtype=x.dtype)
            .to(x.device)) / levels


def bits_per_dim(nats: torch.Tensor | float, n_dims: int, levels: int = 256) -> float:
    """A bound on -log p(x) of dequantized images in the model's scale [-1, 1], in bits per dimension.

    For x = 2 y - 1 with y = (k + u) / levels (:func:`dequantize`, :func:`images_to_model`),
    -log P(k) <= E[-log p_x(x)] - d log 2 + d log levels, so

        bits/dim = (nats + d log(levels / 2)) / (d log 2),

    with ``nats`` the mean bound over images (e.g. ``variational_bound(...).total.mean()``) and d = ``n_dims``
    (784 for MNIST). A model uniform on [-1, 1]^d scores log2(levels) = 8 bits. This is a bound on the
    likelihood of the 256-level grey images; it is not comparable with nats per binarized image.
    """
    n_dims, levels = check_count("n_dims", n_dims), check_count("levels", levels, 2)
    value = float(nats.mean()) if isinstance(nats, torch.Tensor) else check_real("nats", nats)
    return (value + n_dims * math.log(levels / 2)) / (n_dims * math.log(2))
