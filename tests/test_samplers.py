"""helpers.mcmc's model-agnostic samplers (Hastings-corrected MH, ULA, MALA, MarkovChains)
against exact targets.

Every statistical check compares a chain average with its exact value in units
of its standard error, ``se = sd * sqrt(tau / N)``: ``N`` samples (steps x
chains, after burn-in) and ``tau`` the integrated autocorrelation time of that
very observable (:func:`helpers.mcmc.integrated_autocorrelation_time`), so
``N / tau`` is its effective sample size. The runs are long enough
(``n_steps >= 50 tau``) for tau to be reliable (the function warns otherwise,
and the warning is an error here). By the central limit theorem over 2,000
independent chains, ``z = (estimate - exact) / se`` is close to N(0, 1), so
``|z| < Z_MAX = 5`` fails by chance with probability 6e-7 per check; every
check also asserts that its error bar is small enough to catch a real bias.
The ``_check_*`` functions take the seed and return their z-scores (or TV
ratios), so that a sweep over seeds can report the worst of them.

The exact targets: Gaussians (moments in closed form), a Gamma law (its
moments, and those of the Gamma law that an uncorrected sampler converges to),
a Gaussian mixture whose bin probabilities are integrated by Gauss-Legendre
quadrature (checked against its closed-form normalizer), and the AR(1)
process that ULA is on a Gaussian target.
"""
import math

import numpy as np
import pytest
import torch

from helpers import mcmc
from helpers.rbm import BernoulliRBM

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("error:the series is too short:RuntimeWarning")]

Z_MAX = 5.0
SEED = 0
F64 = torch.float64


def G(seed):
    return torch.Generator().manual_seed(seed)


def z_score(series, exact):
    """(mean - exact) / se and se, for a series (n_steps, n_chains); se from the effective sample size."""
    series = np.asarray(series, dtype=np.float64)
    tau = mcmc.integrated_autocorrelation_time(series)
    se = series.std() * math.sqrt(tau / series.size)
    return (series.mean() - exact) / se, se


def moment_z_scores(samples, mean, cov):
    """z-scores of the means, variances and covariance of 2-D samples (n_steps, n_chains, 2).

    The second moments are taken about the exact mean, so each observable's
    expectation is exactly an entry of ``cov``.
    """
    d = samples.numpy() - mean.numpy()
    cov = cov.numpy()
    out = {}
    for name, series, exact in [("mean_0", d[..., 0], 0.0), ("mean_1", d[..., 1], 0.0),
                                ("cov_00", d[..., 0] ** 2, cov[0, 0]), ("cov_11", d[..., 1] ** 2, cov[1, 1]),
                                ("cov_01", d[..., 0] * d[..., 1], cov[0, 1])]:
        z, se = z_score(series, exact)
        assert se < 0.05 * math.sqrt(cov[0, 0] * cov[1, 1]), f"{name}: error bar {se:.3g} too wide to mean much"
        out[name] = z
    return out


def gaussian_log_prob(mean, cov):
    """Unnormalised log N(mean, cov): -(x - mean)^T cov^-1 (x - mean) / 2 per row, in nats."""
    prec = torch.linalg.inv(cov)

    def log_prob(x):
        d = x - mean
        return -0.5 * ((d @ prec) * d).sum(1)

    return log_prob


# A correlated 2-D Gaussian: correlation 0.8, standard deviations 1 and 2
# (covariance eigenvalues 0.31 and 4.69, so a condition number of 15).
MU = torch.tensor([1.0, -1.0], dtype=F64)
SIGMA = torch.tensor([[1.0, 0.8 * 2.0], [0.8 * 2.0, 4.0]], dtype=F64)


def independence_proposal(mean, cov):
    """y ~ N(mean, cov) whatever x: asymmetric, q(y | x) = q(y), so log_q_ratio = log q(x) - log q(y)."""
    log_q = gaussian_log_prob(mean, cov)
    chol = torch.linalg.cholesky(cov)

    def propose(x, generator):
        y = mean + torch.randn(x.shape, generator=generator, dtype=x.dtype) @ chol.T
        return y, log_q(x) - log_q(y)

    return propose


