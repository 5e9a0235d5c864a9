"""helpers.diffusion against independent computations.

References: the forward chain simulated step by step (not through the closed-form marginal), Gaussian
conditioning written out for q(x_{t-1} | x_t, x_0) and for E[x_0 | x_t], torch.distributions
(MixtureSameFamily) log-densities and their autograd gradients for the mixture's score, numerical
convolution and Bayes' rule by quadrature on a grid for the noised 1-D mixture and the optimal
noise predictor, the exact Kolmogorov distribution for KS tolerances, and closed-form Gaussian KLs.
Statistical tolerances are z-scores (4 standard errors) or the Kolmogorov 99.9% quantile; seeds are
fixed, so every test is deterministic.
"""
import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, Normal, kl_divergence

from helpers.diffusion import (
    DiffusionSettings,
    ExactNoisePredictor,
    GaussianMixture,
    Schedule,
    ancestral_sample,
    bits_per_dim,
    cosine_schedule,
    ddim_sample,
    ddim_timesteps,
    dequantize,
    elbo_weights,
    images_from_model,
    images_to_model,
    linear_schedule,
    noise_from_score,
    noise_prediction_loss,
    predict_x0,
    q_marginal,
    q_posterior,
    q_sample,
    score_from_noise,
    train_diffusion,
    tweedie_mean,
    variational_bound,
)
from helpers.nets import MLP, Denoiser, TimeMLP

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the 1-D mixture of the checks: 0.3 N(-2, 0.5^2) + 0.7 N(1.5, 0.8^2)
W1, M1, S1 = (0.3, 0.7), (-2.0, 1.5), (0.5, 0.8)


def mixture_1d():
    return GaussianMixture.isotropic(W1, [[m] for m in M1], S1)


def mixture_cdf(x):
    return sum(w * Normal(m, s).cdf(x) for w, m, s in zip(W1, M1, S1))


def mixture_2d():
    cov = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.4]], [[0.3, 0.0], [0.0, 0.3]]])
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.0], [1.0, 1.5], [1.5, -1.0]], cov)


def short_schedule(T=100):
    """The VP schedule scaled to T steps (beta from 0.1 / T to 20 / T, alpha_bar_T ~ 4e-5; at most 0.5)."""
    return linear_schedule(T, 0.1 / T, min(20 / T, 0.5))


def ks_distance(x):
    """Kolmogorov-Smirnov distance of the 1-D sample x to the mixture's exact CDF."""
    xs = x.flatten().double().sort().values
    n = len(xs)
    cdf = mixture_cdf(xs)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - cdf).max().item(), (cdf - (i - 1) / n).max().item())


def ks_999(n):
    """The 99.9% quantile of the KS distance of n exact draws (Kolmogorov: P(sqrt(n) D > 1.949) = 0.001)."""
    return 1.949 / math.sqrt(n)


