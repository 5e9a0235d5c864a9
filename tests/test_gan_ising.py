"""helpers.ising's pieces for generative models of lattices, against independent computations.

* ordered_state_fractions against counts written out by hand and against a binomial experiment
  (its standard error calibrated over repeated samples); clear errors for bad input;
* SpinGenerator: straight-through outputs exactly +-1 and equal to the sign of tanh, gradients
  equal to those of the tanh (autograd of the plain tanh network, and the closed form 1 - tanh^2);
  the "tanh" variant returns tanh itself; clear errors for bad input.
"""
import math

import pytest
import torch

from helpers.ising import ordered_state_fractions
from helpers.nets import SpinGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lattices_with_totals(totals, L=2):
    """2 x 2 lattices whose spins sum to the given totals (each in -4, -2, 0, 2, 4)."""
    out = []
    for t in totals:
        n_up = (t + L * L) // 2
        out.append(torch.tensor([1] * n_up + [-1] * (L * L - n_up), dtype=torch.int8).view(L, L))
    return torch.stack(out)


def test_fractions_by_hand():
    spins = lattices_with_totals([4, 2, 2, 0, -2, -4, -4, -4])
    out = ordered_state_fractions(spins)
    assert out["n"] == 8
    for name, f in (("positive", 3 / 8), ("negative", 4 / 8), ("zero", 1 / 8)):
        assert out[name][0] == pytest.approx(f, abs=1e-15)
        assert out[name][1] == pytest.approx(math.sqrt(f * (1 - f) / 8), abs=1e-15)


def test_collapsed_sample_has_zero_error():
    out = ordered_state_fractions(torch.ones(5, 4, 4))
    assert out["positive"] == (1.0, 0.0) and out["negative"] == (0.0, 0.0)


def test_standard_error_is_calibrated():
    # 400 repetitions of 200 lattices, each of sign + with probability 0.3: the fraction's spread over
    # repetitions must match the returned error (the spread of a standard deviation estimate from 400
    # draws is about 1/sqrt(800) = 3.5 %, so 15 % is a 4-sigma margin)
    g = torch.Generator().manual_seed(0)
    fracs, errors = [], []
    for _ in range(400):
        signs = torch.where(torch.rand(200, generator=g) < 0.3, 1, -1).to(torch.int8)
        out = ordered_state_fractions(signs.view(-1, 1, 1) * torch.ones(200, 4, 4, dtype=torch.int8))
        fracs.append(out["positive"][0])
        errors.append(out["positive"][1])
    fracs = torch.tensor(fracs, dtype=torch.float64)
    assert abs(fracs.mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 200 / 400)
    assert fracs.std().item() == pytest.approx(sum(errors) / len(errors), rel=0.15)


def test_fractions_refuse_bad_input():
    with pytest.raises(ValueError, match="shape"):
        ordered_state_fractions(torch.ones(5, 16))
    with pytest.raises(ValueError, match="must be \\+1 or -1"):
        ordered_state_fractions(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ordered_state_fractions([[1, 1], [1, 1]])


def make_generator(binarize, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 16))
    return SpinGenerator(net, latent_dim=3, L=4, binarize=binarize)


def test_straight_through_values_are_spins_and_gradients_are_tanh():
    gen = make_generator("straight_through")
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    out = gen(z)
    a = gen.net(z)
    assert out.shape == (50, 16)
    assert torch.equal(out.abs(), torch.ones_like(out))                       # exactly +-1, no rounding
    assert torch.equal(out, torch.where(torch.tanh(a) >= 0, 1.0, -1.0))      # the sign of tanh
    # gradient of a weighted sum of outputs: the straight-through one equals that of the plain tanh network
    w = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))
    grads_st = torch.autograd.grad((w * out).sum(), list(gen.net.parameters()))
    grads_tanh = torch.autograd.grad((w * torch.tanh(gen.net(z))).sum(), list(gen.net.parameters()))
    for g1, g2 in zip(grads_st, grads_tanh):
        assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-7)
    # ... and with respect to the pre-activations it is the closed form 1 - tanh(a)^2
    a = a.detach().requires_grad_(True)
    t = torch.tanh(a)
    y = torch.where(t >= 0, 1.0, -1.0) + (t - t.detach())
    (g_a,) = torch.autograd.grad((w * y).sum(), a)
    assert torch.allclose(g_a, w * (1 - torch.tanh(a.detach()) ** 2), rtol=1e-6, atol=1e-7)


def test_tanh_variant_returns_tanh():
    gen = make_generator("tanh")
    z = torch.randn(20, 3, generator=torch.Generator().manual_seed(3))
    out = gen(z)
    assert torch.allclose(out, torch.tanh(gen.net(z)))
    assert (out.abs() < 1).all() and not torch.equal(out.abs(), torch.ones_like(out))


def test_generator_refuses_bad_input():
    gen = make_generator("straight_through")
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        gen(torch.randn(4, 5))
    with pytest.raises(ValueError, match="binarize"):
        SpinGenerator(torch.nn.Linear(3, 16), 3, 4, binarize="round")
    with pytest.raises(ValueError, match="one pre-activation per site"):
        SpinGenerator(torch.nn.Linear(3, 9), 3, 4)(torch.randn(2, 3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        SpinGenerator(lambda z: z, 3, 4)
    with pytest.raises(ValueError, match="L must be"):
        SpinGenerator(torch.nn.Linear(3, 1), 3, 1)