def _check_correlated_gaussian(seed, sampler):
    # MALA's slowest motion, along the long axis, has tau ~ 25 steps: 1,500 kept steps are 60 tau
    n_chains, burn_in, n_keep = 2000, 200, 1500 if sampler == "mala" else 1000
    log_p = gaussian_log_prob(MU, SIGMA)
    x0 = torch.tensor([[4.0, 4.0]], dtype=F64).repeat(n_chains, 1)  # far out: the burn-in is part of the test
    if sampler == "mala":
        res = mcmc.langevin(log_p, x0, burn_in + n_keep, 0.5, generator=G(seed))
        assert 0.5 < res.acceptance_rate.mean() < 0.7
    else:
        # an off-centre, wider proposal (cov - SIGMA is positive definite, so p / q is bounded)
        prop = independence_proposal(MU + torch.tensor([0.5, -0.5], dtype=F64),
                                     3.0 * torch.diag(torch.diag(SIGMA)))
        res = mcmc.metropolis_hastings(log_p, x0, burn_in + n_keep, prop, generator=G(seed))
        assert 0.2 < res.acceptance_rate.mean() < 0.6
    return moment_z_scores(res.samples[burn_in:], MU, SIGMA)


@pytest.mark.parametrize("sampler", ["mala", "independence_mh"])
def test_correlated_gaussian_mean_and_covariance(sampler):
    z = _check_correlated_gaussian(SEED, sampler)
    assert max(abs(v) for v in z.values()) < Z_MAX, z


# ---------------------------------------------------------------- a Gaussian mixture, binned
MIX_MEANS = torch.tensor([[-1.0, -0.25], [0.9, 0.5]], dtype=F64)  # two modes: a dip between them
MIX_COVS = torch.tensor([[[0.25, 0.0], [0.0, 0.64]], [[0.49, -0.25], [-0.25, 0.64]]], dtype=F64)
MIX_WEIGHTS = (0.35, 0.65)
EDGES = np.linspace(-5.0, 5.0, 41)  # 40 x 40 bins of width 0.25; the mass outside is ~1e-9


def mixture_log_density(x, weights=MIX_WEIGHTS):
    """Unnormalised: sum_k w_k exp(-(x - m_k)^T C_k^-1 (x - m_k) / 2), without the 1 / (2 pi sqrt(det C_k))."""
    terms = [math.log(w) + gaussian_log_prob(m, c)(x) for w, m, c in zip(weights, MIX_MEANS, MIX_COVS)]
    return torch.logsumexp(torch.stack(terms), 0)


def exact_bin_probabilities(weights=MIX_WEIGHTS, order=8):
    """Probabilities of the 40 x 40 bins and of the outside (last entry), by order-8 Gauss-Legendre
    quadrature in every bin, normalised by the quadrature's own total."""
    nodes, w = np.polynomial.legendre.leggauss(order)
    lo, width = EDGES[:-1], np.diff(EDGES)
    pts = (lo[:, None] + width[:, None] * (nodes + 1) / 2).ravel()          # (40 * order,)
    wts = (width[:, None] / 2 * w).ravel()
    xx, yy = np.meshgrid(pts, pts, indexing="ij")
    x = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1))
    dens = mixture_log_density(x, weights).exp().numpy().reshape(len(pts), len(pts)) * np.outer(wts, wts)
    n = len(EDGES) - 1
    mass = dens.reshape(n, order, n, order).sum((1, 3))
    z_quad = mass.sum()
    # the closed-form normaliser of the unnormalised mixture: sum_k w_k 2 pi sqrt(det C_k)
    z_exact = sum(wk * 2 * math.pi * math.sqrt(torch.linalg.det(c).item()) for wk, c in zip(weights, MIX_COVS))
    assert z_quad == pytest.approx(z_exact, rel=1e-8)  # the grid holds the whole mass, the quadrature is exact
    return np.append(mass.ravel() / z_exact, 1 - z_quad / z_exact)


def binned(samples):
    """Histogram counts of 2-D samples (..., 2) in the 40 x 40 bins, plus the outside count."""
    x = samples.reshape(-1, 2).numpy()
    inside = ((x >= EDGES[0]) & (x < EDGES[-1])).all(1)
    counts, _, _ = np.histogram2d(x[inside, 0], x[inside, 1], bins=[EDGES, EDGES])
    return np.append(counts.ravel(), (~inside).sum())


