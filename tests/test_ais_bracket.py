"""The other side of AIS: exact samples, reverse annealing from them (an upper bound on log Z in
expectation, unbiased for Z_A / Z) and RAISE from data (unbiased for the annealing model's p(v)),
checked on RBMs small enough to enumerate every state and every transition matrix."""
import math

import pytest
import torch
from rbm_models import random_rbm

from helpers.ais import (
    ais_log_partition,
    base_log_partition,
    exact_samples,
    raise_log_likelihood,
    reverse_ais_log_partition,
)
from helpers.rbm import BernoulliRBM, binary_states

D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def exact_p(rbm):
    """p(x) over all 2^M visible states (binary_states order), by enumeration."""
    xs = binary_states(rbm.n_visible)
    return torch.softmax(-rbm.free_energy(xs), 0), xs


def tempered_kernel(rbm, a_base, beta):
    """The tempered block-Gibbs kernel T(x' | x) = sum_h p_beta(h | x) p_beta(x' | h) as a 2^M x 2^M matrix."""
    xs, hs = binary_states(rbm.n_visible), binary_states(rbm.n_hidden)
    ph = torch.sigmoid(beta * (xs @ rbm.W + rbm.b))                              # (X, N)
    p_h_given_x = torch.exp(hs @ torch.log(ph).T + (1 - hs) @ torch.log1p(-ph).T).T   # (X, H)
    px = torch.sigmoid((1 - beta) * a_base + beta * (hs @ rbm.W.T + rbm.a))       # (H, M)
    p_x_given_h = torch.exp(xs @ torch.log(px).T + (1 - xs) @ torch.log1p(-px).T).T   # (H, X)
    return p_h_given_x @ p_x_given_h


def annealing_model(rbm, a_base, betas):
    """p_ann(v) exactly: x_0 ~ p_0, then T_1, ..., T_K (T_k at betas[k]); the distribution of the last state."""
    xs = binary_states(rbm.n_visible)
    p0 = torch.softmax(xs @ a_base, 0)
    for beta in betas[1:].tolist():
        p0 = p0 @ tempered_kernel(rbm, a_base, beta)
    return p0


def test_kernel_of_the_check_leaves_its_temperature_invariant():
    # the exact kernel used below is the sweep AIS uses: p_beta T_beta = p_beta
    rbm, a_base = random_rbm(5, 3, seed=0), 0.3 * torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=D64)
    xs = binary_states(5)
    for beta in (0.0, 0.4, 1.0):
        log_f = (1 - beta) * xs @ a_base + beta * xs @ rbm.a + torch.nn.functional.softplus(
            beta * (xs @ rbm.W + rbm.b)).sum(1)
        p = torch.softmax(log_f, 0)
        assert torch.allclose(p @ tempered_kernel(rbm, a_base, beta), p, atol=1e-12)


@pytest.mark.parametrize("m,n", [(6, 4), (4, 6)])       # enumerate the hidden layer, then the visible one
def test_exact_samples_follow_p_and_give_the_exact_log_z(m, n):
    rbm = random_rbm(m, n, seed=2)
    res = exact_samples(rbm, 30000, torch.Generator().manual_seed(3))
    assert res.log_z == pytest.approx(rbm.log_partition_exact().item(), abs=1e-10)
    assert res.x.shape == (30000, m) and res.x.dtype == rbm.dtype and ((res.x == 0) | (res.x == 1)).all()
    p, _ = exact_p(rbm)
    index = (res.x * 2 ** torch.arange(m, dtype=D64)).sum(1).long()
    freq = torch.bincount(index, minlength=2**m).to(D64) / len(res.x)
    assert ((freq - p).abs() <= 4.5 * torch.sqrt(p * (1 - p) / len(res.x)) + 1e-12).all()
    chi2 = (((freq - p) ** 2) / p).sum().item() * len(res.x)     # ~ chi^2 with 2^m - 1 degrees of freedom
    dof = 2**m - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), chi2


