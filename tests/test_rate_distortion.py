"""helpers.rate_distortion against independent computations.

References: helpers.vae.elbo on the same noise (rate + distortion = -ELBO), torch.distributions
(KL per dimension, Bernoulli and Gaussian log-probabilities), the closed-form marginal of a
linear-Gaussian decoder (MultivariateNormal) for the quadrature, its tempered version in closed form,
a direct sum over a grid through the likelihood's own log_prob, and autograd for the free-bits loss.
Models are tiny, so the file runs in seconds.
"""
import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence
from vae_models import binary, gen, tiny_vae

from helpers.rate_distortion import (
    FreeBitsSettings,
    RateDistortion,
    free_bits_loss,
    free_bits_step,
    kl_per_dimension,
    rate_distortion,
    train_free_bits,
)
from helpers.vae import (
    VAE,
    GaussianLikelihood,
    MLPDecoder,
    MLPEncoder,
    elbo,
    elbo_terms,
    quadrature_log_marginal,
    training_step,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def linear_gaussian_vae(p=3, sigma=0.7, latent=2, seed=0):
    """p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2 I): log p(x) = log N(x; b, W W^T + sigma^2 I)."""
    torch.manual_seed(seed)
    decoder = nn.Linear(latent, p).double()
    model = VAE(MLPEncoder(p, 4, latent).double(), decoder, GaussianLikelihood(sigma=sigma)).double()
    return model, decoder.weight.detach(), decoder.bias.detach()


# ---------------------------------------------------------------------- bookkeeping
def test_kl_per_dimension_matches_torch_distributions_and_sums_to_the_kl():
    g = gen(1)
    mu, logvar = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g,
                                                                                   dtype=torch.float64)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert torch.allclose(kl_per_dimension(mu, logvar), ref, atol=1e-12)
    assert (kl_per_dimension(mu, logvar) >= 0).all()
    assert torch.equal(kl_per_dimension(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))


def test_rate_plus_distortion_is_minus_the_elbo_on_the_same_noise():
    model, x = tiny_vae(), binary(50)
    rd = rate_distortion(model, x, seed=7, batch_size=1000)       # one batch: the noise of elbo(...)
    ref = elbo(model, x, gen(7), reduction="none")
    assert isinstance(rd, RateDistortion) and rd.rate.shape == (50,) and rd.kl_per_dim.shape == (50, 3)
    assert torch.equal(rd.rate, ref.kl) and torch.equal(rd.distortion, -ref.reconstruction)
    assert torch.equal(rd.rate + rd.distortion, -ref.elbo)
    assert torch.equal(rd.elbo, ref.elbo)
    assert torch.equal(rd.objective(1.0), ref.elbo)
    # the KL of each dimension sums to the KL (the rate), image by image
    assert torch.allclose(rd.kl_per_dim.sum(1), rd.rate, rtol=0, atol=1e-6)
    assert (rd.distortion > 0).all() and (rd.rate > 0).all()   # binary data: log p(x | z) < 0


def test_batches_draw_the_noise_batch_after_batch():
    model, x = tiny_vae(), binary(25, seed=3)
    rd = rate_distortion(model, x, seed=2, batch_size=10)
    g = gen(2)
    parts = [elbo(model, x[i:i + 10], g, reduction="none") for i in range(0, 25, 10)]
    assert torch.equal(rd.distortion, -torch.cat([p.reconstruction for p in parts]))
    assert torch.equal(rd.rate, torch.cat([p.kl for p in parts]))
    # the same seed gives the same numbers; another seed other noise (the rate is exact: unchanged)
    again, other = rate_distortion(model, x, seed=2, batch_size=10), rate_distortion(model, x, seed=3, batch_size=10)
    assert torch.equal(again.distortion, rd.distortion)
    assert not torch.equal(other.distortion, rd.distortion) and torch.equal(other.rate, rd.rate)