def _check_mixture(seed):
    """Total variation between the binned MALA samples and the exact bin probabilities.

    For n independent draws, E[TV] <= 1/2 sum_i sqrt(p_i / n) (Jensen on each
    |count_i / n - p_i|), and TV moves by at most 1/n per draw, so by McDiarmid
    P(TV > E[TV] + t) <= exp(-2 n t^2); t = sqrt(log(1e6) / (2 n)) makes that 1e-6.
    The chains' samples are correlated: we use n = N / tau with tau the largest
    integrated autocorrelation time of x_1, x_2 and the mode indicator 1[x_1 > 0]
    (hopping between the modes is the slowest motion, local moves decorrelate
    small bins faster). Returns TV, the bound and their ratio (pass: < 1).
    """
    n_chains, burn_in, n_keep = 2000, 200, 1000  # tau ~ 10 steps for the mode indicator
    res = mcmc.langevin(mixture_log_density, torch.zeros(n_chains, 2, dtype=F64), burn_in + n_keep, 0.5,
                        generator=G(seed))
    x = res.samples[burn_in:]
    taus = [mcmc.integrated_autocorrelation_time(s.numpy()) for s in (x[..., 0], x[..., 1], (x[..., 0] > 0).double())]
    n_eff = x.shape[0] * x.shape[1] / max(taus)
    p = exact_bin_probabilities()
    freq = binned(x) / (x.shape[0] * x.shape[1])
    tv = 0.5 * np.abs(freq - p).sum()
    bound = 0.5 * np.sqrt(p / n_eff).sum() + math.sqrt(math.log(1e6) / (2 * n_eff))
    # the check has teeth: the mixture with its weights swapped, and ULA at the same step
    # size (TV ~ 0.27, a short run suffices), are far outside the bound
    assert 0.5 * np.abs(exact_bin_probabilities(MIX_WEIGHTS[::-1]) - p).sum() > 5 * bound
    ula = mcmc.langevin(mixture_log_density, x[-1], 200, 0.5, adjust=False, generator=G(seed)).samples[100:]
    tv_ula = 0.5 * np.abs(binned(ula) / (ula.shape[0] * ula.shape[1]) - p).sum()
    assert tv_ula > 5 * bound, (tv_ula, bound)
    return {"tv": tv, "bound": bound, "tv/bound": tv / bound, "ula tv/bound": tv_ula / bound}


def test_mala_histogram_of_a_gaussian_mixture_matches_quadrature():
    stats = _check_mixture(SEED)
    assert stats["tv/bound"] < 1, stats


# ---------------------------------------------------------------- ULA vs MALA on a Gaussian
def ula_stationary_variance(s2, h):
    """ULA on N(0, s2): x' = (1 - h / s2) x + sqrt(2 h) xi is AR(1); its variance v solves
    v = (1 - h / s2)^2 v + 2 h, i.e. v = s2 / (1 - h / (2 s2)) (finite for h < 2 s2)."""
    return s2 / (1 - h / (2 * s2))


def _variance_z(res, burn_in, exact):
    """z-score of the mean of x^2 (all coordinates: independent, identical) against ``exact``."""
    x2 = (res.samples[burn_in:] ** 2).numpy()  # (n_steps, n_chains, d)
    return z_score(x2.reshape(x2.shape[0], -1), exact)


def _check_mala_exact_ula_biased(seed):
    s2, h, n_chains, burn_in, n_keep = 1.0, 0.6, 2000, 100, 300
    log_p = lambda x: -0.5 * (x**2).sum(1) / s2  # noqa: E731
    x0 = torch.randn(n_chains, 2, generator=G(seed + 1000), dtype=F64)
    mala = mcmc.langevin(log_p, x0, burn_in + n_keep, h, generator=G(seed))
    ula = mcmc.langevin(log_p, x0, burn_in + n_keep, h, adjust=False, generator=G(seed))
    assert torch.equal(ula.acceptance_rate, torch.ones(n_chains, dtype=F64))
    assert mala.acceptance_rate.mean() < 1
    z_mala, _ = _variance_z(mala, burn_in, s2)
    z_ula_vs_target, se = _variance_z(ula, burn_in, s2)
    z_ula_vs_theory, _ = _variance_z(ula, burn_in, ula_stationary_variance(s2, h))
    return {"mala": z_mala, "ula_vs_target": z_ula_vs_target, "ula_vs_theory": z_ula_vs_theory}


