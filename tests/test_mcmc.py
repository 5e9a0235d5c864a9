"""helpers.mcmc against independent computations.

* Samplers: histograms of the final states of many independent chains against
  the exact p(x) of a tiny RBM, computed here by brute force over every (x, h)
  pair. Final states of independent chains are independent draws, so the
  bounds below are exact-sample statistics (the chains run far longer than the
  mixing time of a 32-state chain).
* Diagnostics: an AR(1) process, whose autocorrelation rho^k and integrated
  time (1 + rho) / (1 - rho) are known in closed form, direct O(n^2) sums, and
  a loop-by-loop split-R-hat written here.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from rbm_models import random_rbm

from helpers import _linear, mcmc
from helpers.rbm import BernoulliRBM

N_CHAINS = 20_000
FALSE_ALARM = 1e-6  # per assertion, at a fixed seed


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_rbm(dtype, seed=3, m=5, n=3, scale=1.0):
    return random_rbm(m, n, seed, scale, dtype)


def exact_p_visible(rbm):
    """p(x) for all 2^M visible states (index = sum_i x_i 2^i), brute force over every (x, h)."""
    W, a, b = (t.double().tolist() for t in (rbm.W, rbm.a, rbm.b))
    m, n = rbm.n_visible, rbm.n_hidden
    weights = []
    for k in range(2**m):
        x = [(k >> i) & 1 for i in range(m)]
        total = 0.0
        for h in itertools.product([0, 1], repeat=n):
            neg_e = sum(a[i] * x[i] for i in range(m)) + sum(b[j] * h[j] for j in range(n)) \
                + sum(x[i] * W[i][j] * h[j] for i in range(m) for j in range(n))
            total += math.exp(neg_e)
        weights.append(total)
    z = sum(weights)
    return np.array([w / z for w in weights])


def state_counts(x):
    """Histogram of binary rows over the 2^M states (state index = sum_i x_i 2^i)."""
    x = x.long()
    idx = (x * (1 << torch.arange(x.shape[1]))).sum(1)
    return np.bincount(idx.numpy(), minlength=2 ** x.shape[1]).astype(float)


def chi2_quantile(dof, alpha):
    """Upper alpha-quantile of chi^2(dof), Wilson-Hilferty (accurate to ~1% here)."""
    z = {1e-6: 4.753424}[alpha]
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def assert_matches(counts, p, alpha=FALSE_ALARM):
    """Two tests of n i.i.d. draws against p, each with false-alarm rate <= alpha:

    * total variation: E[TV] <= 1/2 sum_i sqrt(p_i / n), and TV changes by at most
      1/n per draw, so by McDiarmid P(TV > E[TV] + t) <= exp(-2 n t^2);
    * Pearson's chi-square with 2^M - 1 degrees of freedom (all expected counts >= 5 here).
    """
    n = counts.sum()
    assert (n * p).min() >= 5, "model too peaked for the chi-square approximation"
    tv = 0.5 * np.abs(counts / n - p).sum()
    tv_bound = 0.5 * np.sqrt(p / n).sum() + math.sqrt(math.log(1 / alpha) / (2 * n))
    assert tv < tv_bound, f"TV distance {tv:.4f} exceeds {tv_bound:.4f}"
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < chi2_quantile(len(p) - 1, alpha), f"chi2 = {chi2:.1f} with {len(p) - 1} dof"


@pytest.fixture(scope="module")
def rbm64():
    rbm = tiny_rbm(torch.float64)
    return rbm, exact_p_visible(rbm)


# ---------------------------------------------------------------- Metropolis-Hastings
def test_mh_flip_one_bit_samples_the_exact_rbm_marginal(rbm64):
    rbm, p = rbm64
    log_z = rbm.log_partition_exact()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(N_CHAINS, rbm.n_visible, dtype=torch.float64)  # all chains start in one state
    res = mcmc.metropolis_hastings(lambda x: rbm.log_likelihood_exact(x, log_z), x0, 150,
                                   mcmc.flip_one_bit_proposal(), generator=gen, thin=50)
    assert res.samples.shape == (3, N_CHAINS, rbm.n_visible)
    assert res.log_prob.shape == (3, N_CHAINS)
    assert torch.allclose(res.log_prob[-1], rbm.log_likelihood_exact(res.samples[-1]))
    assert 0.2 < res.acceptance_rate.mean() < 0.9
    assert_matches(state_counts(res.samples[-1]), p)
    # the sampler is not the uniform distribution in disguise: the check above has teeth
    assert 0.5 * np.abs(p - 1 / 32).sum() > 0.2


def test_mh_gaussian_target_mean_and_variance_within_error_bars():
    mu, sigma = 1.0, 2.0
    gen = torch.Generator().manual_seed(1)
    x0 = torch.zeros(64, 1, dtype=torch.float64)
    res = mcmc.metropolis_hastings(lambda x: -0.5 * (((x - mu) / sigma) ** 2).sum(1), x0, 3000,
                                   mcmc.gaussian_proposal(5.0), generator=gen)
    rate = res.acceptance_rate
    assert rate.shape == (64,) and ((rate > 0) & (rate < 1)).all()
    assert 0.2 < rate.mean() < 0.6
    x = res.samples[500:, :, 0].numpy()  # (n_steps, n_chains) after burn-in
    n = x.size
    se_mean = x.std() * math.sqrt(mcmc.integrated_autocorrelation_time(x) / n)
    assert abs(x.mean() - mu) < 4 * se_mean
    dev2 = (x - mu) ** 2
    se_var = dev2.std() * math.sqrt(mcmc.integrated_autocorrelation_time(dev2) / n)
    assert abs(dev2.mean() - sigma**2) < 4 * se_var
    assert se_mean < 0.1 and se_var < 0.3  # error bars small enough for the check to mean something


def test_mh_thinning_keeps_every_thin_th_state_and_trace_acceptance():
    target = lambda x: -0.5 * (x**2).sum(1)  # noqa: E731
    x0 = torch.zeros(8, 2, dtype=torch.float64)
    full = mcmc.metropolis_hastings(target, x0, 30, mcmc.gaussian_proposal(1.0), torch.Generator().manual_seed(5))
    thin = mcmc.metropolis_hastings(target, x0, 30, mcmc.gaussian_proposal(1.0), torch.Generator().manual_seed(5),
                                    thin=3)
    assert torch.equal(thin.samples, full.samples[2::3])
    assert torch.equal(thin.acceptance_rate, full.acceptance_rate)
    # with continuous proposals every accepted move changes the state: the trace-based rate agrees
    trace = torch.cat([x0[None], full.samples])
    assert np.allclose(mcmc.acceptance_rate(trace), full.acceptance_rate.numpy())
    assert mcmc.acceptance_rate(np.zeros((5, 3))).tolist() == [0, 0, 0]


def test_mh_rejects_moves_into_zero_probability():
    # target: uniform on [0, 1]; chains never leave it, and proposals outside are rejected
    inside = lambda x: (x[:, 0] >= 0) & (x[:, 0] <= 1)  # noqa: E731
    log_prob = lambda x: torch.where(inside(x), 0.0, -math.inf).double()  # noqa: E731
    res = mcmc.metropolis_hastings(log_prob, torch.full((16, 1), 0.5), 400, mcmc.gaussian_proposal(0.5),
                                   torch.Generator().manual_seed(2))
    assert ((res.samples >= 0) & (res.samples <= 1)).all()
    assert (res.acceptance_rate < 0.9).all() and (res.acceptance_rate > 0.1).all()
    assert abs(res.samples.mean().item() - 0.5) < 0.05  # 6400 draws, sd ~ 0.29 * sqrt(tau ~ 3 / 6400)


def test_flip_one_bit_flips_exactly_one_bit_uniformly():
    x = torch.zeros(40_000, 4)
    y = mcmc.flip_one_bit_proposal()(x, torch.Generator().manual_seed(0))
    assert ((y != x).sum(1) == 1).all()
    freq = (y != x).double().mean(0)
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)  # sd 0.0022


# ---------------------------------------------------------------- Gibbs sampling
@pytest.mark.parametrize("dtype, fast_kernel", [(torch.float64, None), (torch.float32, None),
                                                (torch.float32, False)])
def test_gibbs_samples_the_exact_rbm_marginal(dtype, fast_kernel, monkeypatch):
    if fast_kernel is False:  # force the torch.addmm fallback even where oneDNN is used
        monkeypatch.setattr(_linear, "ONEDNN_OK", False)
    rbm = tiny_rbm(dtype)
    p = exact_p_visible(rbm)
    gen = torch.Generator().manual_seed(7)
    x0 = torch.ones(N_CHAINS, rbm.n_visible, dtype=dtype)
    x = mcmc.gibbs_sample(rbm, x0, 30, generator=gen)
    assert x.shape == (N_CHAINS, rbm.n_visible) and x.dtype == dtype
    assert_matches(state_counts(x), p)


def test_persistent_chains_sample_the_exact_rbm_marginal_and_keep_state(rbm64):
    rbm, p = rbm64
    chains = mcmc.PersistentChains(rbm, N_CHAINS, generator=torch.Generator().manual_seed(8))
    assert chains.x.shape == (N_CHAINS, rbm.n_visible)
    for _ in range(10):
        x = chains.step(3)
    assert chains.n_sweeps_done == 30 and x is chains.x
    assert_matches(state_counts(x), p)


def test_gibbs_equals_persistent_chains_and_keep_every():
    rbm = tiny_rbm(torch.float32, m=6, n=4)
    init = (torch.rand(50, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    direct = mcmc.gibbs_sample(rbm, init, 10, torch.Generator().manual_seed(1))
    chains = mcmc.PersistentChains(rbm, 50, torch.Generator().manual_seed(1), init=init)
    chains.step(4)
    assert torch.equal(chains.step(6), direct)  # state persists between calls
    kept = mcmc.gibbs_sample(rbm, init, 10, torch.Generator().manual_seed(1), keep_every=5)
    assert kept.shape == (2, 50, 6) and torch.equal(kept[-1], direct)
    assert torch.equal(init, (torch.rand(50, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float())


def test_persistent_chains_follow_parameter_updates():
    rbm = BernoulliRBM(8, 4, seed=0)
    chains = mcmc.PersistentChains(rbm, 200, generator=torch.Generator().manual_seed(0))
    rbm.a = torch.full((8,), 30.0)  # visible units now (almost surely) on
    assert (chains.step() == 1).all()
    rbm.a = torch.full((8,), -30.0)
    assert (chains.step() == 0).all()


def test_gibbs_draws_are_per_sample_and_conditionals_match_rbm():
    rbm = BernoulliRBM(784, 50, seed=0)
    rbm.W = torch.zeros(784, 50)  # every unit is on with probability 1/2, independently
    x = mcmc.gibbs_sample(rbm, torch.zeros(100, 784), 1, torch.Generator().manual_seed(0))
    assert len({tuple(row) for row in x.int().tolist()}) == 100  # no draw shared across the batch
    assert abs(x.mean().item() - 0.5) < 0.01  # 78,400 fair coins: sd 0.0018
    assert abs(x.mean(0) - 0.5).max() < 0.2
    # the fused kernel computes exactly rbm.prob_h_given_x / prob_x_given_h
    rbm = tiny_rbm(torch.float32, m=30, n=20)
    xb = (torch.rand(64, 30, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    hb = (torch.rand(64, 20, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    lin = _linear.linear_for(torch.float32, torch.device("cpu"))
    assert torch.allclose(lin(xb, rbm.W.T, rbm.b), rbm.prob_h_given_x(xb), atol=1e-6)
    assert torch.allclose(lin(hb, rbm.W, rbm.a), rbm.prob_x_given_h(hb), atol=1e-6)


def test_gibbs_with_strided_parameters_and_input():
    """Views (transposes, slices) as parameters and chains: same draws as with contiguous copies."""
    gen = torch.Generator().manual_seed(4)
    strided = BernoulliRBM(12, 7)
    strided.W = torch.randn(7, 12, generator=gen).T
    strided.a = torch.randn(24, generator=gen)[::2]
    strided.b = torch.randn(14, generator=gen)[1::2]
    dense = BernoulliRBM(12, 7)
    dense.W, dense.a, dense.b = (t.contiguous() for t in (strided.W, strided.a, strided.b))
    x0 = (torch.rand(40, 24, generator=gen) < 0.5).float()[:, ::2]
    lin = _linear.linear_for(torch.float32, torch.device("cpu"))
    assert torch.allclose(lin(x0, strided.W.T, strided.b), dense.prob_h_given_x(x0.contiguous()), atol=1e-6)
    h = (torch.rand(40, 7, generator=gen) < 0.5).float()
    assert torch.allclose(lin(h, strided.W, strided.a), dense.prob_x_given_h(h), atol=1e-6)
    ours = mcmc.gibbs_sample(strided, x0, 5, torch.Generator().manual_seed(0), keep_every=1)
    ref = mcmc.gibbs_sample(dense, x0.contiguous(), 5, torch.Generator().manual_seed(0), keep_every=1)
    # identical draws unless a probability lands within rounding of its uniform
    assert (ours != ref).float().mean() < 1e-3


def test_gibbs_ignores_autograd_on_parameters():
    rbm = tiny_rbm(torch.float32)
    rbm.W.requires_grad_(True)
    x = mcmc.gibbs_sample(rbm, torch.zeros(4, 5), 2, torch.Generator().manual_seed(0))
    assert not x.requires_grad


# ---------------------------------------------------------------- diagnostics
def ar1(rho, n_steps, n_chains, seed):
    """x_t = rho x_{t-1} + sqrt(1 - rho^2) eps_t, started in equilibrium (unit variance)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((n_steps, n_chains))
    x = np.empty_like(eps)
    x[0] = eps[0]
    c = math.sqrt(1 - rho**2)
    for t in range(1, n_steps):
        x[t] = rho * x[t - 1] + c * eps[t]
    return x


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_ar1_autocorrelation_tau_and_ess(rho):
    n_steps, n_chains = 20_000, 8
    x = ar1(rho, n_steps, n_chains, seed=int(rho * 10))
    tau_true = (1 + rho) / (1 - rho)
    # sd of rho(k) ~ sqrt(tau / N) <= 0.0075 for N = 160,000: tolerance 0.03 is 4 sd
    acf = mcmc.autocorrelation(x, max_lag=10)
    assert acf.shape == (11,) and acf[0] == 1.0
    assert np.allclose(acf, rho ** np.arange(11), atol=0.03)
    # Sokal: var(tau_hat) / tau^2 ~ 2 (2M + 1) / N with M ~ 5 tau -> sd <= 3.4%; tolerance 12%
    tau = mcmc.integrated_autocorrelation_time(x)
    assert tau == pytest.approx(tau_true, rel=0.12)
    assert mcmc.effective_sample_size(x) == pytest.approx(n_steps * n_chains / tau_true, rel=0.12)
    assert mcmc.effective_sample_size(x) == pytest.approx(x.size / tau, rel=1e-12)


