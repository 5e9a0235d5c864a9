"""helpers.mixture against brute force: every 2^D image enumerated, a planted mixture recovered,
EM's objective never decreasing, the M-step a maximum, K = 1 equal to independent pixels."""
import math

import pytest
import torch

from helpers.baselines import independent_pixels
from helpers.mixture import BernoulliMixture, MixtureSettings, em_statistics, fit_mixture, m_step
from helpers.rbm import binary_states

D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def random_mixture(k, d, seed):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=gen, dtype=D64) + 0.1
    probs = 0.02 + 0.96 * torch.rand(k, d, generator=gen, dtype=D64)
    return BernoulliMixture(weights / weights.sum(), probs)


def brute_force_log_prob(mixture, x):
    """log sum_k pi_k prod_d Bernoulli(x_d; mu_kd) with torch.distributions, one component at a time."""
    terms = [torch.log(w) + torch.distributions.Bernoulli(probs=p).log_prob(x).sum(1)
             for w, p in zip(mixture.weights, mixture.probs)]
    return torch.logsumexp(torch.stack(terms, 1), 1)


def planted_data(n, seed):
    """n images of 12 pixels from a known 2-component mixture (weights 0.3 / 0.7)."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.tensor([[0.9] * 6 + [0.1] * 6, [0.2, 0.8] * 6], dtype=D64)
    weights = torch.tensor([0.3, 0.7], dtype=D64)
    k = torch.multinomial(weights, n, replacement=True, generator=gen)
    x = (torch.rand(n, 12, generator=gen, dtype=D64) < probs[k]).to(D64)
    return x, weights, probs


@pytest.mark.parametrize("k,d,seed", [(1, 6, 0), (3, 8, 1), (5, 10, 2)])
def test_log_prob_is_the_brute_force_sum_and_normalised(k, d, seed):
    mix = random_mixture(k, d, seed)
    x = binary_states(d)                                           # all 2^d images
    log_p = mix.log_prob(x)
    assert torch.allclose(log_p, brute_force_log_prob(mix, x), atol=1e-12)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)   # probabilities sum to 1
    r = mix.responsibilities(x)
    assert torch.allclose(r.sum(1), torch.ones(len(x), dtype=D64), atol=1e-12)
    joint = torch.stack([torch.log(w) + torch.distributions.Bernoulli(probs=p).log_prob(x).sum(1)
                         for w, p in zip(mix.weights, mix.probs)], 1)
    assert torch.allclose(r, torch.softmax(joint, 1), atol=1e-12)


def test_samples_follow_the_model():
    mix = random_mixture(3, 4, seed=3)
    x, comp = mix.sample(40000, torch.Generator().manual_seed(4), return_components=True)
    assert x.shape == (40000, 4) and ((x == 0) | (x == 1)).all()
    index = (x * 2 ** torch.arange(4, dtype=D64)).sum(1).long()     # binary_states' bit order
    freq = torch.bincount(index, minlength=16).to(D64) / len(x)
    p = mix.log_prob(binary_states(4)).exp()
    assert ((freq - p).abs() <= 4 * torch.sqrt(p * (1 - p) / len(x)) + 1e-12).all(), (freq, p)
    share = torch.bincount(comp, minlength=3).to(D64) / len(x)
    assert ((share - mix.weights).abs() < 4 * torch.sqrt(mix.weights / len(x))).all()


def objective(mix, x, alpha):
    """The MAP objective per image, recomputed from brute-force log-likelihoods."""
    return (brute_force_log_prob(mix, x).sum().item() + mix.log_prior(alpha)) / len(x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_objective_never_decreases(seed):
    x, _, _ = planted_data(400, seed)
    mix, hist = fit_mixture(x, 4, n_iter=25, pseudo_count=0.5, seed=seed, progress=False)
    seq = torch.tensor([hist.extras["initial_objective"]] + hist["objective"], dtype=D64)
    assert (torch.diff(seq) >= -1e-12).all(), torch.diff(seq).min()
    assert seq[-1] > seq[0] + 0.1                                   # and it did climb
    assert hist["objective"][-1] == pytest.approx(objective(mix, x, 0.5), abs=1e-10)
    assert hist["log_likelihood"][-1] == pytest.approx(brute_force_log_prob(mix, x).mean().item(), abs=1e-10)


def test_em_log_likelihood_never_decreases_without_prior():
    # alpha -> 0: the MAP objective becomes the log-likelihood itself
    x, _, _ = planted_data(400, 5)
    _, hist = fit_mixture(x, 3, n_iter=40, pseudo_count=1e-10, seed=5, progress=False)
    seq = torch.tensor([hist.extras["initial_log_likelihood"]] + hist["log_likelihood"], dtype=D64)
    assert (torch.diff(seq) >= -1e-9).all(), torch.diff(seq).min()


def test_m_step_maximises_the_expected_complete_log_posterior():
    x, _, _ = planted_data(300, 6)
    start, alpha = random_mixture(3, 12, seed=6), 0.7
    _, counts, sums = em_statistics(start, start.check_data(x))
    r = start.responsibilities(x)

    def q(mix):  # sum_nk r_nk log(pi_k p(x_n | k)) + log prior
        return float((r * mix.log_joint(x)).sum()) + mix.log_prior(alpha)

    best = m_step(counts, sums, len(x), alpha)
    assert counts.sum().item() == pytest.approx(len(x), abs=1e-9)
    gen = torch.Generator().manual_seed(7)
    for _ in range(20):
        logit_p = torch.logit(best.probs) + 0.05 * torch.randn(best.probs.shape, generator=gen, dtype=D64)
        log_w = torch.log(best.weights) + 0.05 * torch.randn(3, generator=gen, dtype=D64)
        other = BernoulliMixture(torch.softmax(log_w, 0), torch.sigmoid(logit_p))
        assert q(other) < q(best)


def test_recovers_a_planted_two_component_mixture():
    n = 6000
    x, weights, probs = planted_data(n, 8)
    mix, _ = fit_mixture(x, 2, n_iter=100, pseudo_count=1.0, seed=8, progress=False)
    order = mix.weights.argsort()                                   # the labels are arbitrary
    w_hat, p_hat = mix.weights[order], mix.probs[order]
    assert ((w_hat - weights).abs() < 4 * torch.sqrt(weights * (1 - weights) / n)).all(), (w_hat, weights)
    se = torch.sqrt(probs * (1 - probs) / (n * weights[:, None]))
    assert ((p_hat - probs).abs() < 5 * se + 2e-3).all(), (p_hat - probs).abs().max()


def test_one_component_is_independent_pixels():
    gen = torch.Generator().manual_seed(9)
    x_train = (torch.rand(500, 30, generator=gen, dtype=D64) < torch.linspace(0.05, 0.9, 30, dtype=D64)).to(D64)
    x_test = (torch.rand(200, 30, generator=gen, dtype=D64) < 0.4).to(D64)
    mix, _ = fit_mixture(x_train, 1, n_iter=1, pseudo_count=1.0, progress=False)
    assert torch.allclose(mix.log_prob(x_test), independent_pixels(x_train, x_test, pseudo_count=1.0), atol=1e-10)


def test_history_test_log_likelihood_and_float32():
    x, _, _ = planted_data(600, 10)
    mix, hist = fit_mixture(x[:400], 2, x[400:], n_iter=5, seed=1, progress=False)
    assert len(hist["test_log_likelihood"]) == len(hist["time"]) == len(hist["epoch"]) == 5
    assert hist["test_log_likelihood"][-1] == pytest.approx(mix.log_prob(x[400:]).mean().item(), abs=1e-10)
    assert hist.settings["n_components"] == 2 and hist.settings["n_iter"] == 5
    mix32, hist32 = fit_mixture(x[:400].float(), 2, n_iter=5, seed=1, dtype="float32", progress=False)
    assert mix32.dtype == torch.float32
    assert hist32["log_likelihood"][-1] == pytest.approx(hist["log_likelihood"][-1], abs=1e-4)


def test_checkpoint_round_trip(tmp_path):
    x, _, _ = planted_data(300, 11)
    path = tmp_path / "mix.pt"
    first, h1 = fit_mixture(x, 3, n_iter=4, seed=2, progress=False, checkpoint=path)
    assert path.exists()
    again, h2 = fit_mixture(x, 3, n_iter=4, seed=2, progress=False, checkpoint=path)
    assert torch.equal(first.probs, again.probs) and torch.equal(first.weights, again.weights)
    assert h2["log_likelihood"] == h1["log_likelihood"]
    other, _ = fit_mixture(x, 3, n_iter=5, seed=2, progress=False, checkpoint=path)   # another setting: refits
    assert not torch.equal(other.probs, first.probs)


def test_refuses_bad_input():
    mix = random_mixture(2, 5, seed=12)
    with pytest.raises(ValueError, match="binary"):
        mix.log_prob(torch.full((3, 5), 0.5, dtype=D64))
    with pytest.raises(ValueError, match="binarize"):
        fit_mixture(torch.rand(50, 5), 2, progress=False)
    with pytest.raises(ValueError, match="pixels"):
        mix.log_prob(torch.zeros(3, 6, dtype=D64))
    with pytest.raises(ValueError, match="binary"):
        mix.log_prob(torch.tensor([[0.0, 1.0, math.nan, 0.0, 1.0]], dtype=D64))
    with pytest.raises(ValueError, match="float tensor"):
        mix.log_prob([[0, 1, 0, 1, 0]])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        BernoulliMixture(torch.ones(1, dtype=D64), torch.tensor([[0.0, 0.5]], dtype=D64))
    with pytest.raises(ValueError, match="sum to 1"):
        BernoulliMixture(torch.tensor([0.5, 0.6], dtype=D64), torch.full((2, 3), 0.5, dtype=D64))
    with pytest.raises(ValueError, match="n_components"):
        MixtureSettings(n_components=0)
    with pytest.raises(ValueError, match="pseudo_count"):
        MixtureSettings(n_components=2, pseudo_count=0.0)
    with pytest.raises(ValueError, match="dtype"):
        MixtureSettings(n_components=2, dtype="float16")
    with pytest.raises(ValueError, match="at least as many training images"):
        fit_mixture(torch.zeros(3, 5), 4, progress=False)
    with pytest.raises(TypeError, match="unknown setting"):
        fit_mixture(torch.zeros(3, 5), 2, n_iters=3, progress=False)