def test_mala_is_exact_where_ula_is_biased():
    z = _check_mala_exact_ula_biased(SEED)
    assert abs(z["mala"]) < Z_MAX, z
    assert abs(z["ula_vs_theory"]) < Z_MAX, z
    assert z["ula_vs_target"] > 8 * Z_MAX, z  # ULA's variance is 1.43, visibly not 1


def _check_ula_bias(seed):
    """ULA on N(0, s^2), s = 1.5, at h / s^2 = 0.2, 0.5, 0.8 (AR(1) coefficients 0.8, 0.5, 0.2):
    the measured stationary variance against s^2 / (1 - h / (2 s^2)), and its growth with h."""
    s2, n_chains, burn_in, n_keep = 2.25, 2000, 100, 300
    log_p = lambda x: -0.5 * (x**2).sum(1) / s2  # noqa: E731
    x0 = math.sqrt(s2) * torch.randn(n_chains, 1, generator=G(seed + 1000), dtype=F64)
    out, variances = {}, []
    for frac in (0.2, 0.5, 0.8):
        h = frac * s2
        res = mcmc.langevin(log_p, x0, burn_in + n_keep, h, adjust=False, generator=G(seed))
        exact = ula_stationary_variance(s2, h)
        z, se = _variance_z(res, burn_in, exact)
        assert se < 0.01 * exact
        out[f"h={h:g}"] = z
        variances.append((res.samples[burn_in:] ** 2).mean().item())
        out[f"bias/se h={h:g}"] = (variances[-1] - s2) / se
    out["growth"] = variances
    return out


def test_ula_bias_follows_the_ar1_closed_form():
    z = _check_ula_bias(SEED)
    assert max(abs(v) for k, v in z.items() if k.startswith("h=")) < Z_MAX, z
    v = z["growth"]
    assert v[0] < v[1] < v[2], v  # 2.50, 3.00, 3.75 in theory; each gap is ~ 20-50 error bars
    assert min(val for k, val in z.items() if k.startswith("bias/se")) > 10, z


# ---------------------------------------------------------------- MH with an asymmetric proposal
GAMMA_SHAPE, GAMMA_SCALE = 3.0, 2.0


def gamma_log_density(x):
    """Unnormalised Gamma(k, theta) on x > 0: (k - 1) log x - x / theta; -inf for x <= 0."""
    x = x[:, 0]
    inside = x > 0
    safe = torch.where(inside, x, torch.ones_like(x))
    return torch.where(inside, (GAMMA_SHAPE - 1) * safe.log() - safe / GAMMA_SCALE, -math.inf)


def log_normal_walk(sigma, hastings=True):
    """y = x exp(sigma eps): q(y | x) = N(log y; log x, sigma^2) / y, so log q(x|y) - log q(y|x) = log y - log x.

    With ``hastings=False`` the ratio is dropped (``y`` alone): that chain's stationary
    law is p(x) / x, here Gamma(k - 1, theta) (detailed balance with the 1 / y Jacobian).
    """

    def propose(x, generator):
        y = x * torch.exp(sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype))
        return (y, (y.log() - x.log()).sum(1)) if hastings else y

    return propose


def _check_asymmetric_mh(seed, hastings):
    n_chains, burn_in, n_keep = 2000, 200, 400
    x0 = torch.ones(n_chains, 1, dtype=F64)
    res = mcmc.metropolis_hastings(gamma_log_density, x0, burn_in + n_keep, log_normal_walk(0.8, hastings),
                                   generator=G(seed))
    x = res.samples[burn_in:, :, 0].numpy()
    out = {}
    for law, k in (("right", GAMMA_SHAPE), ("wrong", GAMMA_SHAPE - 1)):  # Gamma(k, theta), Gamma(k - 1, theta)
        mean, var = k * GAMMA_SCALE, k * GAMMA_SCALE**2
        out[f"mean vs {law}"], se = z_score(x, mean)
        assert se < 0.02 * mean
        out[f"var vs {law}"], se = z_score((x - mean) ** 2, var)
        assert se < 0.05 * var
    return out


