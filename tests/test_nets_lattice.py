"""helpers.nets' lattice networks: the linear-Gaussian VAE's encoder and decoder, and the MLPs on lattices.

* LinearEncoder / LinearDecoder against the formulas written out, input checks, constructor checks;
* set to the probabilistic-PCA optimum (helpers.ppca) the linear VAE's encoder is the exact posterior,
  so every importance weight (helpers.vae.log_importance_weights) equals the PPCA log-likelihood, whatever
  the noise draw, and so do the IWAE estimate and the closed-form ELBO (the bound is tight);
* the closed-form ELBO of a linear-Gaussian VAE (written here) against helpers.vae.elbo averaged over
  noise, within 4 standard errors;
* MLPEncoder with input_dim = L * L takes (batch, L, L) lattices.
"""
import math

import pytest
import torch

from helpers.nets import LinearDecoder, LinearEncoder, MLPDecoder, MLPEncoder
from helpers.ppca import fit_ppca, ppca_log_likelihood
from helpers.vae import VAE, GaussianLikelihood, elbo, iwae_log_likelihood, log_importance_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")
D64 = torch.float64


def test_linear_encoder_is_the_formula():
    torch.manual_seed(0)
    enc = LinearEncoder(16, 3).double()
    x = torch.randn(5, 4, 4, dtype=D64)                     # lattices are flattened row by row
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (5, 3) and enc.latent_dim == 3
    assert torch.allclose(mu, x.reshape(5, 16) @ enc.linear.weight.T + enc.linear.bias)
    assert torch.equal(logvar, enc.logvar.expand(5, 3))        # the same variance for every input
    assert torch.equal(enc.logvar.detach(), torch.zeros(3, dtype=D64))   # starts at the prior's
    # the variance is a trained parameter: gradients reach it
    (mu.sum() + logvar.exp().sum()).backward()
    assert enc.logvar.grad is not None and torch.equal(enc.logvar.grad, torch.full((3,), 5.0, dtype=D64))


def test_linear_decoder_is_the_formula():
    torch.manual_seed(1)
    dec = LinearDecoder(2, 9).double()
    z = torch.randn(4, 2, dtype=D64)
    assert dec.weight.shape == (9, 2) and dec.bias.shape == (9,)
    assert torch.allclose(dec(z), z @ dec.weight.T + dec.bias)
    assert dec.latent_dim == 2 and dec.output_dim == 9


def test_construction_is_seeded_and_checked():
    torch.manual_seed(3)
    a = LinearEncoder(8, 2)
    torch.manual_seed(3)
    b = LinearEncoder(8, 2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="latent_dim must be an int >= 1"):
        LinearEncoder(8, 0)
    with pytest.raises(ValueError, match="input_dim must be an int >= 1"):
        LinearEncoder(2.5, 1)
    with pytest.raises(ValueError, match="output_dim must be an int >= 1"):
        LinearDecoder(1, 0)


def test_linear_encoder_checks_its_input():
    enc = LinearEncoder(16, 1)
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        enc(torch.zeros(3, 15))
    with pytest.raises(ValueError, match="x\\[None\\]"):
        enc(torch.zeros(16))
    with pytest.raises(ValueError, match="floating-point"):
        enc(torch.ones(2, 16, dtype=torch.int8))
    with pytest.raises(ValueError, match="NaN"):
        enc(torch.full((2, 16), math.nan))
    with pytest.raises(TypeError, match="torch.Tensor"):
        enc([[0.0] * 16])