# ---------------------------------------------------------------------- schedules
def test_linear_and_cosine_schedules_match_their_formulas():
    s = linear_schedule(1000)
    assert s.T == 1000 and s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    ab, prod = [], 1.0
    for b in s.betas.tolist():                              # alpha_bar by a plain loop
        prod *= 1 - b
        ab.append(prod)
    assert torch.allclose(s.alpha_bars, torch.tensor(ab, dtype=torch.float64), rtol=1e-12)
    assert s.alpha_bars[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # DDPM's end point
    # posterior variances from their definition, beta_tilde_1 = 0
    t = 500
    expect = (1 - ab[t - 2]) / (1 - ab[t - 1]) * s.betas[t - 1].item()
    assert s.posterior_variances[t - 1].item() == pytest.approx(expect, rel=1e-12)
    assert s.posterior_variances[0].item() == 0.0
    c = cosine_schedule(1000)
    f = [math.cos((k / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for k in (0, 1, 500, 900)]
    for k, fk in zip((1, 500, 900), f[1:]):
        assert c.alpha_bar(k) == pytest.approx(fk / f[0], rel=1e-9)
    assert c.betas.max().item() == pytest.approx(0.999)  # clipped at the end
    assert (c.alpha_bars.diff() < 0).all()


def test_schedules_refuse_bad_betas_and_timesteps():
    for bad in ([0.1, 0.0], [0.1, 1.0], [0.5, -0.1], [0.1, float("nan")], [[0.1, 0.2]], []):
        with pytest.raises(ValueError, match="beta|sequence"):
            Schedule(bad)
    with pytest.raises(ValueError, match="strictly decreasing"):
        Schedule([0.1, 1e-20])                               # the noise does not grow in float64
    with pytest.raises(ValueError, match="underflows"):
        Schedule([0.999] * 200)                              # 1e-3^200 = 0 in float64
    with pytest.raises(ValueError, match="beta_T"):
        linear_schedule(10, 1e-4, 1.5)
    with pytest.raises(ValueError, match="T must be"):
        linear_schedule(0)
    with pytest.warns(UserWarning, match="alpha_bar_T"):
        linear_schedule(50)                                  # DDPM's betas with 50 steps: x_T is not noise
    s = short_schedule(20)
    x = torch.zeros(3, 2)
    for t in (0, 21, -1):
        with pytest.raises(ValueError, match="1..T = 1..20"):
            q_sample(s, x, t)
    with pytest.raises(ValueError, match=r"1..T = 1..20"):
        q_marginal(s, x, torch.tensor([1, 2, 21]))
    with pytest.raises(TypeError, match="integer timesteps"):
        q_marginal(s, x, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="one per sample"):
        q_marginal(s, x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must be an int"):
        q_marginal(s, x, 2.5)
    with pytest.raises(TypeError, match="Schedule"):
        q_sample([0.1, 0.2], x, 1)


# ---------------------------------------------------------------------- the forward process
def test_closed_form_marginal_matches_the_simulated_chain():
    s = short_schedule(50)
    n = 20000
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[-1.0, 0.5, 2.0]], dtype=torch.float64).expand(n, 3)
    x = x0.clone()
    for t in range(1, 51):                                   # x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z
        x = s.alphas[t - 1].sqrt() * x + s.betas[t - 1].sqrt() * torch.randn(n, 3, generator=g, dtype=torch.float64)
        if t in (1, 10, 30, 50):
            mean, std = q_marginal(s, x0, t)
            var = std.square().expand_as(x)
            z_mean = (x.mean(0) - mean[0]) / (var[0] / n).sqrt()
            z_var = (x.var(0) - var[0]) / (var[0] * math.sqrt(2 / (n - 1)))
            assert z_mean.abs().max() < 4 and z_var.abs().max() < 4, (t, z_mean, z_var)
    # q_sample draws from the same law (per-sample t)
    t = torch.randint(1, 51, (n,), generator=g)
    xt = q_sample(s, x0, t, generator=g)
    mean, std = q_marginal(s, x0, t)
    z = (xt - mean) / std
    assert abs(z.mean().item()) < 4 / math.sqrt(3 * n) and abs(z.var().item() - 1) < 4 * math.sqrt(2 / (3 * n))


def test_posterior_is_gaussian_conditioning():
    s = short_schedule(40)
    x0 = torch.tensor([[0.7], [-1.2], [2.0]], dtype=torch.float64)
    xt = torch.tensor([[0.1], [0.9], [-0.4]], dtype=torch.float64)
    for t in (2, 17, 40):
        ab_prev, alpha, beta = s.alpha_bars[t - 2].item(), s.alphas[t - 1].item(), s.betas[t - 1].item()
        # joint of (x_{t-1}, x_t) given x_0, then condition on x_t
        m1, m2 = math.sqrt(ab_prev) * x0, math.sqrt(alpha * ab_prev) * x0
        s11, s12, s22 = 1 - ab_prev, math.sqrt(alpha) * (1 - ab_prev), alpha * (1 - ab_prev) + beta
        mean, var = q_posterior(s, x0, xt, t)
        assert torch.allclose(mean, m1 + s12 / s22 * (xt - m2), rtol=1e-12)
        assert var.flatten()[0].item() == pytest.approx(s11 - s12 ** 2 / s22, rel=1e-10)
    mean, var = q_posterior(s, x0, xt, 1)                    # t = 1: x_0 itself
    assert torch.allclose(mean, x0) and var.abs().max() == 0
    with pytest.raises(ValueError, match="x0's shape"):
        q_posterior(s, x0, xt[:2], 3)


# ---------------------------------------------------------------------- the mixture
def torch_mixture(m: GaussianMixture):
    return MixtureSameFamily(Categorical(m.weights), MultivariateNormal(m.means, m.covariances))


def test_mixture_density_and_score_match_torch_distributions():
    m = mixture_2d()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    ref = torch_mixture(m)
    assert torch.allclose(m.log_prob(x), ref.log_prob(x), atol=1e-12)
    xr = x.clone().requires_grad_(True)
    autograd_score, = torch.autograd.grad(ref.log_prob(xr).sum(), xr)
    assert torch.allclose(m.score(x), autograd_score, atol=1e-10)
    noisy = m.noised(0.3)                                    # still a mixture: check its score too
    xr = x.clone().requires_grad_(True)
    autograd_score, = torch.autograd.grad(torch_mixture(noisy).log_prob(xr).sum(), xr)
    assert torch.allclose(noisy.score(x), autograd_score, atol=1e-10)
    # samples: component frequencies and the mean
    g = torch.Generator().manual_seed(2)
    y = m.sample(40000, g)
    mean = (m.weights[:, None] * m.means).sum(0)
    se = y.std(0) / math.sqrt(len(y))
    assert ((y.mean(0) - mean).abs() < 4 * se).all()
    for bad in ({"weights": [0.5, 0.6, -0.1]}, {"weights": [0.2, 0.2, 0.2]}):
        with pytest.raises(ValueError, match="weights"):
            GaussianMixture(bad["weights"], m.means, m.covariances)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        m.score(torch.zeros(3, 3))


def test_noised_mixture_is_the_convolution_of_the_data_with_the_forward_kernel():
    m = mixture_1d()
    grid = torch.linspace(-9, 9, 6001, dtype=torch.float64)            # quadrature over x_0
    p0 = m.log_prob(grid[:, None]).exp()
    y = torch.linspace(-4, 4, 41, dtype=torch.float64)
    for ab in (0.9, 0.4, 0.05):
        kernel = Normal(math.sqrt(ab) * grid[None, :], math.sqrt(1 - ab)).log_prob(y[:, None]).exp()
        q = torch.trapezoid(kernel * p0, grid, dim=1)
        assert torch.allclose(m.noised(ab).log_prob(y[:, None]).exp(), q, rtol=1e-8, atol=1e-12)


def test_exact_noise_predictor_and_tweedie_by_bayes_quadrature():
    m, s = mixture_1d(), short_schedule(100)
    pred = ExactNoisePredictor(m, s)
    grid = torch.linspace(-9, 9, 6001, dtype=torch.float64)
    p0 = m.log_prob(grid[:, None]).exp()
    xt = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    for t in (5, 25, 60):
        ab = s.alpha_bar(t)
        like = Normal(math.sqrt(ab) * grid[None, :], math.sqrt(1 - ab)).log_prob(xt).exp() * p0   # (13, G)
        post = like / torch.trapezoid(like, grid, dim=1)[:, None]                                  # p(x_0 | x_t)
        e_x0 = torch.trapezoid(post * grid, grid, dim=1)[:, None]
        e_eps = (xt - math.sqrt(ab) * e_x0) / math.sqrt(1 - ab)
        tt = torch.full((13,), t)
        eps = pred(xt, tt)
        assert torch.allclose(eps, e_eps, atol=1e-8)
        score = score_from_noise(s, eps, tt)
        assert torch.allclose(noise_from_score(s, score, tt), eps, atol=1e-14)
        assert torch.allclose(tweedie_mean(s, xt, tt, score), e_x0, atol=1e-8)
        assert torch.allclose(predict_x0(s, xt, tt, eps), e_x0, atol=1e-8)
        assert torch.allclose(m.posterior_mean(xt, ab), e_x0, atol=1e-8)


def test_tweedie_in_two_dimensions_with_full_covariances():
    m, s = mixture_2d(), short_schedule(100)
    pred = ExactNoisePredictor(m, s)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.5
    for t in (3, 30, 70):
        tt = torch.full((30,), t)
        by_score = tweedie_mean(s, x, tt, pred.score(x, tt))
        assert torch.allclose(by_score, m.posterior_mean(x, s.alpha_bar(t)), atol=1e-10)
    # per-sample timesteps group correctly
    tt = torch.tensor([3, 30, 70] * 10)
    mixed = pred.score(x, tt)
    for t in (3, 30, 70):
        rows = tt == t
        assert torch.allclose(mixed[rows], m.noised(s.alpha_bar(t)).score(x[rows]))


# ---------------------------------------------------------------------- loss and ELBO
def test_optimal_loss_of_a_gaussian_is_the_posterior_variance_of_the_noise():
    # data N(0, v I): E[eps | x_t] is linear and the minimal loss per dimension is
    # Var(eps | x_t) = 1 - (1 - ab) / (ab v + 1 - ab); the zero predictor scores 1
    v, s = 0.36, short_schedule(100)
    gauss = GaussianMixture([1.0], [[0.0, 0.0]], [[[v, 0.0], [0.0, v]]])
    pred = ExactNoisePredictor(gauss, s)
    g = torch.Generator().manual_seed(4)
    x0 = gauss.sample(20000, g)
    for t in (10, 40):
        ab = s.alpha_bar(t)
        per = noise_prediction_loss(pred, s, x0, g, t=t, reduction="none")
        expect = 1 - (1 - ab) / (ab * v + 1 - ab)
        assert abs(per.mean().item() - expect) < 4 * per.std().item() / math.sqrt(len(per))
    zero = noise_prediction_loss(lambda x, t: torch.zeros_like(x), s, x0, g)
    assert abs(zero.item() - 1) < 4 * math.sqrt(2 / (2 * len(x0)))
    with pytest.raises(ValueError, match="noise prediction of x_t's shape"):
        noise_prediction_loss(lambda x, t: x[:, :1], s, x0, g)


def test_the_exact_predictor_is_the_conditional_mean_of_the_noise():
    # E[eps | x_t] is orthogonal to every function h of x_t: E[(eps - eps*) . h(x_t)] = 0. So, with the same
    # t and noise, adding h to the predictor raises the loss by exactly E|h|^2 / d in expectation (a wrong
    # predictor, even a rescaled one, adds a cross term); 2-D mixture, full covariances, t uniform per sample
    m, s = mixture_2d(), short_schedule(100)
    pred = ExactNoisePredictor(m, s)
    g = torch.Generator().manual_seed(23)
    x0, n = m.sample(20000, g), 20000
    t = torch.randint(1, 101, (n,), generator=g)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    xt = q_sample(s, x0, t, noise)
    base = noise_prediction_loss(pred, s, x0, t=t, noise=noise, reduction="none")
    for h in (lambda x: 0.3 * x, lambda x: 0.5 * torch.sin(2 * x.flip(1))):
        shifted = noise_prediction_loss(lambda x, tt: pred(x, tt) + h(x), s, x0, t=t, noise=noise, reduction="none")
        excess = shifted - base - h(xt).square().mean(1)          # = -2 mean_j h_j (eps - eps*)_j
        assert abs(excess.mean().item()) < 4 * excess.std().item() / math.sqrt(n)
    # a predictor that is off by 10% fails the same check
    wrong = lambda x, tt: 0.9 * pred(x, tt)  # noqa: E731
    base = noise_prediction_loss(wrong, s, x0, t=t, noise=noise, reduction="none")
    h = lambda x: 0.3 * x  # noqa: E731
    excess = noise_prediction_loss(lambda x, tt: wrong(x, tt) + h(x), s, x0, t=t, noise=noise,
                                   reduction="none") - base - h(xt).square().mean(1)
    assert abs(excess.mean().item()) > 10 * excess.std().item() / math.sqrt(n)


def test_elbo_weights_are_the_kl_between_posterior_and_reverse_step():
    s = short_schedule(60)
    g = torch.Generator().manual_seed(5)
    x0, eps, eps_hat = (torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(3))
    for variance in ("beta", "posterior"):
        lam = elbo_weights(s, variance)
        for t in (2, 20, 60):
            xt = q_sample(s, x0, t, eps)
            mu_q, _ = q_posterior(s, x0, xt, t)
            mu_p, _ = q_posterior(s, predict_x0(s, xt, t, eps_hat), xt, t)   # the reverse step's mean
            s2 = s.betas[t - 1] if variance == "beta" else s.posterior_variances[t - 1]
            kl_mean_term = (mu_q - mu_p).square().sum(1) / (2 * s2)
            assert torch.allclose(kl_mean_term, lam[t - 1] * (eps - eps_hat).square().sum(1), rtol=1e-9)
    b = elbo_weights(s, "beta")
    assert torch.allclose(b, s.betas / (2 * s.alphas * (1 - s.alpha_bars)))


def test_variational_bound_of_the_exact_model_bounds_the_exact_likelihood():
    s = short_schedule(50)
    gauss = GaussianMixture.isotropic([1.0], [[0.5]], 0.7)
    pred = ExactNoisePredictor(gauss, s)
    g = torch.Generator().manual_seed(6)
    x0 = gauss.sample(4000, g)
    bound = variational_bound(pred, s, x0, generator=g)
    ab_T = s.alpha_bars[-1].item()
    prior = kl_divergence(Normal(math.sqrt(ab_T) * x0[:, 0], math.sqrt(1 - ab_T)), Normal(0.0, 1.0))
    assert torch.allclose(bound.prior, prior, atol=1e-12)
    gap = bound.total - (-gauss.log_prob(x0))
    se = gap.std().item() / math.sqrt(len(gap))
    # a bound (>= -4 SE) that is tight for the exact model (measured: -0.005 +- 0.017 nats at T = 50)
    assert -4 * se < gap.mean().item() < 0.05 + 4 * se
    post = variational_bound(pred, s, x0, generator=g, variance="posterior").total - (-gauss.log_prob(x0))
    assert post.mean().item() > gap.mean().item() + 4 * se  # sigma^2 = beta_tilde is looser for this data
    # the Monte Carlo sum over t (5 terms per sample) estimates the same bound: two-sample z-score
    mc = variational_bound(pred, s, x0, generator=g, n_timesteps=5)
    assert torch.equal(mc.prior, bound.prior)
    diff = mc.diffusion.mean() - bound.diffusion.mean()
    assert abs(diff.item()) < 4 * math.sqrt((mc.diffusion.var() + bound.diffusion.var()).item() / len(x0))


# ---------------------------------------------------------------------- samplers with the exact score
# Discretisation: with T steps the samplers are exact only as T -> infinity. Measured with the exact
# predictor on n = 100,000 samples (T = 100 / 200 / 400): the KS distance of ancestral sampling to the
# 1-D mixture is 0.007 / 0.004 / 0.003 (sigma^2 = beta_t), 0.010 / 0.006 / 0.004 (posterior variance),
# DDIM(eta = 0, every step) 0.011 / 0.008 / 0.008 (about the sampling error 0.004 + bias); its variance
# is low by 1.2% / 0.5% (beta), 3.5% / 1.8% (posterior), 2.2% / 1.1% (DDIM). The tolerances below are the
# statistical ones plus an allowance for that bias, stated next to each; a wrong coefficient in a
# sampler moves the distribution by far more (the zero predictor: KS > 0.14).
KS_BIAS_T200 = 0.01       # discretisation allowance for the KS distance at T = 200, every step (measured <= 0.008)
VAR_BIAS_T200 = 0.03      # relative allowance for second moments at T = 200, every step (measured <= 1.9%)


def mixture_moments_1d(k):
    """E[x^k] of the 1-D mixture, k = 1, 2, 3 (Gaussian moments m, m^2 + s^2, m^3 + 3 m s^2)."""
    return sum(w * {1: m, 2: m * m + s * s, 3: m ** 3 + 3 * m * s * s}[k] for w, m, s in zip(W1, M1, S1))


def test_ancestral_sampling_with_the_exact_score_reproduces_the_1d_mixture():
    m, s = mixture_1d(), short_schedule(200)
    n = 20000
    for variance in ("beta", "posterior"):
        pred = ExactNoisePredictor(m, s)
        out = ancestral_sample(pred, s, (n, 1), variance=variance, generator=torch.Generator().manual_seed(7),
                               dtype=torch.float64, record=(150, 50))
        assert out.n_evaluations == 200 == pred.calls and out.timesteps[0] == 200 and out.timesteps[-1] == 1
        assert ks_distance(out.x) < ks_999(n) + KS_BIAS_T200, variance
        if variance == "beta":                               # the recorded path: x_t ~ q_t along the way
            for t in (150, 50):
                xt = out.path[t][:, 0].double()
                noisy = m.noised(s.alpha_bar(t))
                mean = (noisy.weights * noisy.means[:, 0]).sum()
                var = (noisy.weights * (noisy.covariances[:, 0, 0] + noisy.means[:, 0] ** 2)).sum() - mean ** 2
                assert abs(xt.mean() - mean) < 4 * (var / n).sqrt(), t
                assert abs(xt.var() / var - 1) < 4 * math.sqrt(2 / n) + VAR_BIAS_T200, t
    # the same sampler with a predictor that ignores the data (eps_hat = 0) is far off
    out = ancestral_sample(lambda x, t: torch.zeros_like(x), s, (n, 1), generator=torch.Generator().manual_seed(7))
    assert ks_distance(out.x) > 0.1


def test_ddim_eta0_all_steps_and_a_subsequence_reproduce_the_1d_mixture():
    m, s = mixture_1d(), short_schedule(200)
    n = 20000
    pred = ExactNoisePredictor(m, s)
    full = ddim_sample(pred, s, (n, 1), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert full.n_evaluations == 200 == pred.calls
    assert ks_distance(full.x) < ks_999(n) + KS_BIAS_T200
    sub = ddim_sample(pred, s, (n, 1), n_steps=50, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert sub.n_evaluations == 50 and len(sub.timesteps) == 50
    # 50 of 200 steps: a larger bias (measured 0.017 at 50 steps, 0.029 at 20 steps, n = 20,000)
    assert ks_distance(sub.x) < ks_999(n) + 0.02
    # deterministic: the same x_T gives the same samples whatever the generator
    x_T = torch.randn(100, 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    a = ddim_sample(pred, s, None, n_steps=20, x_T=x_T, generator=torch.Generator().manual_seed(1)).x
    b = ddim_sample(pred, s, None, n_steps=20, x_T=x_T, generator=torch.Generator().manual_seed(2)).x
    assert torch.equal(a, b)


def test_samplers_reproduce_the_2d_mixture_moments():
    m, s = mixture_2d(), short_schedule(200)
    n = 10000
    mean = (m.weights[:, None] * m.means).sum(0)
    second = (m.weights[:, None, None] * (m.covariances + m.means[:, :, None] * m.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    ref = m.sample(100000, torch.Generator().manual_seed(10))
    rc = ref - mean
    ref_prods = torch.stack([rc[:, 0] ** 2, rc[:, 1] ** 2, rc[:, 0] * rc[:, 1]], 1)
    target = torch.stack([cov[0, 0], cov[1, 1], cov[0, 1]])
    scale = torch.stack([cov[0, 0], cov[1, 1], (cov[0, 0] * cov[1, 1]).sqrt()])
    runs = {"ancestral": lambda g: ancestral_sample(ExactNoisePredictor(m, s), s, (n, 2), generator=g,
                                                    dtype=torch.float64),
            "ancestral, posterior variance": lambda g: ancestral_sample(
                ExactNoisePredictor(m, s), s, (n, 2), variance="posterior", generator=g, dtype=torch.float64),
            "ddim": lambda g: ddim_sample(ExactNoisePredictor(m, s), s, (n, 2), generator=g, dtype=torch.float64)}
    for name, run in runs.items():
        x = run(torch.Generator().manual_seed(11)).x
        z_mean = (x.mean(0) - mean) / (cov.diagonal() / n).sqrt()
        c = x - mean
        prods = torch.stack([c[:, 0] ** 2, c[:, 1] ** 2, c[:, 0] * c[:, 1]], 1)
        err = (prods.mean(0) - target).abs()
        assert z_mean.abs().max() < 4, (name, z_mean)
        assert (err < 4 * ref_prods.std(0) / math.sqrt(n) + VAR_BIAS_T200 * scale).all(), (name, err)
        # mode weights: nearest component centre, against the exact draws' assignment (binomial errors)
        near = torch.cdist(x, m.means).argmin(1).bincount(minlength=3) / n
        near_ref = torch.cdist(ref, m.means).argmin(1).bincount(minlength=3) / len(ref)
        assert ((near - near_ref).abs() < 4 * (near_ref * (1 - near_ref) / n).sqrt()).all(), name


def test_ddim_eta1_with_every_step_is_ancestral_sampling():
    m, s = mixture_1d(), short_schedule(200)
    # with the posterior variance the two samplers are the same map of the same noise
    a = ancestral_sample(ExactNoisePredictor(m, s), s, (500, 1), variance="posterior",
                         generator=torch.Generator().manual_seed(12), dtype=torch.float64).x
    b = ddim_sample(ExactNoisePredictor(m, s), s, (500, 1), eta=1.0, generator=torch.Generator().manual_seed(12),
                    dtype=torch.float64).x
    assert torch.allclose(a, b, atol=1e-10)
    # DDIM(eta = 1) against ancestral sampling with sigma^2 = beta_t: not the same numbers, the same
    # distribution up to the O(1/T) discretisation bias (both converge to the mixture); moments 1..3
    # against the exact ones, each within 4 standard errors plus the allowance
    n = 20000
    a = ancestral_sample(ExactNoisePredictor(m, s), s, (n, 1), generator=torch.Generator().manual_seed(13),
                         dtype=torch.float64).x[:, 0]
    b = ddim_sample(ExactNoisePredictor(m, s), s, (n, 1), eta=1.0, generator=torch.Generator().manual_seed(14),
                    dtype=torch.float64).x[:, 0]
    assert not torch.allclose(a, b)
    for k in (1, 2, 3):
        exact = mixture_moments_1d(k)
        allowance = VAR_BIAS_T200 * mixture_moments_1d(2) ** (k / 2)
        for x in (a, b):
            err = abs((x ** k).mean().item() - exact)
            assert err < 4 * (x ** k).std().item() / math.sqrt(n) + allowance, (k, err)


def test_sampler_arguments_are_checked():
    s = short_schedule(20)
    pred = ExactNoisePredictor(mixture_1d(), s)
    assert ddim_timesteps(20, 20) == list(range(1, 21)) and ddim_timesteps(20, 1) == [20]
    assert ddim_timesteps(100, 5) == [1, 26, 50, 75, 100]
    with pytest.raises(ValueError, match="at most T"):
        ddim_timesteps(20, 21)
    with pytest.raises(ValueError, match="end at T"):
        ddim_sample(pred, s, (4, 1), timesteps=[1, 5, 10])
    with pytest.raises(ValueError, match="increase strictly"):
        ddim_sample(pred, s, (4, 1), timesteps=[5, 1, 20])
    with pytest.raises(ValueError, match="either n_steps or timesteps"):
        ddim_sample(pred, s, (4, 1), n_steps=5, timesteps=[1, 20])
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(pred, s, (4, 1), eta=-1)
    with pytest.raises(ValueError, match="variance"):
        ancestral_sample(pred, s, (4, 1), variance="small")
    with pytest.raises(ValueError, match="shape must be"):
        ancestral_sample(pred, s, 4)
    with pytest.raises(TypeError, match="generator"):
        ancestral_sample(pred, s, (4, 1), generator=0)
    with pytest.raises(ValueError, match="1..T"):
        ancestral_sample(pred, s, (4, 1), record=[0, 5])
    with pytest.raises(TypeError, match="sequence of timesteps"):
        ddim_sample(pred, s, (4, 1), record=5)
    # clip_denoised keeps the predicted x_0, hence the final samples, in [-1, 1] (for images)
    wide = ExactNoisePredictor(GaussianMixture.isotropic([0.5, 0.5], [[-3.0], [3.0]], 0.5), s)
    for sampler in (ancestral_sample, ddim_sample):
        free = sampler(wide, s, (200, 1), generator=torch.Generator().manual_seed(0)).x
        clipped = sampler(wide, s, (200, 1), generator=torch.Generator().manual_seed(0), clip_denoised=True).x
        assert free.abs().max() > 2 and clipped.abs().max() <= 1
    out = ddim_sample(pred, s, (4, 1), timesteps=[3, 11, 20])
    assert out.timesteps == [20, 11, 3] and out.n_evaluations == 3 and out.seconds > 0
    assert ddim_sample(pred, s, (4, 1), timesteps=[3, 11, 20], record=[20, 11, 5]).path.keys() == {20, 11}


# ---------------------------------------------------------------------- training
def score_error(model, mix, s, t, n=4000):
    """Relative RMS error of the model's score against the exact one under q_t, and of the best Gaussian fit's."""
    ab = s.alpha_bar(t)
    xt = mix.noised(ab).sample(n, torch.Generator().manual_seed(15))
    tt = torch.full((n,), t)
    with torch.no_grad():
        learned = score_from_noise(s, model(xt.float(), tt).double(), tt)
    exact = mix.noised(ab).score(xt)
    gauss = -(xt - xt.mean()) / xt.var()
    rel = lambda a: ((a - exact).square().mean() / exact.square().mean()).sqrt().item()  # noqa: E731
    return rel(learned), rel(gauss)


def test_a_small_network_learns_the_score_of_a_1d_mixture():
    mix, s = mixture_1d(), short_schedule(100)
    x = mix.sample(4096, torch.Generator().manual_seed(16)).float()
    torch.manual_seed(0)
    net = TimeMLP(1, 100)
    before = score_error(net, mix, s, 30)[0]
    history = train_diffusion(net, x, s, n_epochs=25, batch_size=128, lr=3e-3, progress=False)  # 800 steps
    assert len(history["loss"]) == 25 and not net.training
    assert history["loss"][-1] < 0.75 * history["loss"][0]
    # the floor: the exact predictor's loss on the same data (any network's expected loss is above it)
    floor = noise_prediction_loss(ExactNoisePredictor(mix, s), s, x.double(), torch.Generator().manual_seed(17))
    assert history["loss"][-1] < floor.item() + 0.05
    # relative RMS score error under q_t, against the best Gaussian fit (which cannot be bimodal); measured
    # over 5 seeds of data, weights and training: 0.31-0.36 (Gaussian 0.78) at t = 20 (alpha_bar 0.67),
    # 0.10-0.17 (Gaussian 0.47) at t = 30 (alpha_bar 0.40); the untrained network: ~1
    learned, gauss = score_error(net, mix, s, 20)
    assert learned < 0.6 * gauss, (learned, gauss)
    learned, gauss = score_error(net, mix, s, 30)
    assert learned < 0.5 * gauss and learned < 0.25, (learned, gauss)
    assert before > 0.9


def test_training_is_deterministic_and_cached(tmp_path):
    s = short_schedule(20)
    x = mixture_1d().sample(300, torch.Generator().manual_seed(18)).float()

    def run(seed, checkpoint=None):
        torch.manual_seed(0)
        net = TimeMLP(1, 20, hidden=16)
        h = train_diffusion(net, x, s, n_epochs=2, batch_size=64, seed=seed, progress=False, checkpoint=checkpoint)
        return net, h

    (a, ha), (b, hb), (c, _) = run(0), run(0), run(1)
    assert ha["loss"] == hb["loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    path = tmp_path / "diffusion.pt"
    first, h1 = run(0, path)
    second, h2 = run(0, path)                                 # loaded, not trained
    assert h2["loss"] == h1["loss"] == ha["loss"]
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), second.state_dict().values()))
    assert DiffusionSettings(n_epochs=1).batch_size == 128


def test_training_refuses_bad_input():
    s = short_schedule(20)
    x = torch.randn(64, 1)
    net = TimeMLP(1, 20, hidden=8)
    with pytest.raises(TypeError, match="unknown setting"):
        train_diffusion(net, x, s, n_epochs=1, learning_rate=1e-3)
    for bad in ({"n_epochs": 0}, {"n_epochs": 1, "lr": 0.0}, {"n_epochs": 1, "batch_size": 0}):
        with pytest.raises(ValueError):
            train_diffusion(net, x, s, progress=False, **bad)
    with pytest.raises(ValueError, match="NaN"):
        train_diffusion(net, torch.full((4, 1), float("nan")), s, n_epochs=1)
    with pytest.raises(TypeError, match=r"model\(x_t, t\)"):
        train_diffusion(MLP(1, 1), x, s, n_epochs=1)             # takes no t

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = MLP(1, 2)

        def forward(self, x, t):
            return self.net(x)

    with pytest.raises(ValueError, match="x_t's shape"):
        train_diffusion(TwoOutputs(), x, s, n_epochs=1)
    with pytest.raises(TypeError, match="nn.Module"):
        train_diffusion(lambda x, t: x, x, s, n_epochs=1)

    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x, t):
            return x * self.w * float("inf") if self.training else x

    with pytest.raises(FloatingPointError, match="epoch 1, batch 1"):
        train_diffusion(Exploding(), x, s, n_epochs=1, progress=False)


def test_images_are_checked_and_scaled_to_minus_one_one():
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(19))
    y = images_to_model(x)
    assert y.min() >= -1 and y.max() <= 1 and torch.allclose(images_from_model(y), x, atol=1e-6)
    with pytest.raises(ValueError, match="divide by 255"):
        images_to_model(x * 255)
    with pytest.raises(ValueError, match="already scaled"):
        images_to_model(y)
    with pytest.raises(ValueError, match="reshape"):
        images_to_model(x.reshape(5, 784))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):                 # training on unscaled images
        train_diffusion(nn.Conv2d(1, 1, 3, padding=1), x * 3, short_schedule(20), n_epochs=1)


def test_dequantization_and_bits_per_dimension():
    k = torch.randint(0, 256, (2000, 1, 4, 4), generator=torch.Generator().manual_seed(20))
    y = dequantize(k / 255, torch.Generator().manual_seed(21))
    assert torch.equal((y * 256).floor().long(), k) and y.min() >= 0 and y.max() < 1
    u = y * 256 - k                                                     # the dequantization noise: U(0, 1)
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / u.numel())
    with pytest.raises(ValueError, match="grid"):
        dequantize(torch.full((2, 3), 0.1234))
    # a density uniform on [-1, 1]^d: -log p = d log 2 nats, which is 8 bits per dimension of 256 levels
    d = 784
    assert bits_per_dim(d * math.log(2), d) == pytest.approx(8.0)
    # the exact model of a discrete law: data k uniform on {0, 1} with levels = 2 -> 1 bit, i.e. the
    # continuous density 1/2 per unit on [-1, 1] again
    assert bits_per_dim(torch.full((5,), 3 * math.log(2)), 3, levels=2) == pytest.approx(1.0)


def test_training_a_denoiser_on_images_in_minus_one_one():
    # integration: images scaled by images_to_model, the U-Net of helpers.nets, a few steps, both samplers
    x = images_to_model(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(22)))
    s = short_schedule(20)
    torch.manual_seed(0)
    net = Denoiser(20, width=4)
    history = train_diffusion(net, x, s, n_epochs=3, batch_size=16, lr=3e-3, progress=False)
    assert history["loss"][0] == pytest.approx(1.0, abs=0.1)     # the zero-initialised output: eps_hat = 0
    assert history["loss"][-1] < history["loss"][0]
    for sampler, kw in ((ddim_sample, {"n_steps": 5}), (ancestral_sample, {})):
        out = sampler(net, s, (3, 1, 28, 28), generator=torch.Generator().manual_seed(0), clip_denoised=True, **kw)
        assert out.x.shape == (3, 1, 28, 28) and out.x.abs().max() <= 1 and out.n_evaluations == kw.get("n_steps", 20)