def test_mh_with_hastings_ratio_samples_the_gamma_target():
    z = _check_asymmetric_mh(SEED, hastings=True)
    assert abs(z["mean vs right"]) < Z_MAX and abs(z["var vs right"]) < Z_MAX, z
    assert abs(z["mean vs wrong"]) > 20 * Z_MAX, z


def test_mh_without_hastings_ratio_samples_p_over_x():
    z = _check_asymmetric_mh(SEED, hastings=False)
    assert abs(z["mean vs right"]) > 20 * Z_MAX, z  # measurably wrong ...
    assert abs(z["mean vs wrong"]) < Z_MAX and abs(z["var vs wrong"]) < Z_MAX, z  # ... in exactly the predicted way


# ---------------------------------------------------------------- persistent chains on any step
def test_markov_chains_steps_one_at_a_time_equal_many_at_once_and_persist():
    log_p = gaussian_log_prob(MU, SIGMA)
    x0 = torch.randn(64, 2, generator=G(0), dtype=F64)
    for step in (mcmc.langevin_step(log_p, 0.4), mcmc.langevin_step(log_p, 0.4, adjust=False),
                 mcmc.mh_step(log_p, mcmc.gaussian_proposal(0.8))):
        one = mcmc.MarkovChains(step, x0, G(1))
        for _ in range(10):
            x = one.step()
        many = mcmc.MarkovChains(step, x0, G(1))
        assert torch.equal(many.step(10), x) and one.n_steps_done == many.n_steps_done == 10
        split = mcmc.MarkovChains(step, x0, G(1))
        split.step(4)
        assert split.n_steps_done == 4
        got = split.step(6)  # the state is kept between calls
        assert torch.equal(got, x) and got is split.x and split.n_steps_done == 10
        assert torch.equal(one.acceptance_rate, many.acceptance_rate)
    assert torch.equal(x0, torch.randn(64, 2, generator=G(0), dtype=F64))  # x0 untouched
    assert mcmc.MarkovChains(lambda x, g: x + 1, x0).acceptance_rate is None
    other = mcmc.MarkovChains(mcmc.langevin_step(log_p, 0.4), x0, G(2)).step(10)
    assert not torch.equal(other, mcmc.MarkovChains(mcmc.langevin_step(log_p, 0.4), x0, G(1)).step(10))


def test_step_functions_are_the_samplers_transitions():
    """One implementation each: k steps of a step function = k steps of the batch sampler, bitwise."""
    log_p = gaussian_log_prob(MU, SIGMA)
    x0 = torch.randn(64, 2, generator=G(0), dtype=F64)
    for adjust in (True, False):
        chains = mcmc.MarkovChains(mcmc.langevin_step(log_p, 0.4, adjust), x0, G(3))
        res = mcmc.langevin(log_p, x0, 12, 0.4, adjust=adjust, generator=G(3))
        assert torch.equal(chains.step(12), res.samples[-1])
        assert torch.equal(chains.acceptance_rate, res.acceptance_rate)
    prop = independence_proposal(MU, 3.0 * torch.diag(torch.diag(SIGMA)))
    chains = mcmc.MarkovChains(mcmc.mh_step(log_p, prop), x0, G(4))
    res = mcmc.metropolis_hastings(log_p, x0, 12, prop, generator=G(4))
    assert torch.equal(chains.step(12), res.samples[-1])
    assert torch.equal(chains.acceptance_rate, res.acceptance_rate)
    # a Gibbs sweep as a step function: the same chains as the RBM's PersistentChains
    rbm = BernoulliRBM(6, 4, seed=0)
    init = (torch.rand(50, 6, generator=G(5)) < 0.5).float()
    gibbs = mcmc.MarkovChains(lambda x, g: mcmc.gibbs_sample(rbm, x, 1, g), init, G(6))
    assert torch.equal(gibbs.step(7), mcmc.PersistentChains(rbm, 50, G(6), init=init).step(7))


