"""Annealed importance sampling against exact log Z (BernoulliRBM.log_partition_exact,
itself checked against brute force in test_rbm.py) on models small enough to enumerate."""
import math
import warnings

import pytest
import torch

from helpers.ais import AISResult, ais_log_partition, base_log_partition, log_likelihood
from helpers.rbm import BernoulliRBM, base_rate_visible_bias, train_rbm

D = torch.float64


def random_rbm(m, n, seed, scale, dtype=D):
    gen = torch.Generator().manual_seed(seed)
    rbm = BernoulliRBM(m, n, dtype=dtype)
    rbm.W = (scale * torch.randn(m, n, generator=gen, dtype=D)).to(dtype)
    rbm.a = (scale * torch.randn(m, generator=gen, dtype=D)).to(dtype)
    rbm.b = (scale * torch.randn(n, generator=gen, dtype=D)).to(dtype)
    return rbm


def check_close(result, exact, what):
    err = result.log_z - exact
    assert abs(err) < 4 * result.stderr and abs(err) < 0.2, (what, err, result.stderr)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ais_matches_exact_log_z_on_50_by_12(dtype):
    rbm = random_rbm(50, 12, seed=0, scale=0.5, dtype=dtype)
    exact = rbm.log_partition_exact().item()
    res = ais_log_partition(rbm, n_runs=100, n_betas=3000, generator=torch.Generator().manual_seed(1),
                            progress=False)
    assert isinstance(res, AISResult) and res.log_weights.shape == (100,) and res.log_weights.dtype == D
    assert res.log_z_base == pytest.approx(12 * math.log(2) + 50 * math.log(2))  # uniform base model
    assert 0 < res.stderr < 0.1 and 1 <= res.ess <= 100
    check_close(res, exact, dtype)
    # the check can fail: shifting every visible bias by 0.02 moves log Z by about 0.5 nats
    shifted = random_rbm(50, 12, seed=0, scale=0.5, dtype=dtype)
    shifted.a = shifted.a + 0.02
    with pytest.raises(AssertionError):
        check_close(res, shifted.log_partition_exact().item(), "shifted")


