"""BernoulliRBM's exact functions against a brute-force computation written here:
the joint table p(x, h) over every pair of configurations, built with itertools."""
import itertools
import math

import pytest
import torch
from rbm_models import random_rbm

from helpers.rbm import MAX_EXACT_UNITS, BernoulliRBM

D = torch.float64




def brute_force(rbm):
    """All configurations and the joint probability table, from the energy definition."""
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=rbm.n_visible)), dtype=D)
    hs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=rbm.n_hidden)), dtype=D)
    W, a, b = rbm.W.detach(), rbm.a.detach(), rbm.b.detach()
    neg_energy = torch.empty(len(xs), len(hs), dtype=D)
    for i, x in enumerate(xs):
        for j, h in enumerate(hs):
            neg_energy[i, j] = float(a @ x + b @ h + x @ W @ h)
    log_z = math.log(sum(math.exp(v) for v in neg_energy.flatten().tolist()))
    return xs, hs, neg_energy, log_z


SHAPES = [(6, 4), (3, 7), (5, 5), (1, 2)]


@pytest.mark.parametrize("m, n", SHAPES)
def test_log_partition_matches_brute_force(m, n):
    rbm = random_rbm(m, n, seed=m * 10 + n)
    *_, log_z = brute_force(rbm)
    assert rbm.log_partition_exact().item() == pytest.approx(log_z, abs=1e-10)
    # chunking must not change the result
    assert rbm.log_partition_exact(chunk=3).item() == pytest.approx(log_z, abs=1e-10)


@pytest.mark.parametrize("m, n", SHAPES)
def test_free_energy_log_likelihood_and_energy(m, n):
    rbm = random_rbm(m, n, seed=1)
    xs, hs, neg_energy, log_z = brute_force(rbm)
    free = -torch.logsumexp(neg_energy, dim=1)
    assert torch.allclose(rbm.free_energy(xs), free, atol=1e-10)
    ll = rbm.log_likelihood_exact(xs)
    assert ll.shape == (len(xs),)
    assert torch.allclose(ll, free.neg() - log_z, atol=1e-10)
    assert torch.logsumexp(ll, 0).item() == pytest.approx(0.0, abs=1e-10)  # p(x) sums to one
    i, j = len(xs) - 1, len(hs) // 2
    assert rbm.energy(xs[i:i + 1], hs[j:j + 1]).item() == pytest.approx(-neg_energy[i, j].item(), abs=1e-12)


@pytest.mark.parametrize("m, n", [(6, 4), (3, 7)])
def test_large_fields_stay_exact_in_float64(m, n):
    """Fields above 20, where torch's softplus switches to the identity (an error of 2e-9): the
    free energy, log Z and the normalisation must still hold to float64 rounding (week 10's
    exactly trained models reach such fields)."""
    rbm = random_rbm(m, n, seed=1, scale=8.0)
    xs, hs, neg_energy, _ = brute_force(rbm)
    assert (xs @ rbm.W + rbm.b).max() > 20 and (hs @ rbm.W.T + rbm.a).max() > 20  # both layers' fields
    log_z = torch.logsumexp(neg_energy.flatten(), 0).item()
    assert torch.allclose(rbm.free_energy(xs), -torch.logsumexp(neg_energy, dim=1), rtol=0, atol=1e-12)
    assert abs(rbm.log_partition_exact().item() - log_z) < 1e-11
    assert abs(rbm.log_likelihood_exact(xs).exp().sum().item() - 1) < 1e-13


def test_conditionals_match_ratios_of_the_joint():
    rbm = random_rbm(4, 3, seed=2)
    xs, hs, neg_energy, _ = brute_force(rbm)
    p_h_given_x = torch.softmax(neg_energy, dim=1)  # rows: x, columns: h
    marg_h = p_h_given_x @ hs  # p(h_j = 1 | x) for every x
    assert torch.allclose(rbm.prob_h_given_x(xs), marg_h, atol=1e-12)
    p_x_given_h = torch.softmax(neg_energy, dim=0)
    marg_x = p_x_given_h.T @ xs
    assert torch.allclose(rbm.prob_x_given_h(hs), marg_x, atol=1e-12)


@pytest.mark.parametrize("m, n", [(6, 4), (3, 7)])
def test_phases_and_gradient_match_brute_force_and_finite_differences(m, n):
    rbm = random_rbm(m, n, seed=3, scale=0.7)
    xs, hs, neg_energy, log_z = brute_force(rbm)
    gen = torch.Generator().manual_seed(0)
    data = xs[torch.randint(len(xs), (9,), generator=gen)]

    joint = torch.exp(neg_energy - log_z)  # p(x, h)
    neg = {"W": torch.einsum("ij,im,jn->mn", joint, xs, hs), "a": joint.sum(1) @ xs, "b": joint.sum(0) @ hs}
    got_neg = rbm.negative_phase_exact()
    for k in neg:
        assert torch.allclose(got_neg[k], neg[k], atol=1e-12), k

    rows = [xs.tolist().index(r) for r in data.tolist()]
    post = torch.softmax(neg_energy[rows], dim=1)  # p(h | x_n) by brute force
    pos = {"W": torch.einsum("dj,dm,jn->mn", post, data, hs) / len(data), "a": data.mean(0),
           "b": (post @ hs).mean(0)}
    got_pos = rbm.positive_phase(data)
    for k in pos:
        assert torch.allclose(got_pos[k], pos[k], atol=1e-12), k

    grad = rbm.exact_gradient(data)
    eps = 1e-6
    for name in ("W", "a", "b"):
        param = getattr(rbm, name)
        fd = torch.zeros_like(param)
        for idx in itertools.product(*[range(s) for s in param.shape]):
            old = param[idx].item()
            param[idx] = old + eps
            up = rbm.log_likelihood_exact(data).mean().item()
            param[idx] = old - eps
            down = rbm.log_likelihood_exact(data).mean().item()
            param[idx] = old
            fd[idx] = (up - down) / (2 * eps)
        assert torch.allclose(grad[name], pos[name] - neg[name], atol=1e-12)
        assert torch.allclose(grad[name], fd, atol=1e-7), name