def test_step_functions_follow_a_target_that_changes_between_calls():
    centre = [0.0]
    log_p = lambda x: -0.5 * ((x - centre[0]) ** 2).sum(1)  # noqa: E731
    chains = mcmc.MarkovChains(mcmc.langevin_step(log_p, 0.5), torch.zeros(500, 1, dtype=F64), G(0))
    chains.step(50)
    assert abs(chains.x.mean().item()) < 0.25  # sd of a mean of 500 unit-variance draws: 0.045
    centre[0] = 3.0  # e.g. an energy-based model after an optimizer step
    chains.step(50)
    assert abs(chains.x.mean().item() - 3.0) < 0.25


# ---------------------------------------------------------------- gradients
def test_grad_log_prob_is_the_exact_score_and_nothing_leaks():
    log_p = gaussian_log_prob(MU, SIGMA)
    x = torch.randn(7, 2, generator=G(0), dtype=F64)
    expected = -(x - MU) @ torch.linalg.inv(SIGMA)
    assert torch.allclose(mcmc.grad_log_prob(log_p, x), expected, atol=1e-12, rtol=0)
    # a parameterised log-density (an energy-based model): no graph in the samples, no .grad on the parameter
    theta = torch.tensor(0.7, dtype=F64, requires_grad=True)
    ebm = lambda x: -theta * (x**2).sum(1)  # noqa: E731
    x0 = torch.zeros(5, 3, dtype=F64, requires_grad=True)
    for adjust in (True, False):
        res = mcmc.langevin(ebm, x0, 4, 0.1, adjust=adjust, generator=G(1))
        assert not res.samples.requires_grad and not res.log_prob.requires_grad
    chains = mcmc.MarkovChains(mcmc.langevin_step(ebm, 0.1), x0, G(1))
    assert not chains.step(3).requires_grad
    assert not mcmc.grad_log_prob(ebm, x0).requires_grad
    assert theta.grad is None and x0.grad is None
    # states of any shape, e.g. images (n_chains, 1, 4, 4)
    imgs = mcmc.langevin(lambda x: -(x**2).sum((1, 2, 3)), torch.zeros(3, 1, 4, 4), 5, 0.1, generator=G(2))
    assert imgs.samples.shape == (5, 3, 1, 4, 4) and imgs.samples.dtype == torch.float32


def test_mala_rejects_proposals_of_zero_probability():
    # a half-normal on x > 0: MALA proposals below 0 have log p = -inf and are rejected
    log_p = lambda x: torch.where(x[:, 0] > 0, -0.5 * x[:, 0] ** 2, -math.inf)  # noqa: E731
    res = mcmc.langevin(log_p, torch.full((200, 1), 0.5, dtype=F64), 200, 0.5, generator=G(0))
    assert (res.samples > 0).all() and (res.acceptance_rate < 1).all()
    with pytest.raises(ValueError, match="ULA cannot reject"):
        mcmc.langevin(log_p, torch.full((200, 1), 0.5, dtype=F64), 200, 0.5, adjust=False, generator=G(0))


def test_same_seed_same_bits():
    log_p = gaussian_log_prob(MU, SIGMA)
    x0 = torch.zeros(20, 2, dtype=F64)
    runs = [mcmc.langevin(log_p, x0, 30, 0.3, generator=G(s)) for s in (5, 5, 6)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0].samples, runs[2].samples)