def test_objective_activity_and_active_units():
    model, x = tiny_vae(), binary(40, seed=4)
    rd = rate_distortion(model, x)
    for beta in (0.0, 0.5, 2.0):
        assert torch.allclose(rd.objective(beta), -(rd.distortion + beta * rd.rate))
    assert (rd.objective(0.5) >= rd.elbo).all() and (rd.objective(2.0) <= rd.elbo).all()
    # activity: the population variance of the posterior means, against a direct computation
    ref = ((rd.mu - rd.mu.mean(0)) ** 2).mean(0)
    assert torch.allclose(rd.activity, ref, atol=1e-7)
    assert rd.active_units(0.0) == int((ref > 0).sum()) and rd.active_units(1e9) == 0
    # a dimension that ignores x (constant mean) is inactive and costs only its variance term
    mu = torch.cat([torch.randn(40, 1, generator=gen(5)), torch.full((40, 1), 0.3)], 1)
    rd2 = RateDistortion(rd.rate, rd.distortion, kl_per_dimension(mu, torch.zeros_like(mu)), mu, torch.zeros_like(mu))
    assert rd2.active_units() == 1
    # Burda et al.'s bound: the mean KL of a unit is at least half its activity
    assert (rd.kl_per_dim.mean(0) >= rd.activity / 2 - 1e-7).all()


# ---------------------------------------------------------------------- free bits
def test_free_bits_with_lambda_zero_is_the_elbo_loss_value_and_gradient():
    x = binary(16, seed=6)
    a, b = tiny_vae(seed=1), tiny_vae(seed=1)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    out_a = free_bits_step(a, opt_a, x, gen(8), free_bits=0.0)
    out_b = training_step(b, opt_b, x, gen(8))
    for key in ("train_elbo", "reconstruction", "kl"):
        assert out_a[key] == pytest.approx(out_b[key], abs=1e-5)
    assert out_a["free_bits_objective"] == pytest.approx(out_b["train_elbo"], abs=1e-5)
    # one SGD step on the same loss and the same noise: the same new weights
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    # with beta: lambda = 0 is the beta-VAE loss beta * KL - reconstruction
    rec, kl = elbo_terms(a, x, gen(9))
    mu, logvar = a.encoder(x)
    kl_j = kl_per_dimension(mu, logvar)
    assert free_bits_loss(rec, kl_j, 0.0, beta=3.0).item() == pytest.approx((3 * kl - rec).mean().item(), abs=1e-5)


def test_free_bits_clamps_each_dimension_and_stays_below_the_elbo():
    rec = torch.tensor([-10.0, -12.0])
    kl_j = torch.tensor([[0.1, 2.0, 0.5], [0.3, 3.0, 0.9]], requires_grad=True)   # batch means 0.2, 2.5, 0.7
    loss = free_bits_loss(rec, kl_j, free_bits=1.0)
    assert loss.item() == pytest.approx(11.0 + 1.0 + 2.5 + 1.0)
    loss.backward()
    # clamped dimensions get no gradient; the free one the ELBO's 1 / batch
    assert torch.equal(kl_j.grad, torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]]))
    # minus the free-bits loss is at most the ELBO, by at most d * lambda
    minus_elbo = (kl_j.sum(1) - rec).mean().item()
    assert minus_elbo <= loss.item() <= minus_elbo + 3 * 1.0


