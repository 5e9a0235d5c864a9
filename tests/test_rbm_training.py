"""CD-k / PCD, the CD loss, pseudo-likelihood and train_rbm, against independent
computations: exact enumeration (BernoulliRBM's exact functions, themselves
checked against a brute-force joint table in test_rbm.py) and a joint table
built here with itertools."""
import itertools
import math

import pytest
import torch

from helpers import _linear
from helpers.rbm import (
    BernoulliRBM,
    TrainHistory,
    base_rate_visible_bias,
    binary_states,
    cd_gradient,
    cd_loss,
    gibbs_sweeps,
    pseudo_log_likelihood,
    train_rbm,
)

D = torch.float64


def random_rbm(m, n, seed, scale=1.0, dtype=D):
    gen = torch.Generator().manual_seed(seed)
    rbm = BernoulliRBM(m, n, dtype=dtype)
    rbm.W = (scale * torch.randn(m, n, generator=gen, dtype=D)).to(dtype)
    rbm.a = (0.5 * torch.randn(m, generator=gen, dtype=D)).to(dtype)
    rbm.b = (0.5 * torch.randn(n, generator=gen, dtype=D)).to(dtype)
    return rbm


def flat(grad):
    return torch.cat([grad[k].flatten() for k in ("W", "a", "b")])