def test_reverse_weights_are_unbiased_for_z_a_over_z_while_their_log_is_not():
    # a 3-temperature schedule is far too short: the weights are spread, yet E[w] = Z_A / Z exactly
    rbm = random_rbm(8, 5, seed=4, scale=0.8)
    log_z = rbm.log_partition_exact().item()
    a_base = torch.zeros(8, dtype=D64)
    log_z_base = base_log_partition(5, a_base)
    samples = exact_samples(rbm, 40000, torch.Generator().manual_seed(5)).x
    res = reverse_ais_log_partition(rbm, samples, betas=torch.tensor([0.0, 0.5, 1.0], dtype=D64),
                                    generator=torch.Generator().manual_seed(6), progress=False)
    w = res.log_weights.exp()
    ratio = math.exp(log_z_base - log_z)
    assert abs(w.mean().item() - ratio) < 4 * w.std().item() / math.sqrt(len(w)), (w.mean().item(), ratio)
    # Jensen: the mean of log w lies clearly below log(Z_A / Z), so the test above can tell the two apart
    gap = math.log(ratio) - res.log_weights.mean().item()
    assert gap > 10 * res.log_weights.std().item() / math.sqrt(len(w)), gap
    assert res.log_z == pytest.approx(log_z_base - (torch.logsumexp(res.log_weights, 0).item() - math.log(len(w))))
    # the forward weights of the same schedule are unbiased for the inverse ratio
    fwd = ais_log_partition(rbm, n_runs=40000, betas=torch.tensor([0.0, 0.5, 1.0], dtype=D64),
                            generator=torch.Generator().manual_seed(7), progress=False)
    wf = fwd.log_weights.exp()
    assert abs(wf.mean().item() - 1 / ratio) < 4 * wf.std().item() / math.sqrt(len(wf))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_and_reverse_bracket_the_exact_log_z(seed):
    rbm = random_rbm(20, 10, seed=10 + seed, scale=1.0)
    exact = rbm.log_partition_exact().item()
    gen = torch.Generator().manual_seed(seed)
    data = exact_samples(rbm, 500, gen).x                       # base rates fitted to model samples
    fwd = ais_log_partition(rbm, n_runs=200, n_betas=100, data=data, generator=gen, progress=False)
    rev = reverse_ais_log_partition(rbm, exact_samples(rbm, 200, gen).x, n_betas=100, data=data, generator=gen,
                                    progress=False)
    assert fwd.log_z - 3 * fwd.stderr <= exact <= rev.log_z + 3 * rev.stderr, (fwd.log_z, exact, rev.log_z)
    assert rev.log_z >= fwd.log_z - 3 * math.hypot(fwd.stderr, rev.stderr)
    # the check can fail: a log Z one nat off lies outside the bracket
    assert not (fwd.log_z - 3 * fwd.stderr <= exact + 1.0 <= rev.log_z + 3 * rev.stderr) or \
        not (fwd.log_z - 3 * fwd.stderr <= exact - 1.0 <= rev.log_z + 3 * rev.stderr)


def test_raise_weights_are_unbiased_for_the_annealing_model():
    rbm = random_rbm(5, 3, seed=20, scale=1.0)
    a_base = 0.2 * torch.randn(5, generator=torch.Generator().manual_seed(21), dtype=D64)
    betas = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=D64)
    p_ann = annealing_model(rbm, a_base, betas)
    assert p_ann.sum().item() == pytest.approx(1.0, abs=1e-12)
    p_rbm, xs = exact_p(rbm)
    for i in (0, 13, 31):
        v = xs[i:i + 1].repeat(20000, 1)                         # one run per row: every weight separately
        est = raise_log_likelihood(rbm, v, betas=betas, base_visible_bias=a_base,
                                   generator=torch.Generator().manual_seed(i), progress=False)
        w = est.per_image.exp()
        assert abs(w.mean().item() - p_ann[i].item()) < 4 * w.std().item() / math.sqrt(len(w)), (i, w.mean(), p_ann[i])
        # a stochastic lower bound on log p_ann(v): E[log w] <= log E[w]
        assert est.mean <= math.log(p_ann[i].item()) + 3 * est.per_image.std().item() / math.sqrt(len(w))
    # with so short a schedule the annealing model is not the RBM: the check above is about p_ann
    assert (p_ann - p_rbm).abs().max() > 1e-3