def test_white_noise_has_tau_one_and_torch_input_works():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((5000, 4)))
    assert mcmc.integrated_autocorrelation_time(x) == pytest.approx(1.0, abs=0.1)
    assert mcmc.effective_sample_size(x) == pytest.approx(20_000, rel=0.1)


def test_autocorrelation_equals_direct_sum():
    x = np.random.default_rng(3).standard_normal((60, 3)).cumsum(0)
    n = len(x)
    d = x - x.mean(0)
    direct = np.array([(d[: n - k] * d[k:]).sum(0).mean() / n for k in range(n)])
    assert np.allclose(mcmc.autocorrelation(x), direct / direct[0], atol=1e-12)
    assert np.allclose(mcmc.autocorrelation(x[:, 0]), mcmc.autocorrelation(x[:, :1]))  # 1-D = one chain


def test_short_series_warns():
    walk = np.random.default_rng(0).standard_normal((200, 2)).cumsum(0)  # random walk: tau is "infinite"
    with pytest.warns(RuntimeWarning, match="too short"):
        mcmc.integrated_autocorrelation_time(walk)


def split_r_hat_by_hand(x):
    n = x.shape[0] // 2
    seqs = [x[:n, j] for j in range(x.shape[1])] + [x[n:2 * n, j] for j in range(x.shape[1])]
    means = [sum(s) / n for s in seqs]
    variances = [sum((v - mu) ** 2 for v in s) / (n - 1) for s, mu in zip(seqs, means)]
    w = sum(variances) / len(seqs)
    grand = sum(means) / len(seqs)
    b = n * sum((mu - grand) ** 2 for mu in means) / (len(seqs) - 1)
    return math.sqrt(((n - 1) / n * w + b / n) / w)