def test_wrong_sign_of_a_phase_is_detected_by_finite_differences():
    """The comparison used above can fail: flipping the negative phase breaks it."""
    rbm = random_rbm(5, 3, seed=4)
    data = torch.bernoulli(torch.full((6, 5), 0.5), generator=torch.Generator().manual_seed(1)).to(D)
    pos, neg = rbm.positive_phase(data), rbm.negative_phase_exact()
    for p in rbm.parameters().values():
        p.requires_grad_(True)
    rbm.log_likelihood_exact(data).mean().backward()
    assert torch.allclose(pos["W"] - neg["W"], rbm.W.grad, atol=1e-12)
    assert not torch.allclose(pos["W"] + neg["W"], rbm.W.grad, atol=1e-3)


def test_float32_and_float64_agree():
    r64 = random_rbm(8, 6, seed=5, scale=0.5)
    r32 = BernoulliRBM(8, 6, dtype=torch.float32)
    r32.W, r32.a, r32.b = r64.W.float(), r64.a.float(), r64.b.float()
    lz32 = r32.log_partition_exact()
    assert lz32.dtype == torch.float32
    assert lz32.item() == pytest.approx(r64.log_partition_exact().item(), abs=1e-4)
    for v in r64.exact_gradient(torch.ones(2, 8)).values():
        assert v.dtype == D


def test_seeded_initialisation_is_reproducible():
    assert torch.equal(BernoulliRBM(5, 3, seed=1).W, BernoulliRBM(5, 3, seed=1).W)
    assert not torch.equal(BernoulliRBM(5, 3, seed=1).W, BernoulliRBM(5, 3, seed=2).W)


def test_sampling_draws_independently_per_sample():
    rbm = random_rbm(10, 8, seed=6, scale=0.3)
    x = torch.ones(4000, 10, dtype=D)  # identical rows: a shared threshold would give identical draws
    gen = torch.Generator().manual_seed(0)
    p, h = rbm.sample_h_given_x(x, generator=gen)
    assert h.shape == (4000, 8) and set(h.unique().tolist()) <= {0.0, 1.0}
    assert len({tuple(r) for r in h[:50].tolist()}) > 10
    # frequencies match p(h_j = 1 | x) within 5 standard errors
    stderr = torch.sqrt(p[0] * (1 - p[0]) / 4000)
    assert ((h.mean(0) - p[0]).abs() < 5 * stderr).all()
    p2, h2 = rbm.sample_h_given_x(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(h, h2)
    px, xs = rbm.sample_x_given_h(h[:3], generator=gen)
    assert px.shape == xs.shape == (3, 10)


def test_large_layers_are_refused_with_a_clear_message():
    rbm = BernoulliRBM(MAX_EXACT_UNITS + 1, MAX_EXACT_UNITS + 2)
    for call in (rbm.log_partition_exact, rbm.negative_phase_exact,
                 lambda: rbm.log_likelihood_exact(torch.zeros(1, rbm.n_visible))):
        with pytest.raises(ValueError, match=rf"2\*\*{MAX_EXACT_UNITS + 1}.*limit is {MAX_EXACT_UNITS}"):
            call()
    # a large visible layer is fine when the hidden layer is small: only 2**3 states
    assert torch.isfinite(BernoulliRBM(200, 3, seed=0).log_partition_exact())


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[0.0, 1.0, 0.5]]), "binary"),
    (torch.tensor([[0.0, float("nan"), 1.0]]), "NaN"),
    (torch.zeros(2, 4), r"shape \(batch, 3\)"),
    (torch.zeros(3), r"t\[None\]"),
    ([[0, 1, 0]], "torch.Tensor"),
])
def test_bad_visible_input(bad, match):
    rbm = BernoulliRBM(3, 2)
    with pytest.raises((ValueError, TypeError), match=match):
        rbm.free_energy(bad)


def test_bad_hidden_input_and_parameters():
    rbm = BernoulliRBM(3, 2)
    with pytest.raises(ValueError, match="binary"):
        rbm.prob_x_given_h(torch.tensor([[0.3, 1.0]]))
    with pytest.raises(ValueError, match="same batch size"):
        rbm.energy(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        rbm.W = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="float64"):
        rbm.a = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        BernoulliRBM(0, 3)
    # integer and boolean 0/1 data are accepted (the values are exact)
    assert rbm.free_energy(torch.tensor([[1, 0, 1]])).shape == (1,)
    assert rbm.free_energy(torch.tensor([[True, False, True]])).shape == (1,)


def test_numpy_integers_are_accepted_as_sizes():
    # one integer check everywhere (helpers._validate.check_count): numpy integers are ints
    import numpy as np

    rbm = BernoulliRBM(np.int64(6), np.int32(4), seed=0)
    assert (rbm.n_visible, rbm.n_hidden) == (6, 4) and type(rbm.n_visible) is int