def toy_data(n=240, m=6, seed=0, dtype=D):
    """Three prototypes of m bits, each bit flipped with probability 0.1."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=dtype)[:, :m]
    x = protos[torch.randint(3, (n,), generator=gen)]
    flip = (torch.rand(n, m, generator=gen) < 0.1).to(dtype)
    return (x - flip).abs()


# ---------------------------------------------------------------------- CD-k and PCD
def test_cd_bias_shrinks_with_k_and_vanishes_at_large_k():
    rbm = random_rbm(6, 4, seed=0, scale=1.5)  # strong couplings: slow mixing, a visible CD-1 bias
    data = binary_states(6)[torch.tensor([3, 17, 40, 62, 5, 33, 21, 50])]
    exact = flat(rbm.exact_gradient(data))
    x = data.repeat(500, 1)  # every chain starts at a data row; the positive phase is exact
    gen = torch.Generator().manual_seed(1)
    bias, noise = {}, {}
    for k in (1, 3, 30):
        draws = torch.stack([flat(cd_gradient(rbm, x, k, gen)[0]) for _ in range(20)])
        mean, stderr = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
        bias[k], noise[k] = (mean - exact).norm().item(), stderr.norm().item()
        if k == 30:  # close to the exact gradient, component by component, within the noise
            assert ((mean - exact).abs() < 5 * stderr).all()
            assert bias[k] < 2 * noise[k]
    # CD-1 is far off, CD-3 less, CD-30 least, each step beyond 5 standard errors of the
    # difference (the noise norms of independent estimates add in quadrature)
    assert bias[1] > bias[3] + 5 * math.hypot(noise[1], noise[3])
    assert bias[3] > bias[30] + 5 * math.hypot(noise[3], noise[30])
    assert bias[1] > 0.1


def test_pcd_chains_sample_the_model():
    rbm = random_rbm(6, 4, seed=2, scale=1.0)
    p_exact = torch.exp(rbm.log_likelihood_exact(binary_states(6)))  # p(x) for state index sum_i x_i 2**i
    gen = torch.Generator().manual_seed(3)
    data = torch.zeros(10, 6, dtype=D)
    chains = torch.ones(4000, 6, dtype=D)  # far from equilibrium on purpose
    for _ in range(10):
        _, x_neg = cd_gradient(rbm, data, k=10, generator=gen, chains=chains)
    assert x_neg.data_ptr() != chains.data_ptr() and torch.equal(x_neg, chains)  # updated in place
    index = (chains * 2 ** torch.arange(6, dtype=D)).sum(1).long()
    counts = torch.bincount(index, minlength=64).to(D)
    expected = len(chains) * p_exact
    keep = expected >= 5
    chi2 = (((counts - expected) ** 2 / expected)[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)
    # the test can fail: the same histogram is far from a wrong distribution
    wrong = len(chains) * torch.exp(random_rbm(6, 4, seed=9).log_likelihood_exact(binary_states(6)))
    assert (((counts - wrong) ** 2 / wrong)[keep]).sum().item() > 10 * dof


def test_cd_gradient_is_positive_minus_negative_statistics():
    rbm = random_rbm(5, 3, seed=4)
    x = toy_data(50, 5)
    grad, x_neg = cd_gradient(rbm, x, k=2, generator=torch.Generator().manual_seed(0))
    pos, neg = rbm.positive_phase(x), rbm.positive_phase(x_neg)
    for name in grad:
        assert torch.allclose(grad[name], pos[name] - neg[name], atol=1e-14)
    assert set(x_neg.unique().tolist()) <= {0.0, 1.0} and x_neg.shape == x.shape
    # seeded: reproducible
    again, x_neg2 = cd_gradient(rbm, x, k=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_neg, x_neg2) and torch.equal(again["W"], grad["W"])


def test_negative_samples_are_drawn_per_sample():
    rbm = random_rbm(8, 5, seed=5, scale=0.2)  # p(x_i | h) near 1/2: rows should differ
    x = torch.ones(500, 8, dtype=D)  # identical rows
    _, x_neg = cd_gradient(rbm, x, k=1, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in x_neg.tolist()}) > 100
    chains = torch.zeros(500, 8, dtype=D)
    cd_gradient(rbm, x, k=1, generator=torch.Generator().manual_seed(0), chains=chains)
    assert len({tuple(r) for r in chains.tolist()}) > 100


def test_bad_k_raises():
    rbm = random_rbm(3, 2, seed=0)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            cd_gradient(rbm, torch.zeros(2, 3, dtype=D), k=bad)
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            gibbs_sweeps(rbm, torch.zeros(2, 3, dtype=D), k=bad)


# ---------------------------------------------------------------------- CD loss
def test_cd_loss_gradient_is_minus_cd_gradient_and_detaching_matters():
    rbm = random_rbm(6, 4, seed=6)
    x = toy_data(30)
    grad, x_neg = cd_gradient(rbm, x, k=1, generator=torch.Generator().manual_seed(0))
    params = {k: v.clone().requires_grad_(True) for k, v in rbm.parameters().items()}
    cd_loss(params, x, x_neg).backward()
    for name in grad:
        assert torch.allclose(params[name].grad, -grad[name], atol=1e-12), name
    # an RBM is accepted in place of the dict
    for p in rbm.parameters().values():
        p.requires_grad_(True)
    cd_loss(rbm, x, x_neg).backward()
    assert torch.allclose(rbm.W.grad, -grad["W"], atol=1e-12)

    # negatives that depend on the parameters: mean-field reconstructions sigmoid(a + W h)
    for p in params.values():
        p.grad = None
    h = torch.bernoulli(torch.sigmoid(x @ params["W"].detach() + params["b"].detach()),
                        generator=torch.Generator().manual_seed(1))
    x_mf = torch.sigmoid(h @ params["W"].T + params["a"])  # carries a graph back to W and a
    cd_loss(params, x, x_mf).backward()
    detached = {k: v.grad.clone() for k, v in params.items()}
    stats_pos, stats_neg = rbm.positive_phase(x), {  # the CD formula with x_mf as fixed negatives
        "W": x_mf.detach().T @ torch.sigmoid(x_mf.detach() @ params["W"].detach() + params["b"].detach()) / len(h),
        "a": x_mf.detach().mean(0),
        "b": torch.sigmoid(x_mf.detach() @ params["W"].detach() + params["b"].detach()).mean(0)}
    for name in detached:
        assert torch.allclose(detached[name], -(stats_pos[name].detach() - stats_neg[name]), atol=1e-12), name

    # the pitfall: the same loss without the detach back-propagates through the sampler
    for p in params.values():
        p.grad = None

    def free_energy(v):
        return -(v @ params["a"]) - torch.nn.functional.softplus(v @ params["W"] + params["b"]).sum(1)

    (free_energy(x).mean() - free_energy(x_mf).mean()).backward()
    assert not torch.allclose(params["W"].grad, detached["W"], atol=1e-3)
    assert not torch.allclose(params["a"].grad, detached["a"], atol=1e-3)


def test_cd_loss_bad_input():
    rbm = random_rbm(3, 2, seed=0)
    with pytest.raises(ValueError, match=r"x_neg must be a tensor of shape \(batch, 3\)"):
        cd_loss(rbm, torch.zeros(2, 3, dtype=D), torch.zeros(2, 4, dtype=D))
    with pytest.raises(TypeError, match="mapping with keys"):
        cd_loss({"W": rbm.W}, torch.zeros(2, 3, dtype=D), torch.zeros(2, 3, dtype=D))


# ---------------------------------------------------------------------- pseudo-likelihood
def test_pseudo_log_likelihood_matches_joint_table():
    rbm = random_rbm(5, 3, seed=7)
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=D)
    hs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=D)
    W, a, b = rbm.W, rbm.a, rbm.b
    # unnormalised p(x) = sum_h exp(-E(x, h)), straight from the energy
    p = torch.tensor([sum(math.exp(float(a @ x + b @ h + x @ W @ h)) for h in hs) for x in xs], dtype=D)
    table = {tuple(x.tolist()): p[i].item() for i, x in enumerate(xs)}
    expected = []
    for x in xs.tolist():
        total = 0.0
        for i in range(5):
            y = list(x)
            y[i] = 1.0 - y[i]
            total += math.log(table[tuple(x)] / (table[tuple(x)] + table[tuple(y)]))
        expected.append(total)
    got = pseudo_log_likelihood(rbm, xs)
    assert got.shape == (32,)
    assert torch.allclose(got, torch.tensor(expected, dtype=D), atol=1e-10)
    # it is not the log-likelihood
    assert not torch.allclose(got, rbm.log_likelihood_exact(xs), atol=0.1)


def test_pseudo_log_likelihood_chunking_and_stochastic_estimate():
    rbm = random_rbm(12, 7, seed=8, scale=0.7)
    x = toy_data(40, 6).repeat(1, 2)
    exact = pseudo_log_likelihood(rbm, x)
    from helpers.rbm import _pll_bits
    assert torch.allclose(_pll_bits(rbm, x, chunk_elems=50), exact, atol=1e-12)  # chunk of one bit per step
    # one random bit per row, scaled by M: unbiased for the exact value
    x_rep = x[:3].repeat(4000, 1)
    est = pseudo_log_likelihood(rbm, x_rep, stochastic=True, generator=torch.Generator().manual_seed(0))
    est = est.reshape(4000, 3)
    stderr = est.std(0) / math.sqrt(4000)
    assert ((est.mean(0) - exact[:3]).abs() < 5 * stderr).all()
    assert est.std(0).min() > 0  # it is random


# ---------------------------------------------------------------------- base rate
def test_base_rate_visible_bias():
    x = toy_data(100)
    a = base_rate_visible_bias(x, eps=0.01)
    p = (x.mean(0) + 0.01) / 1.02
    assert torch.allclose(torch.sigmoid(a), p, atol=1e-12) and a.dtype == D
    # the base-rate model (W = 0) has exactly these pixel marginals
    rbm = BernoulliRBM(6, 3, dtype=D)
    rbm.W, rbm.a = torch.zeros(6, 3, dtype=D), a
    states = binary_states(6)
    marg = torch.exp(rbm.log_likelihood_exact(states)) @ states
    assert torch.allclose(marg, p, atol=1e-12)
    assert torch.isfinite(base_rate_visible_bias(torch.zeros(5, 4))).all()  # constant pixels stay finite
    with pytest.raises(ValueError, match="eps"):
        base_rate_visible_bias(x, eps=0.0)


# ---------------------------------------------------------------------- train_rbm
KEYS = {"epoch", "recon_error", "pseudo_log_likelihood", "free_energy_gap", "time"}


@pytest.mark.parametrize("method, k", [("cd", 1), ("pcd", 1), ("cd", 3)])
def test_training_raises_the_exact_log_likelihood(method, k):
    x, x_valid = toy_data(240), toy_data(60, seed=1)
    rbm = BernoulliRBM(6, 4, seed=0, dtype=D)
    before = rbm.log_likelihood_exact(x).mean().item()
    hist = train_rbm(rbm, x, x_valid, method=method, k=k, lr=0.1, batch_size=20, n_epochs=25, n_chains=50,
                     seed=0, progress=False)
    after = rbm.log_likelihood_exact(x).mean().item()
    held_out = rbm.log_likelihood_exact(x_valid).mean().item()
    # uniform start: 6 log 2 = 4.16 nats per image; the 3-prototype data need about 2.8
    assert before == pytest.approx(-6 * math.log(2), abs=0.05)
    assert after > before + 0.8, (before, after)
    assert held_out > before + 0.6
    assert isinstance(hist, TrainHistory) and set(hist) == KEYS
    assert all(len(v) == 25 for v in hist.values())
    assert hist["epoch"] == list(range(1, 26))
    assert hist["pseudo_log_likelihood"][-1] > hist["pseudo_log_likelihood"][0]
    assert hist["recon_error"][-1] < hist["recon_error"][0]
    assert all(isinstance(g, float) for g in hist["free_energy_gap"])
    assert all(t > 0 for t in hist["time"])
    assert hist.settings["pll"] == "exact"
    if method == "pcd":
        assert hist.chains.shape == (50, 6) and set(hist.chains.unique().tolist()) <= {0.0, 1.0}
    else:
        assert hist.chains is None


def test_history_metrics_match_direct_computations():
    x, x_valid = toy_data(80), toy_data(30, seed=1)
    rbm = BernoulliRBM(6, 4, seed=0, dtype=D)
    hist = train_rbm(rbm, x, x_valid, lr=0.1, n_epochs=2, batch_size=10, n_monitor=1000, progress=False)
    # the monitoring subset is every training row here (n_monitor >= len(x))
    recon = torch.sigmoid(rbm.prob_h_given_x(x) @ rbm.W.T + rbm.a)
    assert hist["recon_error"][-1] == pytest.approx(((x - recon) ** 2).mean().item(), abs=1e-12)
    assert hist["pseudo_log_likelihood"][-1] == pytest.approx(pseudo_log_likelihood(rbm, x).mean().item(),
                                                              abs=1e-10)
    gap = rbm.free_energy(x_valid).mean() - rbm.free_energy(x[:30]).mean()
    assert hist["free_energy_gap"][-1] == pytest.approx(gap.item(), abs=1e-10)
    # stochastic monitoring: M times one fixed random bit per image
    wide = torch.cat([x, 1 - x], 1)
    rbm12 = BernoulliRBM(12, 3, seed=0, dtype=D)
    hist = train_rbm(rbm12, wide, lr=0.1, n_epochs=1, pll="stochastic", progress=False)
    from helpers.rbm import _pll_bits
    bits = torch.randint(12, (80,), generator=torch.Generator().manual_seed(12345))
    assert hist["pseudo_log_likelihood"][0] == pytest.approx(12 * _pll_bits(rbm12, wide, bits).mean().item())


@pytest.mark.parametrize("dtype, atol, onednn", [(torch.float64, 1e-12, None), (torch.float32, 1e-5, None),
                                                  (torch.float32, 1e-5, False)])
def test_one_full_batch_step_equals_lr_times_cd_gradient(dtype, atol, onednn, monkeypatch):
    """The fast training loop draws the same numbers as cd_gradient: one update with
    momentum 0 and no weight decay is exactly lr times the CD / PCD gradient. In float32
    the loop's products run on helpers._linear's kernel (oneDNN where available) and
    cd_gradient's on torch.addmm: the same up to float32 rounding (onednn=False forces the
    addmm fallback that machines without oneDNN use)."""
    if onednn is False:
        monkeypatch.setattr(_linear, "ONEDNN_OK", False)
    x = toy_data(30, dtype=dtype)
    for method in ("cd", "pcd"):
        for k in (1, 2):
            rbm, ref = random_rbm(6, 4, seed=1, dtype=dtype), random_rbm(6, 4, seed=1, dtype=dtype)
            chains = toy_data(7, seed=5, dtype=dtype)
            extra = {"chains": chains.clone()} if method == "pcd" else {}
            train_rbm(rbm, x, method=method, k=k, lr=0.3, momentum=0.0, weight_decay=0.0, batch_size=30,
                      n_epochs=1, shuffle=False, seed=4, progress=False, **extra)
            grad, _ = cd_gradient(ref, x, k=k, generator=torch.Generator().manual_seed(4),
                                  chains=chains.clone() if method == "pcd" else None)
            for name in grad:
                expected = ref.parameters()[name] + 0.3 * grad[name]
                assert torch.allclose(rbm.parameters()[name], expected, atol=atol), (method, k, name)


def test_weight_decay_acts_on_W_only_and_momentum_accumulates():
    x = toy_data(30)
    base = dict(method="cd", lr=0.3, batch_size=30, n_epochs=1, shuffle=False, seed=4, progress=False)
    r0, r1 = random_rbm(6, 4, seed=1), random_rbm(6, 4, seed=1)
    W_before = r1.W.clone()
    train_rbm(r0, x, momentum=0.0, weight_decay=0.0, **base)
    train_rbm(r1, x, momentum=0.0, weight_decay=0.5, **base)
    assert torch.allclose(r1.W, r0.W - 0.3 * 0.5 * W_before, atol=1e-12)
    assert torch.equal(r1.a, r0.a) and torch.equal(r1.b, r0.b)
    # two batches: the second update carries momentum * first update
    x2 = torch.cat([x, x])
    r2, r3 = random_rbm(6, 4, seed=1), random_rbm(6, 4, seed=1)
    train_rbm(r2, x2, momentum=0.0, weight_decay=0.0, **base)
    train_rbm(r3, x2, momentum=0.9, weight_decay=0.0, **base)
    assert not torch.allclose(r2.W, r3.W, atol=1e-3)


def test_training_is_deterministic_for_a_seed():
    x = toy_data(120)

    def run(seed, method="pcd"):
        rbm = BernoulliRBM(6, 4, seed=0, dtype=torch.float32)
        hist = train_rbm(rbm, x.float(), method=method, lr=0.1, batch_size=16, n_epochs=3, seed=seed,
                         progress=False)
        return rbm, hist

    (r1, h1), (r2, h2), (r3, _) = run(0), run(0), run(1)
    assert torch.equal(r1.W, r2.W) and torch.equal(r1.b, r2.b) and torch.equal(h1.chains, h2.chains)
    assert h1["recon_error"] == h2["recon_error"]
    assert not torch.equal(r1.W, r3.W)
    # a generator instead of a seed
    g1 = torch.Generator().manual_seed(7)
    rbm_g = BernoulliRBM(6, 4, seed=0, dtype=torch.float32)
    train_rbm(rbm_g, x.float(), lr=0.1, n_epochs=2, generator=g1, progress=False)
    rbm_s = BernoulliRBM(6, 4, seed=0, dtype=torch.float32)
    train_rbm(rbm_s, x.float(), lr=0.1, n_epochs=2, seed=7, progress=False)
    assert torch.equal(rbm_g.W, rbm_s.W)


def test_pcd_chains_continue_across_calls():
    x = toy_data(60)
    rbm = BernoulliRBM(6, 4, seed=0, dtype=D)
    h1 = train_rbm(rbm, x, method="pcd", n_chains=20, n_epochs=1, progress=False)
    start = h1.chains.clone()
    h2 = train_rbm(rbm, x, method="pcd", chains=h1.chains, n_epochs=1, progress=False, seed=1)
    assert torch.equal(h1.chains, start)  # the caller's tensor is not modified
    assert h2.chains.shape == (20, 6) and not torch.equal(h2.chains, start)
    with pytest.raises(ValueError, match="only used with method='pcd'"):
        train_rbm(rbm, x, method="cd", chains=start, progress=False)


def test_thread_setting_is_restored(monkeypatch):
    before = torch.get_num_threads()
    x = toy_data(20).float()
    for setting in ("auto", "1", "2"):      # the one thread policy, helpers.config.threads_for
        monkeypatch.setenv("COURSE_THREADS", setting)
        train_rbm(BernoulliRBM(6, 4, seed=0), x, n_epochs=1, progress=False)
        assert torch.get_num_threads() == before
    monkeypatch.delenv("COURSE_THREADS")
    with pytest.raises(TypeError, match=r"unknown setting\(s\) 'num_threads'; RBMSettings has: batch_size"):
        train_rbm(BernoulliRBM(6, 4, seed=0), x, n_epochs=1, progress=False, num_threads=1)
    with pytest.raises(FloatingPointError):
        train_rbm(BernoulliRBM(6, 4, seed=0), x, lr=1e38, momentum=0.9, batch_size=2, progress=False)
    assert torch.get_num_threads() == before


def test_stochastic_monitoring_for_wide_models():
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 80, generator=gen) < 0.3).float()
    hist = train_rbm(BernoulliRBM(80, 5, seed=0), x, n_epochs=2, progress=False)
    assert hist.settings["pll"] == "stochastic" and len(hist["pseudo_log_likelihood"]) == 2
    assert hist["free_energy_gap"] == [None, None]


def test_huge_but_finite_weights_are_not_called_divergent():
    """The per-batch screen sums the parameters in float32; a sum that overflows although every
    entry is finite must not stop training."""
    rbm = BernoulliRBM(6, 4, seed=0, dtype=torch.float32)
    rbm.W = torch.full((6, 4), 3e37)
    assert not torch.isfinite(rbm.W.sum())  # 7.2e38 overflows float32
    train_rbm(rbm, toy_data(20).float(), lr=1e-30, momentum=0.0, weight_decay=0.0, batch_size=10, n_epochs=1,
              progress=False)
    assert torch.isfinite(rbm.W).all()


def test_divergence_raises_floating_point_error():
    x = toy_data(100).float()
    rbm = BernoulliRBM(6, 4, seed=0, dtype=torch.float32)
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1, batch \d+ of 10.*smaller learning rate"):
        train_rbm(rbm, x, lr=1e38, momentum=0.9, batch_size=10, n_epochs=2, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k must be an int >= 1"),
    (dict(lr=0.0), r"lr must be a finite number in \(0"),
    (dict(lr=-0.1), "lr must be"),
    (dict(lr=float("nan")), "lr must be"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(n_epochs=0), "n_epochs must be"),
    (dict(momentum=1.0), "momentum must be"),
    (dict(weight_decay=-1e-3), "weight_decay must be"),
    (dict(method="sgd"), "method must be one of 'cd', 'pcd'"),
    (dict(method="pcd", n_chains=0), "n_chains must be"),
    (dict(seed=-1), "seed must be"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_rbm(BernoulliRBM(6, 4), toy_data(20).float(), progress=False, **kwargs)


def test_bad_data_raise():
    rbm = BernoulliRBM(6, 4)
    with pytest.raises(ValueError, match="binary"):
        train_rbm(rbm, torch.full((10, 6), 0.5), progress=False)
    with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
        train_rbm(rbm, torch.zeros(10, 5), progress=False)
    with pytest.raises(ValueError, match="binary"):
        train_rbm(rbm, torch.zeros(10, 6), x_valid=torch.full((3, 6), 0.3), progress=False)


# ---------------------------------------------------------------------- checkpoints
def test_train_rbm_checkpoint_loads_same_configuration_and_retrains_stale(tmp_path, capsys):
    gen = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((64, 12), 0.3), generator=gen)
    path = tmp_path / "rbm.pt"

    def run(**kw):
        rbm = BernoulliRBM(12, 5, seed=1)
        hist = train_rbm(rbm, x, method="pcd", n_chains=8, batch_size=16, n_epochs=2, progress=False,
                         checkpoint=path, **kw)
        return rbm, hist

    rbm1, h1 = run()
    assert path.exists() and "Loaded" not in capsys.readouterr().out
    rbm2, h2 = run()
    assert "Loaded the trained weights" in capsys.readouterr().out
    for name in ("W", "a", "b"):
        assert torch.equal(getattr(rbm1, name), getattr(rbm2, name))
    assert dict(h1) == dict(h2) and torch.equal(h1.chains, h2.chains) and h1.settings == h2.settings
    run(lr=0.01)
    assert "differs in: lr" in capsys.readouterr().out


def test_train_rbm_checkpoint_never_executes_pickled_code(tmp_path, capsys):
    import pickle

    marker, path = tmp_path / "pwned", tmp_path / "rbm.pt"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    path.write_bytes(pickle.dumps({"format": "helpers.rbm checkpoint 1", "state": Payload()}))
    x = torch.bernoulli(torch.full((32, 6), 0.5), generator=torch.Generator().manual_seed(0))
    train_rbm(BernoulliRBM(6, 3, seed=0), x, n_epochs=1, batch_size=8, progress=False, checkpoint=path)
    assert not marker.exists()
    assert "could not be loaded safely" in capsys.readouterr().out