# ---------------------------------------------------------------- bad input
def test_bad_input_messages():
    lp = lambda x: -(x**2).sum(1)  # noqa: E731
    x0 = torch.zeros(3, 2)
    # Metropolis-Hastings with a (y, log_q_ratio) pair
    with pytest.raises(ValueError, match=r"log_q_ratio .* shape \(n_chains,\) = \(3,\).*got \(3, 2\) at step 1"):
        mcmc.metropolis_hastings(lp, x0, 5, lambda x, g: (x + 1, torch.zeros(3, 2)))
    with pytest.raises(ValueError, match=r"log_q_ratio .*got float"):
        mcmc.metropolis_hastings(lp, x0, 5, lambda x, g: (x + 1, 0.0))
    with pytest.raises(ValueError, match="y or a pair .*length 3"):
        mcmc.metropolis_hastings(lp, x0, 5, lambda x, g: (x, x, x))
    with pytest.raises(ValueError, match="same shape as x"):
        mcmc.metropolis_hastings(lp, x0, 5, lambda x, g: (x[:, :1], torch.zeros(3)))
    with pytest.raises(ValueError, match="log_q_ratio is NaN"):
        mcmc.metropolis_hastings(lp, x0, 5, lambda x, g: (x + 1, torch.full((3,), math.nan)))
    # Langevin
    with pytest.raises(TypeError, match="log_prob must be a callable"):
        mcmc.langevin(torch.zeros(3), x0, 5, 0.1)
    with pytest.raises(ValueError, match=r"x0 must have shape \(n_chains, d\).*x0\[:, None\]"):
        mcmc.langevin(lp, torch.zeros(3), 5, 0.1)
    with pytest.raises(TypeError, match="floating point"):
        mcmc.langevin(lp, torch.zeros(3, 2, dtype=torch.int64), 5, 0.1)
    for bad in (0.0, -1.0, math.nan, math.inf, True, "0.1"):
        with pytest.raises(ValueError, match=r"step_size \(units of x squared\) must be a finite number in \(0"):
            mcmc.langevin(lp, x0, 5, bad)
    with pytest.raises(ValueError, match="one value per chain"):
        mcmc.langevin(lambda x: -(x**2), x0, 5, 0.1)
    with pytest.raises(ValueError, match="no autograd graph"):
        mcmc.langevin(lambda x: torch.zeros(3), x0, 5, 0.1)
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        mcmc.langevin(lambda x: np.zeros(3), x0, 5, 0.1)
    with pytest.raises(ValueError, match="start every chain inside the support"):
        mcmc.langevin(lambda x: torch.where(x[:, 0] > 0, -x[:, 0], -math.inf), x0, 5, 0.1)
    with pytest.raises(ValueError, match="thin"):
        mcmc.langevin(lp, x0, 5, 0.1, thin=6)
    # NaN gradients: the masked branch of torch.where still back-propagates sqrt's NaN
    nan_at_x0 = lambda x: -(x**2).sum(1) + torch.where(x < 3, 0.0, (x - 3).sqrt()).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="gradient of log_prob is NaN or infinite for 3 chain.*at x0"):
        mcmc.langevin(nan_at_x0, x0, 5, 0.1)
    nan_beyond_3 = lambda x: -0.01 * (x**2).sum(1) + torch.where(x > 3, 0.0, (3 - x).sqrt()).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match=r"gradient of log_prob is NaN or infinite .*at the proposals of step \d+,"):
        mcmc.langevin(nan_beyond_3, torch.zeros(100, 1), 50, 1.0, generator=G(0))
    with pytest.raises(ValueError, match="gradient of log_prob is NaN or infinite .*at x"):
        mcmc.grad_log_prob(nan_at_x0, x0)
    # step functions and MarkovChains
    with pytest.raises(TypeError, match="proposal must be a callable"):
        mcmc.mh_step(lp, "gaussian")
    with pytest.raises(ValueError, match="step_size"):
        mcmc.langevin_step(lp, -0.1)
    with pytest.raises(TypeError, match="step must be a callable"):
        mcmc.MarkovChains(None, x0)
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        mcmc.MarkovChains(mcmc.langevin_step(lp, 0.1), [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"step must return the new states, a tensor of shape \(3, 2\)"):
        mcmc.MarkovChains(lambda x, g: x[:, 0], x0).step()
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        mcmc.MarkovChains(mcmc.langevin_step(lp, 0.1), x0).step(0)
    chains = mcmc.MarkovChains(mcmc.langevin_step(nan_beyond_3, 1.0), torch.zeros(100, 1), G(0))
    with pytest.raises(ValueError, match="gradient of log_prob is NaN") as err:
        chains.step(50)
    assert f"at transition {chains.n_steps_done + 1} of these chains" in err.value.__notes__[0]
