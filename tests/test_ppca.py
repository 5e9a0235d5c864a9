"""helpers.ppca against independent computations.

* the fit's known properties: sigma^2 is the mean of the discarded eigenvalues (numpy's eigvalsh of
  numpy's covariance), the model covariance keeps the top q eigenvalues of the sample covariance;
* the log-likelihood equals torch.distributions.MultivariateNormal with covariance W W^T + sigma^2 I,
  and at the fit it equals Tipping & Bishop's closed-form maximum;
* a numerical maximisation (L-BFGS from random starts) finds no higher likelihood, and the gradient
  at the fit is zero;
* the posterior equals Gaussian conditioning of the joint (z, x);
* principal angles against plane geometry, basis changes and tiny angles;
* clear errors for bad input.
"""
import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from helpers.ppca import PPCA, fit_ppca, ppca_log_likelihood, ppca_posterior, principal_angles

pytestmark = pytest.mark.usefixtures("one_torch_thread")
D64 = torch.float64


def ppca_data(n=400, D=6, q=2, sigma=0.5, seed=0):
    """Rows drawn from a PPCA model with known W (D, q), mean and noise."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, q, generator=g, dtype=D64) * torch.linspace(3, 1, q, dtype=D64)
    mean = torch.randn(D, generator=g, dtype=D64)
    z = torch.randn(n, q, generator=g, dtype=D64)
    return z @ W.T + mean + sigma * torch.randn(n, D, generator=g, dtype=D64)


@pytest.mark.parametrize("q", [1, 2, 4])
def test_sigma2_is_the_mean_discarded_eigenvalue(q):
    x = ppca_data()
    fit = fit_ppca(x, q)
    lam = np.sort(np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False, bias=True)))[::-1]   # independent: numpy
    assert np.allclose(fit.eigenvalues.numpy(), lam, rtol=1e-10, atol=1e-12)
    assert fit.sigma2 == pytest.approx(lam[q:].mean(), rel=1e-10)
    assert torch.allclose(fit.mean, x.mean(0))
    # the model covariance keeps the top q eigenvalues and replaces the others by sigma^2
    model_eig = np.sort(np.linalg.eigvalsh(fit.covariance.numpy()))[::-1]
    assert np.allclose(model_eig, np.concatenate([lam[:q], np.full(6 - q, lam[q:].mean())]), rtol=1e-9)
    # W's columns are orthogonal, along the top eigenvectors, with squared norms lambda_i - sigma^2
    gram = fit.W.T @ fit.W
    assert torch.allclose(gram, torch.diag(torch.as_tensor(lam[:q].copy()) - fit.sigma2), atol=1e-9)


def test_log_likelihood_equals_torch_distributions():
    x = ppca_data(n=50)
    fit = fit_ppca(x, 2)
    ref = MultivariateNormal(fit.mean, covariance_matrix=fit.covariance).log_prob(x)
    assert torch.allclose(ppca_log_likelihood(fit, x), ref, rtol=0, atol=1e-10)
    # any W and sigma^2, not only the fitted ones
    g = torch.Generator().manual_seed(3)
    other = PPCA(torch.randn(6, generator=g, dtype=D64), torch.randn(6, 3, generator=g, dtype=D64), 0.7)
    ref = MultivariateNormal(other.mean, covariance_matrix=other.covariance).log_prob(x)
    assert torch.allclose(ppca_log_likelihood(other, x), ref, rtol=0, atol=1e-10)
    assert ppca_log_likelihood(fit, x.float()).dtype == D64


@pytest.mark.parametrize("q", [1, 3])
def test_fitted_log_likelihood_is_the_closed_form_maximum(q):
    # Tipping & Bishop (1999), eq. (8) at the maximum: -n/2 [D log 2 pi + sum_{i<=q} log lambda_i
    # + (D - q) log sigma^2 + D]
    x = ppca_data(D=7)
    n, D = x.shape
    fit = fit_ppca(x, q)
    lam = fit.eigenvalues
    closed = -0.5 * (D * math.log(2 * math.pi) + torch.log(lam[:q]).sum().item() + (D - q) * math.log(fit.sigma2) + D)
    assert ppca_log_likelihood(fit, x).mean().item() == pytest.approx(closed, abs=1e-10)


def test_numerical_maximisation_finds_nothing_higher():
    x = ppca_data(n=300, D=5, q=2, seed=4)
    fit = fit_ppca(x, 2)
    best = ppca_log_likelihood(fit, x).mean().item()
    found = []
    for start in range(3):
        g = torch.Generator().manual_seed(100 + start)
        W = torch.randn(5, 2, generator=g, dtype=D64).requires_grad_()
        log_s2 = torch.zeros((), dtype=D64, requires_grad=True)
        mean = torch.zeros(5, dtype=D64, requires_grad=True)
        opt = torch.optim.LBFGS([W, log_s2, mean], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            cov = W @ W.T + log_s2.exp() * torch.eye(5, dtype=D64)
            loss = -MultivariateNormal(mean, covariance_matrix=cov).log_prob(x).mean()
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        found.append(-closure().item())
    assert max(found) <= best + 1e-9, (found, best)        # the closed form is the maximum
    assert max(found) == pytest.approx(best, abs=1e-6)      # and the optimiser reaches it


def test_gradient_vanishes_at_the_fit():
    x = ppca_data(n=200, D=6, q=2, seed=5)
    fit = fit_ppca(x, 2)
    W = fit.W.clone().requires_grad_()
    log_s2 = torch.tensor(math.log(fit.sigma2), dtype=D64, requires_grad=True)
    mean = fit.mean.clone().requires_grad_()
    cov = W @ W.T + log_s2.exp() * torch.eye(6, dtype=D64)
    MultivariateNormal(mean, covariance_matrix=cov).log_prob(x).mean().backward()
    for p in (W, log_s2, mean):
        assert p.grad.abs().max() < 1e-10, p.grad


def test_posterior_is_gaussian_conditioning_of_the_joint():
    # (z, x) is jointly Gaussian with Cov(z) = I, Cov(x, z) = W, Cov(x) = C: z | x has mean
    # W^T C^-1 (x - mu) and covariance I - W^T C^-1 W (the textbook formula, not helpers.ppca's M^-1)
    x = ppca_data(n=20, q=3)
    fit = fit_ppca(x, 3)
    c_inv = torch.linalg.inv(fit.covariance)
    mean, cov = ppca_posterior(fit, x)
    assert torch.allclose(mean, (fit.W.T @ c_inv @ (x - fit.mean).T).T, atol=1e-10)
    assert torch.allclose(cov, torch.eye(3, dtype=D64) - fit.W.T @ c_inv @ fit.W, atol=1e-10)
    assert mean.shape == (20, 3) and cov.shape == (3, 3)


def test_eigenvector_signs_are_fixed():
    x = ppca_data()
    U = fit_ppca(x, 2).eigenvectors
    assert (U[U.abs().argmax(0), torch.arange(6)] > 0).all()
    assert torch.allclose(U.T @ U, torch.eye(6, dtype=D64), atol=1e-12)
    # a uniform direction comes out with all entries positive
    g = torch.Generator().manual_seed(0)
    y = torch.randn(500, 1, generator=g, dtype=D64) * 3 + 0.1 * torch.randn(500, 4, generator=g, dtype=D64)
    assert (fit_ppca(y, 1).eigenvectors[:, 0] > 0).all()


# ---------------------------------------------------------------- principal angles
def test_principal_angles_geometry():
    e = torch.eye(3, dtype=D64)
    assert torch.allclose(principal_angles(e[:, :2], e[:, :2]), torch.zeros(2, dtype=D64), atol=1e-12)
    assert torch.allclose(principal_angles(e[:, :1], e[:, 1:]), torch.tensor([math.pi / 2], dtype=D64))
    # the xy-plane against the plane spanned by x and (0, cos a, sin a): angles 0 and a
    for a in (1e-9, 1e-4, 0.3, 1.2):
        B = torch.tensor([[1.0, 0.0], [0.0, math.cos(a)], [0.0, math.sin(a)]], dtype=D64)
        got = principal_angles(e[:, :2], B)
        assert got[0] == pytest.approx(0.0, abs=1e-12)
        assert got[1].item() == pytest.approx(a, rel=1e-9)
    # two vectors: the angle between them, from a 1-D input
    u, v = torch.tensor([1.0, 2.0, 2.0], dtype=D64), torch.tensor([2.0, 1.0, -1.0], dtype=D64)
    ref = math.acos(abs(u @ v) / (u.norm() * v.norm()))
    assert principal_angles(u, v).item() == pytest.approx(ref, rel=1e-12)


def test_principal_angles_ignore_the_basis():
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(10, 3, generator=g, dtype=D64), torch.randn(10, 2, generator=g, dtype=D64)
    mix_a, mix_b = torch.randn(3, 3, generator=g, dtype=D64), torch.randn(2, 2, generator=g, dtype=D64)
    ref = principal_angles(A, B)
    assert ref.shape == (2,) and (ref[1:] >= ref[:-1]).all()
    assert torch.allclose(principal_angles(A @ mix_a, 5 * B @ mix_b), ref, atol=1e-10)
    assert torch.allclose(principal_angles(B, A), ref, atol=1e-12)
    # a subspace of A: all angles zero
    assert principal_angles(A, A @ torch.randn(3, 2, generator=g, dtype=D64)).abs().max() < 1e-7


def test_principal_angles_reject_bad_input():
    e = torch.eye(4, dtype=D64)
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(e[:, :2], torch.ones(3, 1))
    with pytest.raises(ValueError, match="linearly dependent"):
        principal_angles(torch.stack([e[:, 0], 2 * e[:, 0]], 1), e[:, :2])


# ---------------------------------------------------------------- input checks
def test_fit_ppca_rejects_bad_input():
    x = ppca_data()
    with pytest.raises(ValueError, match="smaller than the data dimension"):
        fit_ppca(x, 6)
    with pytest.raises(ValueError, match="q must be an int >= 1"):
        fit_ppca(x, 0)
    with pytest.raises(ValueError, match=r"shape \(n, D\)"):
        fit_ppca(x[:, 0], 1)
    with pytest.raises(ValueError, match="flatten"):
        fit_ppca(x.reshape(400, 2, 3), 1)
    with pytest.raises(ValueError, match="NaN"):
        fit_ppca(torch.cat([x, torch.full((1, 6), math.nan, dtype=D64)]), 2)
    with pytest.raises(ValueError, match="at least 2"):
        fit_ppca(x[:1], 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fit_ppca(x.numpy(), 2)
    flat = torch.randn(50, 2, dtype=D64) @ torch.randn(2, 5, dtype=D64)           # rank 2
    with pytest.raises(ValueError, match="2-dimensional affine subspace"):
        fit_ppca(flat, 2)
    fit = fit_ppca(x, 2)
    with pytest.raises(ValueError, match="D = 5"):
        ppca_log_likelihood(fit, x[:, :5])
    with pytest.raises(TypeError, match="PPCA"):
        ppca_posterior((fit.mean, fit.W, fit.sigma2), x)