def _optimal_linear_vae(fit):
    """The linear VAE at the PPCA optimum: decoder W_ML, mean, sigma; encoder the exact posterior."""
    D, q = fit.W.shape
    model = VAE(LinearEncoder(D, q), LinearDecoder(q, D), GaussianLikelihood(sigma=math.sqrt(fit.sigma2))).double()
    M = fit.W.T @ fit.W + fit.sigma2 * torch.eye(q, dtype=D64)        # diagonal: W_ML has orthogonal columns
    A = torch.linalg.solve(M, fit.W.T)                                  # posterior mean M^-1 W^T (x - mean)
    with torch.no_grad():
        model.decoder.linear.weight.copy_(fit.W)
        model.decoder.linear.bias.copy_(fit.mean)
        model.encoder.linear.weight.copy_(A)
        model.encoder.linear.bias.copy_(-A @ fit.mean)
        model.encoder.logvar.copy_(torch.log(fit.sigma2 / torch.diagonal(M)))   # posterior variances sigma^2 / M_jj
        model.likelihood.log_sigma.fill_(0.5 * math.log(fit.sigma2))   # in float64 (built from a float32 value)
    return model


def test_at_the_ppca_optimum_the_encoder_is_the_exact_posterior():
    # q(z | x) is then p(z | x), so every importance weight log p(x, z) - log q(z | x) equals log p(x),
    # whatever z is drawn; the closed-form ELBO equals log p(x) (the bound is tight)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 2, generator=g, dtype=D64) * torch.tensor([3.0, 1.5], dtype=D64)
    x = torch.randn(300, 2, generator=g, dtype=D64) @ W.T + 0.4 * torch.randn(300, 6, generator=g, dtype=D64)
    fit = fit_ppca(x, 2)
    model = _optimal_linear_vae(fit)
    ll = ppca_log_likelihood(fit, x)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(5, *mu.shape, generator=g, dtype=D64)
        log_w = log_importance_weights(model, x, z)
        assert torch.allclose(log_w, ll.expand(5, -1), rtol=0, atol=1e-9), (log_w - ll).abs().max()
        assert torch.allclose(iwae_log_likelihood(model, x, k=3, generator=g), ll, rtol=0, atol=1e-9)
        assert torch.allclose(closed_form_elbo(model, x), ll, rtol=0, atol=1e-9)


def closed_form_elbo(model, x):
    """E_q[log p(x | z)] - KL for a linear-Gaussian VAE, per row (derived independently of helpers.vae):
    E_q |x - W z - b|^2 = |x - W m - b|^2 + sum_j v_j |w_j|^2 for q = N(m, diag v)."""
    A, c, v = model.encoder.linear.weight, model.encoder.linear.bias, model.encoder.logvar.exp()
    W, b, s2 = model.decoder.weight, model.decoder.bias, (2 * model.likelihood.log_sigma).exp()
    m = x @ A.T + c
    D = x.shape[1]
    squared = (x - m @ W.T - b).square().sum(1) + (W.square().sum(0) * v).sum()
    rec = -0.5 * D * torch.log(2 * math.pi * s2) - squared / (2 * s2)
    return rec - 0.5 * (m.square() + v - 1 - v.log()).sum(1)


def test_closed_form_elbo_of_an_arbitrary_linear_vae():
    torch.manual_seed(2)
    model = VAE(LinearEncoder(5, 2), LinearDecoder(2, 5), GaussianLikelihood(sigma=0.8, learn_sigma=True)).double()
    with torch.no_grad():
        model.encoder.logvar.copy_(torch.tensor([-1.0, 0.5]))
    x = torch.randn(40, 5, dtype=D64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        draws = torch.stack([elbo(model, x, torch.Generator().manual_seed(s), reduction="none").elbo
                             for s in range(400)])
        exact = closed_form_elbo(model, x)
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() < 4 * se + 1e-12).all()


def test_mlp_networks_take_lattices():
    torch.manual_seed(4)
    model = VAE(MLPEncoder(64, 16, 1), MLPDecoder(1, 16, 64))
    bits = (torch.rand(10, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    a = elbo(model, bits, torch.Generator().manual_seed(1), reduction="none").elbo
    b = elbo(model, bits.reshape(10, 64), torch.Generator().manual_seed(1), reduction="none").elbo
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="binary data"):
        elbo(model, 2 * bits - 1)            # +-1 spins are not Bernoulli data: map them to bits first
