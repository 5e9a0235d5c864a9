"""The evaluation additions of helpers.vae: the IWAE training objective (k = 1 is the ELBO; exact for
an exact posterior) and log p(x) by quadrature over a 2-D latent space (against the closed form of a
linear-Gaussian model, and normalised over every binary image of a small Bernoulli model)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal

from helpers.rbm import binary_states
from helpers.vae import (
    VAE,
    GaussianLikelihood,
    VAESettings,
    elbo,
    iwae_log_likelihood,
    iwae_log_weights,
    mlp_vae,
    quadrature_log_marginal,
    sample_log_weights,
    train_vae,
    training_step,
)

D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


class ExactPosteriorEncoder(nn.Module):
    """q(z | x) = p(z | x) of the linear-Gaussian model x = W z + b + sigma * noise, z ~ N(0, I), for W with
    orthogonal columns (so that the posterior covariance (I + W^T W / sigma^2)^-1 is diagonal)."""

    def __init__(self, W, b, sigma):
        super().__init__()
        self.latent_dim = W.shape[1]
        self.W, self.b, self.sigma = W, b, sigma
        self.var = 1.0 / (1.0 + (W * W).sum(0) / sigma**2)            # diagonal of the posterior covariance

    def forward(self, x):
        mu = (x - self.b) @ self.W * self.var / self.sigma**2
        return mu, torch.log(self.var).expand_as(mu)


def linear_gaussian(d=5, sigma=0.7, seed=0, exact_encoder=True):
    """A VAE whose log p(x) is closed form: p(x) = N(b, W W^T + sigma^2 I)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen, dtype=D64))
    W = q * torch.tensor([1.5, 0.6], dtype=D64)                        # orthogonal columns, lengths 1.5 and 0.6
    b = torch.randn(d, generator=gen, dtype=D64)
    decoder = nn.Linear(2, d).to(D64)
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    if exact_encoder:
        encoder = ExactPosteriorEncoder(W, b, sigma)
    else:
        encoder = ExactPosteriorEncoder(W * 0.5, b, sigma)             # a wrong (too wide, shifted) posterior
    model = VAE(encoder, decoder, GaussianLikelihood(sigma)).to(D64)
    marginal = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(d, dtype=D64))
    return model, marginal


def test_iwae_objective_is_exact_with_the_exact_posterior():
    # with q(z | x) = p(z | x) every weight equals p(x): L_k = ELBO = log p(x) for every k and every sample
    model, marginal = linear_gaussian()
    x = marginal.sample(torch.Size([50]))
    for k in (1, 5):
        log_w = sample_log_weights(model, x, k, torch.Generator().manual_seed(k))
        assert log_w.shape == (k, 50)
        assert torch.allclose(log_w, marginal.log_prob(x).expand(k, -1), atol=1e-10)