def test_raise_approaches_the_exact_log_likelihood_from_below_for_a_slow_schedule():
    rbm = random_rbm(12, 6, seed=30, scale=0.7)
    log_z = rbm.log_partition_exact().item()
    v = exact_samples(rbm, 200, torch.Generator().manual_seed(31)).x   # "test images" drawn from the model
    exact = (-rbm.free_energy(v) - log_z)
    est = raise_log_likelihood(rbm, v, n_runs=5, n_betas=500, generator=torch.Generator().manual_seed(32),
                               progress=False)
    assert est.per_image.shape == (200,) and est.per_image.dtype == D64
    diff = est.per_image - exact
    se = diff.std().item() / math.sqrt(len(diff))
    assert diff.mean().item() <= 3 * se                                # conservative on average
    assert abs(diff.mean().item()) < 0.1                               # and close with 500 temperatures


def test_caches_and_refusals(tmp_path):
    rbm = random_rbm(6, 3, seed=40)
    x = exact_samples(rbm, 50, torch.Generator().manual_seed(41)).x
    a = reverse_ais_log_partition(rbm, x, n_betas=20, generator=torch.Generator().manual_seed(1), progress=False,
                                  checkpoint=tmp_path / "rev.pt")
    b = reverse_ais_log_partition(rbm, x, n_betas=20, generator=torch.Generator().manual_seed(1), progress=False,
                                  checkpoint=tmp_path / "rev.pt")
    assert torch.equal(a.log_weights, b.log_weights)
    r1 = raise_log_likelihood(rbm, x[:5], n_runs=2, n_betas=20, generator=torch.Generator().manual_seed(2),
                              progress=False, checkpoint=tmp_path / "raise.pt")
    r2 = raise_log_likelihood(rbm, x[:5], n_runs=2, n_betas=20, generator=torch.Generator().manual_seed(2),
                              progress=False, checkpoint=tmp_path / "raise.pt")
    assert torch.equal(r1.per_image, r2.per_image)
    with pytest.raises(ValueError, match="binary"):
        reverse_ais_log_partition(rbm, torch.full((4, 6), 0.5, dtype=D64), n_betas=10, progress=False)
    with pytest.raises(ValueError, match="binary"):
        raise_log_likelihood(rbm, torch.full((4, 6), 0.5, dtype=D64), n_betas=10, progress=False)
    with pytest.raises(ValueError, match="not both"):
        raise_log_likelihood(rbm, x, n_betas=10, data=x, base_visible_bias=torch.zeros(6, dtype=D64), progress=False)
    with pytest.raises(ValueError, match="n_runs"):
        raise_log_likelihood(rbm, x, n_runs=0, n_betas=10, progress=False)
    with pytest.raises(ValueError, match="Gibbs chains"):
        exact_samples(BernoulliRBM(784, 30), 10)


def test_exact_samples_cache(tmp_path):
    rbm = random_rbm(6, 4, seed=50)
    a = exact_samples(rbm, 20, torch.Generator().manual_seed(1), checkpoint=tmp_path / "exact.pt")
    gen = torch.Generator().manual_seed(1)
    b = exact_samples(rbm, 20, gen, checkpoint=tmp_path / "exact.pt")
    assert torch.equal(a.x, b.x) and a.log_z == b.log_z
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(1).get_state())   # loaded: generator untouched
