"""helpers.ebm.contrastive_loss against the RBM's positive and negative phases computed by hand.

For a Bernoulli RBM the energy of x is the free energy
F(x) = -a.x - sum_j softplus(b_j + (x W)_j), whose derivatives are
-dF/dW = x p(h | x)^T, -dF/da = x, -dF/db = p(h | x). So the gradient of
mean F(x) - mean F(x_neg) must be minus (positive phase - negative phase) with
each phase the batch average of those statistics, with p(h | x) from
rbm.prob_h_given_x.
"""
import math

import pytest
import torch

from helpers.ebm import contrastive_loss
from helpers.rbm import BernoulliRBM, cd_loss

F64 = torch.float64


def G(seed):
    return torch.Generator().manual_seed(seed)


def random_rbm(seed=0):
    gen = G(seed)
    rbm = BernoulliRBM(6, 4, dtype=F64)
    rbm.W = torch.randn(6, 4, generator=gen, dtype=F64)
    rbm.a = torch.randn(6, generator=gen, dtype=F64)
    rbm.b = torch.randn(4, generator=gen, dtype=F64)
    return rbm


def phase(rbm, x):
    """Batch averages of x p(h|x)^T, x and p(h|x): the derivatives of -F averaged over the rows of x."""
    with torch.no_grad():
        ph = rbm.prob_h_given_x(x)
    return {"W": torch.einsum("ni,nj->ij", x, ph) / len(x), "a": x.mean(0), "b": ph.mean(0)}


def binary(n, seed, p=0.5):
    return (torch.rand(n, 6, generator=G(seed), dtype=F64) < p).to(F64)


def test_gradient_is_minus_positive_minus_negative_phase():
    rbm = random_rbm()
    params = {k: v.requires_grad_() for k, v in rbm.parameters().items()}
    x, x_neg = binary(9, 1), binary(13, 2, p=0.3)  # batch sizes may differ
    x_neg.requires_grad_()  # a leaf that would receive a gradient if it were not detached
    loss = contrastive_loss(rbm.free_energy, x, x_neg)
    loss.backward()
    pos, neg = phase(rbm, x), phase(rbm, x_neg.detach())
    for name, p in params.items():
        assert torch.allclose(p.grad, -(pos[name] - neg[name]), atol=1e-12, rtol=0), name
        assert p.grad.abs().max() > 0.05  # a real gradient, not a vanishing one
    assert x_neg.grad is None  # no gradient flows into the negatives
    # the value: the difference of the mean free energies (independent formula), and rbm.cd_loss agrees
    with torch.no_grad():
        def free_energy(v):
            return -(v @ rbm.a) - torch.log1p(torch.exp(v @ rbm.W + rbm.b)).sum(1)
        expected = free_energy(x).mean() - free_energy(x_neg).mean()
        assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
        assert loss.item() == pytest.approx(cd_loss(rbm, x, x_neg).item(), abs=1e-12)


def test_negatives_that_depend_on_the_parameters_are_treated_as_fixed():
    """Mean-field negatives sigmoid(a + W h) depend on W and a: the loss must not differentiate
    through them. Without the detach the gradient is different (so this check can fail)."""
    rbm = random_rbm(3)
    W, a, b = (t.requires_grad_() for t in (rbm.W, rbm.a, rbm.b))

    def energy(v):  # the free energy for inputs in [0, 1] (rbm.free_energy insists on binary x)
        return -(v @ a) - torch.nn.functional.softplus(v @ W + b).sum(1)

    h = (torch.rand(11, 4, generator=G(4), dtype=F64) < 0.5).to(F64)
    x, x_neg = binary(8, 5), torch.sigmoid(a + h @ W.T)  # x_neg carries a graph back to W and a
    grads = torch.autograd.grad(contrastive_loss(energy, x, x_neg), (W, a, b))
    with torch.no_grad():
        xn = x_neg.detach()
        ph_pos, ph_neg = torch.sigmoid(x @ W + b), torch.sigmoid(xn @ W + b)
        expected = (-(x.T @ ph_pos / len(x) - xn.T @ ph_neg / len(xn)),
                    -(x.mean(0) - xn.mean(0)), -(ph_pos.mean(0) - ph_neg.mean(0)))
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-12, rtol=0)
    leaky = torch.autograd.grad(energy(x).mean() - energy(x_neg).mean(), (W, a))
    assert (leaky[0] - grads[0]).abs().max() > 1e-3 and (leaky[1] - grads[1]).abs().max() > 1e-3


def test_bad_input_messages():
    rbm = random_rbm()
    x = binary(4, 0)
    with pytest.raises(TypeError, match="energy_fn must be a callable"):
        contrastive_loss("free_energy", x, x)
    with pytest.raises(ValueError, match=r"one energy per row of x, shape \(4,\), but returned \(4, 6\)"):
        contrastive_loss(lambda v: -v, x, x)
    with pytest.raises(ValueError, match=r"one energy per row of x_neg, shape \(3,\), but returned \(\)"):
        contrastive_loss(lambda v: rbm.free_energy(v) if len(v) == 4 else rbm.free_energy(v).sum(), x, x[:3])
    with pytest.raises(ValueError, match=r"same shape after the batch dimension, got \(4, 6\) and \(4, 5\)"):
        contrastive_loss(rbm.free_energy, x, x[:, :5])
    with pytest.raises(ValueError, match=r"x_neg must be a tensor of shape \(batch, \.\.\.\)"):
        contrastive_loss(rbm.free_energy, x, [[0.0] * 6])
    with pytest.raises(ValueError, match="NaN or infinite energies for x_neg"):
        contrastive_loss(lambda v: torch.full((len(v),), math.inf) if len(v) == 2 else v.sum(1), x, x[:2])
    with pytest.raises(TypeError, match="floating-point energies"):
        contrastive_loss(lambda v: v.long().sum(1), x, x)