def test_train_free_bits_trains_records_and_caches(tmp_path, capsys):
    x_train, x_test = binary(64, seed=10), binary(32, seed=11)
    model = tiny_vae(seed=2)
    path = tmp_path / "fb.pt"
    hist = train_free_bits(model, x_train, x_test, n_epochs=3, free_bits=0.5, batch_size=16, seed=1, progress=False,
                           checkpoint=path)
    assert hist["epoch"] == [1, 2, 3] and hist.settings["free_bits"] == 0.5
    for key in ("train_elbo", "free_bits_objective", "test_elbo", "test_rate", "test_distortion"):
        assert len(hist[key]) == 3
    # minus the free-bits loss never exceeds the ELBO of the same batch, so neither do their epoch means
    assert all(f <= e + 1e-6 for f, e in zip(hist["free_bits_objective"], hist["train_elbo"]))
    rd = rate_distortion(model, x_test, seed=1)
    assert hist["test_elbo"][-1] == pytest.approx(rd.elbo.mean().item(), abs=1e-5)
    # a rerun with the same configuration loads the weights instead of training
    again = tiny_vae(seed=2)
    hist2 = train_free_bits(again, x_train, x_test, n_epochs=3, free_bits=0.5, batch_size=16, seed=1,
                            progress=False, checkpoint=path)
    assert "Loaded the trained weights" in capsys.readouterr().out
    assert hist2["test_elbo"] == hist["test_elbo"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_train_free_bits_with_lambda_zero_is_train_vae():
    from helpers.vae import train_vae

    x_train = torch.rand(48, 12, generator=gen(12))
    a, b = tiny_vae(seed=3), tiny_vae(seed=3)
    ha = train_free_bits(a, x_train, n_epochs=2, free_bits=0.0, batch_size=16, seed=4, dynamic_binarization=True,
                         progress=False)
    hb = train_vae(b, x_train, n_epochs=2, batch_size=16, seed=4, dynamic_binarization=True, progress=False)
    assert ha["train_elbo"] == pytest.approx(hb["train_elbo"], abs=1e-4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


# ---------------------------------------------------------------------- quadrature
def test_quadrature_gives_the_exact_log_marginal_of_a_linear_gaussian_decoder():
    model, w, b = linear_gaussian_vae()
    x = torch.randn(6, 3, generator=gen(13), dtype=torch.float64) * 1.5
    s2 = torch.exp(2 * model.likelihood.log_sigma)          # sigma^2 as the model stores it (0.49)
    exact = MultivariateNormal(b, w @ w.T + s2 * torch.eye(3)).log_prob(x)
    got = quadrature_log_marginal(model, x, half_width=8.0, spacing=0.1, dtype=torch.float64)
    assert got.shape == (6,)
    assert torch.allclose(got, exact, atol=1e-10)
    # a coarse rule without refinement is off; the refined one is not
    coarse = quadrature_log_marginal(model, x, half_width=8.0, spacing=1.6, refine=1)
    assert (coarse - exact).abs().max() > 1e-3


def test_quadrature_of_the_tempered_marginal_matches_its_closed_form():
    # F_beta = beta log int N(z; 0, I) N(x; Wz + b, s^2 I)^(1/beta) dz
    #        = -p/2 log(2 pi s^2) + beta p/2 log(2 pi beta s^2) + beta log N(x; b, W W^T + beta s^2 I)
    model, w, b = linear_gaussian_vae(sigma=0.8, seed=1)
    x = torch.randn(5, 3, generator=gen(14), dtype=torch.float64)
    betas = [0.5, 1.0, 2.0]
    got = quadrature_log_marginal(model, x, betas, half_width=8.0, spacing=0.1, dtype=torch.float64)
    assert got.shape == (3, 5)
    s2, p = torch.exp(2 * model.likelihood.log_sigma).item(), 3
    for row, beta in zip(got, betas):
        exact = (-p / 2 * math.log(2 * math.pi * s2) + beta * p / 2 * math.log(2 * math.pi * beta * s2)
                 + beta * MultivariateNormal(b, w @ w.T + beta * s2 * torch.eye(3)).log_prob(x))
        assert torch.allclose(row, exact, atol=1e-10), (beta, row, exact)
    # power means: F_beta decreases in beta, so F_beta >= log p(x) for beta < 1
    assert (got[0] > got[1]).all() and (got[1] > got[2]).all()


def midpoint_reference(model, x, beta, half, n):
    """beta log sum_cells p(z_c) p(x | z_c)^(1/beta) h^2, through the likelihood's own log_prob."""
    h = 2 * half / n
    axis = -half + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    z = torch.cartesian_prod(axis, axis)
    log_prior = Normal(0.0, 1.0).log_prob(z).sum(1) + 2 * math.log(h)
    with torch.no_grad():
        logits = model.decoder(z.float())
        log_lik = torch.stack([model.likelihood.log_prob(xi.expand(len(z), -1), logits) for xi in x]).double()
    return beta * torch.logsumexp(log_lik / beta + log_prior, 1)


def test_quadrature_with_a_bernoulli_decoder_matches_a_direct_sum_of_log_probs():
    model, x = tiny_vae(latent=2, seed=5), binary(7, seed=15)
    got = quadrature_log_marginal(model, x, [1.0, 0.5], half_width=5.0, spacing=0.25, refine=1)
    for row, beta in zip(got, [1.0, 0.5]):
        assert torch.allclose(row, midpoint_reference(model, x, beta, 5.0, 40), atol=1e-4)
    # refining every cell (a huge threshold) is the midpoint rule on the fine grid
    ref = quadrature_log_marginal(model, x, half_width=5.0, spacing=0.25, refine=3, threshold=1e9, roughness=0.0)
    assert torch.allclose(ref, midpoint_reference(model, x, 1.0, 5.0, 120), atol=1e-4)


def test_refinement_only_where_it_matters_changes_nothing_else():
    # a sharply peaked decoder (large weights): refining near the peaks agrees with refining everywhere
    model, x = tiny_vae(latent=2, seed=9), binary(6, seed=19)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(6.0)
    everywhere = quadrature_log_marginal(model, x, half_width=5.0, spacing=0.1, refine=4, threshold=1e9, roughness=0.0)
    local = quadrature_log_marginal(model, x, half_width=5.0, spacing=0.1, refine=4, threshold=20.0)
    assert torch.allclose(local, everywhere, atol=1e-6)
    coarser = quadrature_log_marginal(model, x, half_width=6.0, spacing=0.15, refine=6)
    assert torch.allclose(local, coarser, atol=1e-3)


def test_the_beta_objective_of_any_q_is_below_the_tempered_marginal():
    # Gibbs' variational principle: E_q log p(x|z) - beta KL(q || p) <= F_beta for every q (here the
    # encoder's Gaussian), for every beta; Monte Carlo over z with 20,000 samples, 5 standard errors
    model, x = tiny_vae(latent=2, seed=6), binary(4, seed=16)
    betas = [0.25, 0.5, 1.0, 2.0]
    bound = quadrature_log_marginal(model, x, betas)
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(20000, *mu.shape, generator=gen(17))
        rec = torch.stack([model.likelihood.log_prob(x, model.decoder(zi)) for zi in z]).double()
        kl = kl_per_dimension(mu, logvar).sum(1).double()
    for row, beta in zip(bound, betas):
        obj = rec - beta * kl                                   # (samples, images)
        se = obj.std(0) / math.sqrt(len(obj))
        assert (obj.mean(0) <= row + 5 * se).all(), (beta, obj.mean(0), row)
    # alone, log p(x) gets other cells refined (those of beta = 1 only): the same to 1e-3 nats
    assert torch.allclose(bound[2], quadrature_log_marginal(model, x), atol=1e-3)


def test_quadrature_in_one_dimension_against_a_fine_sum():
    model, x = tiny_vae(latent=1, seed=8), binary(5, seed=18)
    got = quadrature_log_marginal(model, x, half_width=8.0, spacing=0.05)
    z = torch.linspace(-8, 8, 160001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        logits = model.decoder(z.float())
        log_lik = torch.stack([model.likelihood.log_prob(xi.expand(len(z), -1), logits) for xi in x]).double()
    ref = torch.logsumexp(log_lik + Normal(0.0, 1.0).log_prob(z[:, 0]), 1) + math.log(16 / 160000)
    assert got.shape == (5,) and torch.allclose(got, ref, atol=1e-6)


# ---------------------------------------------------------------------- argument errors
def test_bad_arguments_raise_clear_errors():
    model, x = tiny_vae(), binary(10)
    with pytest.raises(ValueError, match="binary"):
        rate_distortion(model, torch.full((4, 12), 0.5))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        rate_distortion(model, x, batch_size=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        rate_distortion(model, x, seed=-1)
    with pytest.raises(TypeError, match="helpers.vae.VAE"):
        rate_distortion(nn.Linear(12, 3), x)
    with pytest.raises(ValueError, match="shape"):
        rate_distortion(model, binary(4, d=10))
    with pytest.raises(ValueError, match="same shape"):
        kl_per_dimension(torch.zeros(3, 2), torch.zeros(3, 4))
    rd = rate_distortion(model, x)
    with pytest.raises(ValueError, match="beta must be a finite number"):
        rd.objective(-1.0)
    with pytest.raises(ValueError, match="free_bits must be a finite number"):
        free_bits_loss(torch.zeros(3), torch.zeros(3, 2), free_bits=-0.5)
    with pytest.raises(ValueError, match="one value per image"):
        free_bits_loss(torch.zeros(4), torch.zeros(3, 2), free_bits=0.5)
    with pytest.raises(ValueError, match="free_bits must be a finite number"):
        FreeBitsSettings(n_epochs=1, free_bits=float("nan"))
    with pytest.raises(TypeError, match="unknown setting"):
        train_free_bits(model, x, n_epochs=1, free_bits=0.5, kl_warmup=3)
    with pytest.raises(ValueError, match="binary"):
        train_free_bits(model, torch.full((4, 12), 0.5), n_epochs=1, free_bits=0.5)
    with pytest.raises(ValueError, match="1- or 2-D latent"):
        quadrature_log_marginal(model, x)                 # latent_dim 3
    two_d = tiny_vae(latent=2)
    with pytest.raises(ValueError, match="beta must be a finite number"):
        quadrature_log_marginal(two_d, x, 0.0)
    with pytest.raises(ValueError, match="refine must be an int >= 1"):
        quadrature_log_marginal(two_d, x, refine=0)
    with pytest.raises(ValueError, match="spacing must be a finite number"):
        quadrature_log_marginal(two_d, x, spacing=0.0)
    class OtherLikelihood(nn.Module):
        def check_data(self, x):
            pass

    with pytest.raises(TypeError, match="Bernoulli and Gaussian"):
        quadrature_log_marginal(VAE(MLPEncoder(12, 8, 2), MLPDecoder(2, 8, 12), OtherLikelihood()), x)


def test_quadrature_checkpoint_caches_the_result(tmp_path, capsys):
    model, x = tiny_vae(latent=2, seed=10), binary(4, seed=20)
    path = tmp_path / "quad.pt"
    first = quadrature_log_marginal(model, x, [1.0, 0.5], spacing=0.2, checkpoint=path)
    assert path.exists() and torch.equal(first, quadrature_log_marginal(model, x, [1.0, 0.5], spacing=0.2))
    again = quadrature_log_marginal(model, x, [1.0, 0.5], spacing=0.2, checkpoint=path)
    assert "Loaded the quadrature result" in capsys.readouterr().out and torch.equal(again, first)
    # another rule (or other images, other weights) is computed again, not loaded
    other = quadrature_log_marginal(model, x, [1.0, 0.5], spacing=0.25, checkpoint=path)
    assert "different configuration" in capsys.readouterr().out and not torch.equal(other, first)


def test_quadrature_agrees_with_a_uniform_midpoint_rule():
    # an independent implementation: the midpoint rule on a fine uniform grid, through torch.distributions
    model, x = tiny_vae(latent=2, seed=11), binary(8, seed=21)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(4.0)                                    # peaked posteriors, so that refinement matters
    n, box = 960, 6.0
    h = 2 * box / n
    axis = -box + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    z = torch.cartesian_prod(axis, axis)
    uniform = torch.full((len(x),), -math.inf, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, len(z), 65536):
            zc = z[s:s + 65536]
            logits = model.decoder(zc.float()).double()
            log_lik = torch.distributions.Bernoulli(logits=logits[None]).log_prob(x.double()[:, None]).sum(-1)
            log_prior = Normal(0.0, 1.0).log_prob(zc).sum(1)
            uniform = torch.logaddexp(uniform, torch.logsumexp(log_lik + log_prior, 1))
    uniform += 2 * math.log(h)
    adaptive = quadrature_log_marginal(model, x, half_width=6.0, spacing=0.1, refine=4)
    assert torch.allclose(adaptive, uniform, atol=1e-5), (adaptive - uniform).abs().max()
    coarse = quadrature_log_marginal(model, x, half_width=6.0, spacing=0.1, refine=1)   # the same cells, unrefined
    assert (coarse - uniform).abs().max() > 1e-4                                        # refinement is what agrees