def test_iwae_objective_with_k_1_is_the_elbo():
    torch.manual_seed(0)
    model = mlp_vae(latent_dim=3, hidden=16, seed=1)
    x = (torch.rand(64, 784, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    # exactly: the k = 1 estimate is log p(x|z) + log p(z) - log q(z|x) at z = mu + sigma * eps (same eps)
    log_w = sample_log_weights(model, x, 1, torch.Generator().manual_seed(3))[0]
    mu, logvar = model.encoder(x)
    eps = torch.randn((1, *mu.shape), generator=torch.Generator().manual_seed(3))[0]
    z = mu + torch.exp(0.5 * logvar) * eps
    q = Normal(mu, torch.exp(0.5 * logvar))
    ref = (Bernoulli(logits=model.decoder(z)).log_prob(x).sum(1) + Normal(0.0, 1.0).log_prob(z).sum(1)
           - q.log_prob(z).sum(1))
    assert torch.allclose(log_w, ref, rtol=1e-5, atol=1e-3)
    # in expectation: E[log p(z) - log q(z|x)] = -KL(q || p) in closed form, so E[L_1] is the ELBO of elbo()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(4)
        draws = torch.stack([sample_log_weights(model, x, 1, gen)[0] for _ in range(400)])     # (400, 64)
        ref_elbo = torch.stack([elbo(model, x, gen, reduction="none").elbo for _ in range(400)])
    diff = draws.mean(0) - ref_elbo.mean(0)
    se = torch.sqrt(draws.var(0) / 400 + ref_elbo.var(0) / 400)
    assert (diff.abs() < 4.5 * se).all(), (diff / se).abs().max()
    assert (draws.var(0) > ref_elbo.var(0)).float().mean() > 0.5      # the Monte Carlo KL adds noise


def test_iwae_bound_rises_towards_the_closed_form_with_a_wrong_posterior():
    model, marginal = linear_gaussian(exact_encoder=False)
    x = marginal.sample(torch.Size([40]))
    exact = marginal.log_prob(x)
    with torch.no_grad():
        est = {k: torch.stack([iwae_log_likelihood(model, x, k, generator=torch.Generator().manual_seed(r))
                               for r in range(20)]) for k in (1, 10, 1000)}
    means = {k: v.mean(0) for k, v in est.items()}

    def rises(lo, hi):  # L_lo <= L_hi, image by image, within 4 standard errors of the 20 repeats
        se = torch.sqrt((est[lo].var(0) + est[hi].var(0)) / 20)
        return (means[hi] - means[lo] >= -4 * se - 1e-12).all()

    assert rises(1, 10) and rises(10, 1000)
    se = est[1000].std(0) / math.sqrt(20)
    assert (means[1000] <= exact + 4 * se + 1e-9).all()
    assert (exact - means[1000]).mean() < 0.05 * (exact - means[1]).mean()


def test_training_step_and_train_vae_with_the_iwae_objective():
    x = (torch.rand(256, 784, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    model = mlp_vae(latent_dim=4, hidden=32, seed=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = training_step(model, opt, x[:64], torch.Generator().manual_seed(7), objective="iwae", k=5)
    assert set(out) == {"train_iwae", "train_elbo"} and out["train_iwae"] >= out["train_elbo"]   # Jensen
    hist = train_vae(mlp_vae(latent_dim=4, hidden=32, seed=6), x[:200], x[200:], n_epochs=2, batch_size=50,
                     objective="iwae", k=5, seed=8, progress=False)
    assert len(hist["train_iwae"]) == 2 and all(i >= e for i, e in zip(hist["train_iwae"], hist["train_elbo"]))
    assert hist.settings["objective"] == "iwae" and hist.settings["k"] == 5 and "test_elbo" in hist
    # the default objective is the ELBO, with the same keys as before
    default = train_vae(mlp_vae(latent_dim=4, hidden=32, seed=6), x[:200], n_epochs=1, batch_size=50, seed=8,
                        progress=False)
    same = train_vae(mlp_vae(latent_dim=4, hidden=32, seed=6), x[:200], n_epochs=1, batch_size=50, seed=8,
                     objective="elbo", k=1, progress=False)
    assert {"train_elbo", "reconstruction", "kl"} <= set(default) and "train_iwae" not in default
    assert default["train_elbo"] == same["train_elbo"]
    with pytest.raises(ValueError, match="kl_weight"):
        training_step(model, opt, x[:8], objective="iwae", k=2, kl_weight=0.5)
    with pytest.raises(ValueError, match="objective"):
        training_step(model, opt, x[:8], objective="wake-sleep")


def test_iwae_settings_are_validated():
    assert VAESettings(n_epochs=1).objective == "elbo" and VAESettings(n_epochs=1).k == 1
    with pytest.raises(ValueError, match="objective"):
        VAESettings(n_epochs=1, objective="iwea")
    with pytest.raises(ValueError, match="k must be"):
        VAESettings(n_epochs=1, objective="iwae", k=0)
    with pytest.raises(ValueError, match="need objective='iwae'"):
        VAESettings(n_epochs=1, k=5)
    with pytest.raises(ValueError, match="beta=1"):
        VAESettings(n_epochs=1, objective="iwae", k=5, beta=2.0)
    with pytest.raises(ValueError, match="kl_warmup"):
        VAESettings(n_epochs=1, objective="iwae", k=5, kl_warmup=100)


def test_quadrature_matches_the_linear_gaussian_closed_form():
    model, marginal = linear_gaussian(d=6, sigma=0.5, seed=3)
    x = marginal.sample(torch.Size([30]))
    exact = marginal.log_prob(x)
    # the posterior std is about 0.3 (along the long axis): h = 0.05 resolves it, the box holds the prior
    quad = quadrature_log_marginal(model, x, half_width=7.0, spacing=0.05, dtype=torch.float64)
    assert quad.shape == (30,) and quad.dtype == D64
    assert torch.allclose(quad, exact, atol=1e-8), (quad - exact).abs().max()
    # too coarse a grid (h = 1.4, several posterior widths) is visibly wrong: the test can fail
    coarse = quadrature_log_marginal(model, x, half_width=7.0, spacing=1.4, refine=1)
    assert (coarse - exact).abs().max() > 0.05


def test_quadrature_of_a_nonlinear_decoder_against_scipy_and_normalised():
    integrate = pytest.importorskip("scipy.integrate")
    torch.manual_seed(0)
    enc = nn.Sequential()                      # unused by the quadrature; a VAE needs an encoder
    enc.latent_dim = 2
    decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 8)).to(D64)
    with torch.no_grad():
        decoder[2].weight.mul_(4.0)            # sharp p(x | z): a posterior narrower than the prior
    model = VAE(enc, decoder, "bernoulli")
    x = binary_states(8)                       # all 256 images
    # the uniform midpoint rule (refine=1) on [-8, 8]^2, prior mass outside 2.5e-15
    log_p = quadrature_log_marginal(model, x, half_width=8.0, spacing=0.08, refine=1, dtype=torch.float64)
    # sum_x p(x | z) = 1 at every grid point: the bookkeeping (log prior, cell area, Bernoulli table) is right
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)
    # the adaptive rule: where refined and coarse cells meet, the midpoint errors (h^2/24) f'' no longer
    # cancel; at h = 0.08 that is h^2/24 = 2.7e-4 times the relative curvature (of order 1 here)
    adaptive = quadrature_log_marginal(model, x, half_width=8.0, spacing=0.08, refine=4, dtype=torch.float64)
    assert (adaptive - log_p).abs().max() < 1e-3 and torch.logsumexp(adaptive, 0).abs() < 1e-3
    W1, b1, W2, b2 = (t.detach().numpy() for t in (decoder[0].weight, decoder[0].bias,
                                                  decoder[2].weight, decoder[2].bias))
    for i in (0, 77, 200):                     # the integral itself, by adaptive quadrature (scipy, numpy)
        xi = x[i].numpy()

        def integrand(z2, z1, xi=xi):
            logits = W2 @ np.tanh(W1 @ np.array([z1, z2]) + b1) + b2
            log_px_z = float(xi @ logits - np.logaddexp(0.0, logits).sum())
            return math.exp(log_px_z - 0.5 * (z1 * z1 + z2 * z2)) / (2 * math.pi)

        value, _ = integrate.dblquad(integrand, -8, 8, -8, 8, epsabs=1e-13, epsrel=1e-10)
        assert log_p[i].item() == pytest.approx(math.log(value), abs=1e-7), (i, log_p[i].item(), math.log(value))


def test_quadrature_refuses_other_latent_dimensions():
    with pytest.raises(ValueError, match="iwae_log_likelihood"):
        quadrature_log_marginal(mlp_vae(latent_dim=3, hidden=8), torch.zeros(2, 784))
    with pytest.raises(ValueError, match="binary"):
        quadrature_log_marginal(mlp_vae(latent_dim=2, hidden=8), torch.full((2, 784), 0.5))
    with pytest.raises(ValueError, match="spacing"):
        quadrature_log_marginal(mlp_vae(latent_dim=2, hidden=8), torch.zeros(2, 784), spacing=0.0)


def test_iwae_log_weights_are_the_draws_of_iwae_log_likelihood(tmp_path):
    model = mlp_vae(latent_dim=3, hidden=16, seed=2)
    x = (torch.rand(70, 784, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    log_w = iwae_log_weights(model, x, 50, batch_k=7, generator=torch.Generator().manual_seed(4), batch_size=16)
    est = iwae_log_likelihood(model, x, 50, batch_k=32, generator=torch.Generator().manual_seed(4))
    assert log_w.shape == (50, 70)
    assert torch.allclose(torch.logsumexp(log_w, 0) - math.log(50), est, atol=1e-4)
    cached = iwae_log_weights(model, x, 50, generator=torch.Generator().manual_seed(4), checkpoint=tmp_path / "w.pt")
    again = iwae_log_weights(model, x, 50, generator=torch.Generator().manual_seed(4), checkpoint=tmp_path / "w.pt")
    assert torch.equal(cached, again) and torch.allclose(cached, log_w, atol=1e-4)


def test_quadrature_cache(tmp_path):
    model, marginal = linear_gaussian(d=4, sigma=0.5, seed=5)
    x = marginal.sample(torch.Size([6]))
    a = quadrature_log_marginal(model, x, half_width=6.0, spacing=0.1, checkpoint=tmp_path / "q.pt")
    b = quadrature_log_marginal(model, x, half_width=6.0, spacing=0.1, checkpoint=tmp_path / "q.pt")
    c = quadrature_log_marginal(model, x, half_width=6.0, spacing=0.099, checkpoint=tmp_path / "q.pt")  # another grid
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6) and (tmp_path / "q.pt").exists()