def test_ais_matches_exact_log_z_on_briefly_trained_784_by_10(shared_data, monkeypatch):
    from helpers.data import load_mnist

    monkeypatch.setenv("COURSE_DATA", str(shared_data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _ = load_mnist("train", binarize="threshold", limit=2000)
    rbm = BernoulliRBM(784, 10, seed=0)
    rbm.a = base_rate_visible_bias(x)
    train_rbm(rbm, x, lr=0.05, n_epochs=3, seed=0, progress=False)
    assert rbm.W.abs().max() > 0.1  # trained: far from the base model
    exact = rbm.log_partition_exact().item()
    res = ais_log_partition(rbm, n_runs=100, n_betas=5000, data=x, generator=torch.Generator().manual_seed(2),
                            progress=False)
    check_close(res, exact, "784 x 10")
    # log-likelihoods: -F(x) - log Z, with an AISResult or a number
    ll_ais, ll_exact = log_likelihood(rbm, x[:50], res), rbm.log_likelihood_exact(x[:50])
    assert ll_ais.per_image.shape == (50,)
    assert torch.allclose(ll_ais.per_image, ll_exact.double() - (res.log_z - exact), atol=1e-3)
    assert ll_ais.mean == pytest.approx(ll_ais.per_image.mean().item())


def test_base_model_alone_is_exact():
    gen = torch.Generator().manual_seed(3)
    data = (torch.rand(200, 30, generator=gen) < torch.linspace(0.05, 0.9, 30)).to(D)
    a_base = base_rate_visible_bias(data)
    rbm = BernoulliRBM(30, 5, dtype=D)
    rbm.W, rbm.a = torch.zeros(30, 5, dtype=D), a_base.clone()
    exact = rbm.log_partition_exact().item()
    assert base_log_partition(5, a_base) == pytest.approx(exact, abs=1e-10)
    res = ais_log_partition(rbm, n_runs=10, n_betas=50, data=data, generator=gen, progress=False)
    assert res.log_z == pytest.approx(exact, abs=1e-10) and res.stderr == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(res.log_weights, torch.zeros(10, dtype=D), atol=1e-12)
    # hidden biases without couplings: every run gets the same weight, log Z still exact
    rbm.b = torch.randn(5, generator=gen, dtype=D)
    res = ais_log_partition(rbm, n_runs=10, n_betas=50, base_visible_bias=a_base, generator=gen, progress=False)
    assert res.log_z == pytest.approx(rbm.log_partition_exact().item(), abs=1e-9)
    assert res.ess == pytest.approx(10.0)


def test_stderr_matches_the_spread_of_repeated_estimates():
    rbm = random_rbm(20, 6, seed=4, scale=0.8)
    gen = torch.Generator().manual_seed(5)
    runs = [ais_log_partition(rbm, n_runs=25, n_betas=60, generator=gen, progress=False) for _ in range(40)]
    spread = torch.tensor([r.log_z for r in runs], dtype=D).std().item()
    typical = sum(r.stderr for r in runs) / len(runs)
    assert 0.5 < typical / spread < 2.0, (typical, spread)
    # the single-estimate errors are of the size the stderr says
    exact = rbm.log_partition_exact().item()
    z = torch.tensor([(r.log_z - exact) / r.stderr for r in runs])
    assert (z.abs() < 5).all()


def test_custom_schedule_threads_and_single_run():
    rbm = random_rbm(12, 4, seed=6, scale=0.5)
    betas = torch.cat([torch.linspace(0, 0.5, 200), torch.linspace(0.5, 1, 801)[1:]])
    threads = torch.get_num_threads()
    res = ais_log_partition(rbm, n_runs=200, betas=betas, generator=torch.Generator().manual_seed(7),
                            progress=False)
    assert torch.get_num_threads() == threads
    check_close(res, rbm.log_partition_exact().item(), "custom schedule")
    one = ais_log_partition(rbm, n_runs=1, n_betas=10, progress=False)
    assert math.isnan(one.stderr) and math.isfinite(one.log_z)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_runs=0), "n_runs must be an int >= 1"),
    (dict(n_runs=-5), "n_runs must be an int >= 1"),
    (dict(n_betas=1), "n_betas must be an int >= 2"),
    (dict(n_betas=0), "n_betas must be an int >= 2"),
    (dict(betas=torch.tensor([0.0])), "at least 2"),
    (dict(betas=torch.tensor([0.1, 1.0])), "from exactly 0 to exactly 1"),
    (dict(betas=torch.tensor([0.0, 0.6, 0.4, 1.0])), "increase strictly"),
    (dict(betas=torch.tensor([0.0, 1.0]), n_betas=10), "not both"),
    (dict(base_visible_bias=torch.zeros(4), data=torch.zeros(2, 4)), "not both"),
    (dict(base_visible_bias=torch.zeros(3)), r"shape \(4,\)"),
    (dict(data=torch.full((2, 4), 0.5)), "binary"),
])
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ais_log_partition(BernoulliRBM(4, 2), progress=False, **kwargs)


def test_log_likelihood_bad_input():
    rbm = BernoulliRBM(4, 2)
    with pytest.raises(ValueError, match="binary"):
        log_likelihood(rbm, torch.full((1, 4), 0.5), 1.0)
    with pytest.raises(ValueError, match="finite"):
        log_likelihood(rbm, torch.zeros(1, 4), float("nan"))


def test_ais_checkpoint_caches_the_run_and_notices_a_changed_model(tmp_path, capsys):
    rbm = random_rbm(20, 6, seed=3, scale=0.5)
    path = tmp_path / "ais.pt"

    def run(model, seed=5):
        return ais_log_partition(model, n_runs=20, n_betas=200, generator=torch.Generator().manual_seed(seed),
                                 progress=False, checkpoint=path)

    first = run(rbm)
    assert path.exists()
    gen = torch.Generator().manual_seed(5)
    again = ais_log_partition(rbm, n_runs=20, n_betas=200, generator=gen, progress=False, checkpoint=path)
    assert "Loaded the AIS result" in capsys.readouterr().out
    assert torch.equal(again.log_weights, first.log_weights) and again.log_z == first.log_z
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())  # untouched when loaded
    fresh = ais_log_partition(rbm, n_runs=20, n_betas=200, generator=torch.Generator().manual_seed(5),
                              progress=False)
    assert torch.equal(fresh.log_weights, first.log_weights)  # the cache stores what a fresh run computes
    changed = random_rbm(20, 6, seed=3, scale=0.5)
    changed.W = changed.W + 0.01
    other = run(changed)
    assert "differs in: rbm" in capsys.readouterr().out
    assert not torch.equal(other.log_weights, first.log_weights)
    run(rbm, seed=6)
    assert "differs in: generator" in capsys.readouterr().out