def test_r_hat():
    rng = np.random.default_rng(4)
    same = rng.standard_normal((2001, 4))
    assert mcmc.r_hat(same) < 1.01
    shifted = rng.standard_normal((2000, 4)) + np.array([0.0, 1.0, 2.0, 3.0])
    assert mcmc.r_hat(shifted) > 1.1
    small = rng.standard_normal((11, 3))
    assert mcmc.r_hat(small) == pytest.approx(split_r_hat_by_hand(small), rel=1e-12)
    # a drift inside each chain is caught by the split, even with identical chains
    trend = np.linspace(0, 5, 1000)[:, None] + 0.1 * rng.standard_normal((1000, 4))
    assert mcmc.r_hat(trend) > 1.1
    assert mcmc.r_hat(torch.from_numpy(same)) == mcmc.r_hat(same)


# ---------------------------------------------------------------- bad input
def test_bad_input_messages():
    lp = lambda x: -(x**2).sum(1)  # noqa: E731
    prop = mcmc.gaussian_proposal(1.0)
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
        mcmc.metropolis_hastings(lp, x0, 0, prop)
    with pytest.raises(ValueError, match=r"shape \(n_chains, d\).*x0\[:, None\]"):
        mcmc.metropolis_hastings(lp, torch.zeros(3), 5, prop)
    with pytest.raises(TypeError, match="log_prob must be a callable"):
        mcmc.metropolis_hastings(torch.zeros(3), x0, 5, prop)
    with pytest.raises(TypeError, match="proposal must be a callable"):
        mcmc.metropolis_hastings(lp, x0, 5, "gaussian")
    with pytest.raises(ValueError, match="same shape as x"):
        mcmc.metropolis_hastings(lp, x0, 5, lambda x, g: x[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        mcmc.metropolis_hastings(lambda x: torch.full((3,), float("nan")), x0, 5, prop)
    with pytest.raises(ValueError, match="one value per chain"):
        mcmc.metropolis_hastings(lambda x: -(x**2), x0, 5, prop)
    with pytest.raises(ValueError, match="thin"):
        mcmc.metropolis_hastings(lp, x0, 5, prop, thin=6)
    with pytest.raises(TypeError, match="torch.Generator"):
        mcmc.metropolis_hastings(lp, x0, 5, prop, generator=0)
    with pytest.raises(ValueError, match="scale"):
        mcmc.gaussian_proposal(0.0)
    rbm = tiny_rbm(torch.float32)
    with pytest.raises(ValueError, match="n_sweeps"):
        mcmc.gibbs_sample(rbm, torch.zeros(2, 5), 0)
    with pytest.raises(ValueError, match=r"shape \(batch, 5\)"):
        mcmc.gibbs_sample(rbm, torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match="binary"):
        mcmc.gibbs_sample(rbm, torch.full((2, 5), 0.5), 3)
    with pytest.raises(ValueError, match="keep_every"):
        mcmc.gibbs_sample(rbm, torch.zeros(2, 5), 3, keep_every=4)
    with pytest.raises(ValueError, match="n_chains=3"):
        mcmc.PersistentChains(rbm, 3, init=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least 2 chains"):
        mcmc.r_hat(np.zeros((100, 1)))
    with pytest.raises(ValueError, match="n_steps, n_chains"):
        mcmc.autocorrelation(np.zeros((10, 2, 2)))
    with pytest.raises(ValueError, match="constant"):
        mcmc.autocorrelation(np.ones((10, 2)))
    with pytest.raises(ValueError, match="max_lag"):
        mcmc.autocorrelation(np.random.default_rng(0).random((10, 2)), max_lag=10)
    with pytest.raises(ValueError, match="NaN"):
        mcmc.integrated_autocorrelation_time(np.array([1.0, np.nan, 2.0]))
