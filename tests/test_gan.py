"""helpers.gan against independent computations.

References: binary cross-entropy on probabilities (torch's BCE, not the logit form the module
uses), a linear critic whose input gradient is known in closed form, the exact 1-D theory
checked with torch.distributions log-densities integrated by scipy's Simpson rule on a
different grid, and training runs compared bitwise. Networks are tiny: the file runs in seconds.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.integrate import simpson
from torch.distributions import Normal

from helpers.gan import (
    GANSettings,
    discriminator_loss,
    discriminator_step,
    game_value,
    generator_loss,
    gradient_penalty,
    jensen_shannon,
    latent_dim_of,
    optimal_discriminator,
    sample,
    train_gan,
    training_step,
)
from helpers.nets import MLP

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nets(seed=0, data_dim=2, latent=2, hidden=16):
    torch.manual_seed(seed)
    return MLP(latent, data_dim, hidden, 1), MLP(data_dim, 1, hidden, 1, "leaky_relu")


def ring(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    angle = torch.randint(8, (n,), generator=g) * (2 * math.pi / 8)
    return torch.stack([2 * angle.cos(), 2 * angle.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g)


def weights(*modules):
    return [t.clone() for m in modules for t in m.state_dict().values()]


# ---------------------------------------------------------------------- settings
def test_settings_validate():
    assert GANSettings(n_epochs=1).loss == "non_saturating"
    for bad in ({"loss": "minimax"}, {"lr_g": 0}, {"beta1": 1.0}, {"d_steps": 0}, {"gp_weight": -1.0},
                {"n_epochs": 0}):
        with pytest.raises(ValueError):
            GANSettings(**{"n_epochs": 1, **bad})
    with pytest.raises(ValueError, match="only acts with loss='wgan_gp'"):
        GANSettings(n_epochs=1, gp_weight=5.0)
    g, d = nets()
    with pytest.raises(TypeError, match="unknown setting.*'lr'"):
        train_gan(g, d, ring(), n_epochs=1, lr=1e-3, progress=False)


# ---------------------------------------------------------------------- losses against their definitions
def test_losses_match_probability_form():
    g = torch.Generator().manual_seed(1)
    real, fake = 3 * torch.randn(50, 1, generator=g, dtype=torch.float64), torch.randn(50, 1, generator=g,
                                                                                         dtype=torch.float64)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    bce = F.binary_cross_entropy(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy(d_fake,
                                                                                            torch.zeros_like(d_fake))
    assert discriminator_loss(real, fake).item() == pytest.approx(bce.item(), rel=1e-12)
    assert discriminator_loss(real, fake, "saturating").item() == pytest.approx(bce.item(), rel=1e-12)
    assert generator_loss(fake, "saturating").item() == pytest.approx(torch.log(1 - d_fake).mean().item(), rel=1e-12)
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(-torch.log(d_fake).mean().item(), rel=1e-12)
    assert discriminator_loss(real, fake, "wgan_gp").item() == pytest.approx((fake.mean() - real.mean()).item())
    assert generator_loss(fake, "wgan_gp").item() == pytest.approx(-fake.mean().item())
    with pytest.raises(ValueError, match="loss must be one of"):
        generator_loss(fake, "hinge")


def test_gradients_of_the_two_generator_losses():
    # d/dl of log(1 - sigmoid(l)) is -sigmoid(l): vanishes as D(G(z)) -> 0; of -log sigmoid(l) it is sigmoid(l) - 1
    logit = torch.tensor([[-8.0], [0.0], [3.0]], dtype=torch.float64, requires_grad=True)
    for loss, expected in (("saturating", -torch.sigmoid(logit)), ("non_saturating", torch.sigmoid(logit) - 1)):
        grad, = torch.autograd.grad(generator_loss(logit, loss), logit)
        assert torch.allclose(grad, expected.detach() / 3, atol=1e-12)


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    w = torch.tensor([[0.3, -2.0]])
    critic = nn.Linear(2, 1)
    with torch.no_grad():
        critic.weight.copy_(w)
    x, y = ring(32, 1), ring(32, 2)
    gp = gradient_penalty(critic, x, y, torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-6)
    gp.backward()          # differentiable in the critic's weights: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    assert torch.allclose(critic.weight.grad, 2 * (w.norm() - 1) * w / w.norm(), atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, x, y[:5])


# ---------------------------------------------------------------------- steps
def test_training_step_counts_updates_and_leaves_the_other_network_alone():
    g, d = nets(3)
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3)
    x = ring(96)
    before_g = weights(g)
    discriminator_step(g, d, opt_d, x[:32], torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(before_g, weights(g)))     # a D step never moves G
    terms = training_step(g, d, opt_g, opt_d, [x[:32], x[32:64], x[64:]], torch.Generator().manual_seed(0))
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= terms.keys()
    assert 0 < terms["d_real"] < 1 and 0 < terms["d_fake"] < 1
    assert [s["step"].item() for s in opt_d.state.values()][0] == 4          # 1 + 3 discriminator updates
    assert [s["step"].item() for s in opt_g.state.values()][0] == 1
    assert all(p.requires_grad for p in d.parameters())                     # restored after the G step
    wgan = training_step(g, d, opt_g, opt_d, [x[:32]], torch.Generator().manual_seed(0), loss="wgan_gp")
    assert "gradient_penalty" in wgan and wgan["gradient_penalty"] >= 0


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("loss", ["non_saturating", "saturating", "wgan_gp"])
def test_same_seed_gives_bitwise_identical_training(loss):
    def run(seed):
        g, d = nets()
        hist = train_gan(g, d, ring(), n_epochs=2, batch_size=32, seed=seed, loss=loss, d_steps=2, progress=False)
        return weights(g, d), hist

    (w1, h1), (w2, h2), (w3, _) = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))
    assert h1["loss_d"] == h2["loss_d"] and h1["loss_g"] == h2["loss_g"]
    assert not all(torch.equal(a, b) for a, b in zip(w1, w3))
    for key in ("epoch", "time", "loss_d", "loss_g", "d_real", "d_fake"):
        assert len(h1[key]) == 2
    assert h1.settings["loss"] == loss


@pytest.mark.parametrize("seed", [0, 1])
def test_a_gan_learns_the_mean_and_spread_of_a_gaussian(seed):
    # data N(3, 0.5^2); an affine generator G(z) = a z + b can be exact (a = +-0.5, b = 3)
    x = 3 + 0.5 * torch.randn(2048, 1, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(seed)
    g, d = MLP(1, 1, depth=0), MLP(1, 1, 32, 2, "leaky_relu")
    train_gan(g, d, x, n_epochs=25, batch_size=64, lr_g=5e-3, lr_d=5e-3, seed=seed, progress=False)
    out = sample(g, 20000, torch.Generator().manual_seed(1))
    assert abs(out.mean().item() - 3) < 0.3, out.mean()          # started at b ~ U(-1, 1): 2 or more away
    assert abs(out.std().item() - 0.5) < 0.25, out.std()


def test_checkpoint_loads_the_same_run(tmp_path, capsys):
    path = tmp_path / "gan.pt"
    g, d = nets(5)
    h1 = train_gan(g, d, ring(), n_epochs=2, batch_size=64, loss="wgan_gp", checkpoint=path, progress=False)
    trained = weights(g, d)
    g2, d2 = nets(5)
    h2 = train_gan(g2, d2, ring(), n_epochs=2, batch_size=64, loss="wgan_gp", checkpoint=path, progress=False)
    assert "Loaded the trained weights" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(trained, weights(g2, d2)))
    assert h2["loss_d"] == h1["loss_d"] and h2.settings["loss"] == "wgan_gp"
    g3, d3 = nets(6)                                        # other initial weights: a different run
    train_gan(g3, d3, ring(), n_epochs=2, batch_size=64, loss="wgan_gp", checkpoint=path, progress=False)
    assert "different configuration" in capsys.readouterr().out
    g4, d4 = nets(5)                                        # other data: a different run
    train_gan(g4, d4, ring(seed=9), n_epochs=2, batch_size=64, loss="wgan_gp", checkpoint=path, progress=False)
    assert "x_train" in capsys.readouterr().out


def test_bad_input_is_refused_with_a_message():
    g, d = nets()
    with pytest.raises(ValueError, match="cannot take the data.*rows of shape \\(3,\\)"):
        train_gan(g, d, torch.randn(64, 3), n_epochs=1, progress=False)
    bad = ring()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        train_gan(g, d, bad, n_epochs=1, progress=False)
    with pytest.raises(ValueError, match="floating-point"):
        train_gan(g, d, torch.ones(10, 2, dtype=torch.long), n_epochs=1, progress=False)
    no_latent = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="no attribute latent_dim"):
        train_gan(no_latent, d, ring(), n_epochs=1, progress=False)
    no_latent.latent_dim = 2
    assert latent_dim_of(no_latent) == 2 and latent_dim_of(g) == 2
    with pytest.raises(ValueError, match="one logit per sample"):
        train_gan(g, MLP(2, 2), ring(), n_epochs=1, progress=False)
    with pytest.raises(ValueError, match="generator makes samples of shape \\(3,\\)"):
        train_gan(MLP(2, 3), MLP(2, 1), ring(), n_epochs=1, progress=False)
    with pytest.raises(ValueError, match="use x\\[:, None\\]"):
        train_gan(MLP(1, 1), MLP(1, 1), torch.randn(10), n_epochs=1, progress=False)


def test_divergence_stops_with_where_it_happened():
    g, d = nets()
    with torch.no_grad():
        d.net[-1].bias.fill_(float("inf"))                 # the logits are inf - inf = NaN at the first step
    before = weights(g)
    with pytest.raises(FloatingPointError, match="epoch 1, batch 1"):
        train_gan(g, d, ring(), n_epochs=1, batch_size=32, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(g)))


def test_sample_is_reproducible_and_batch_independent():
    g, _ = nets()
    a = sample(g, 1000, torch.Generator().manual_seed(4))
    b = sample(g, 1000, torch.Generator().manual_seed(4), batch_size=7)
    assert a.shape == (1000, 2) and not a.requires_grad
    assert torch.allclose(a, b, atol=1e-6)
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(a, g(z).detach(), atol=1e-6)        # exactly G(z), z ~ N(0, I) from the generator


# ---------------------------------------------------------------------- exact theory in 1-D
def mixture(weights_, means, stds):
    comps = Normal(torch.tensor(means, dtype=torch.float64), torch.tensor(stds, dtype=torch.float64))
    logw = torch.tensor(weights_, dtype=torch.float64).log()
    return lambda x: torch.logsumexp(comps.log_prob(x[:, None]) + logw, 1)      # log density


P = mixture([0.3, 0.7], [-2.0, 1.5], [0.5, 0.8])
Q = mixture([0.5, 0.5], [-0.5, 3.0], [1.0, 0.4])


def simpson_jsd(log_p, log_q, lo=-15, hi=15, m=40001):
    # independent: log-space integrand, Simpson's rule from scipy, another grid
    x = torch.linspace(lo, hi, m, dtype=torch.float64)
    lp, lq = log_p(x), log_q(x)
    lm = torch.logaddexp(lp, lq) - math.log(2)
    f = 0.5 * (lp.exp() * (lp - lm) + lq.exp() * (lq - lm))
    return simpson(f.numpy(), x=x.numpy())


def test_optimal_discriminator_is_the_posterior_of_real():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    d = optimal_discriminator(P(x).exp(), Q(x).exp())
    assert torch.allclose(d, torch.sigmoid(P(x) - Q(x)), atol=1e-12)   # log D/(1 - D) = log p - log q
    assert optimal_discriminator(torch.zeros(3), torch.zeros(3)).tolist() == [0.5] * 3


def test_value_at_the_optimal_discriminator_is_minus_log4_plus_twice_jsd():
    x = torch.linspace(-12, 12, 6001, dtype=torch.float64)
    p, q = P(x).exp(), Q(x).exp()
    v = game_value(optimal_discriminator(p, q), p, q, x)
    reference = simpson_jsd(P, Q)
    assert 0.05 < reference < math.log(2) - 0.05                          # a case far from both bounds
    assert v == pytest.approx(-math.log(4) + 2 * reference, abs=1e-7)
    assert jensen_shannon(p, q, x) == pytest.approx(reference, abs=1e-7)
    assert game_value(torch.full_like(x, 0.5), p, q, x) == pytest.approx(-math.log(4), abs=1e-9)


def test_the_optimal_discriminator_beats_every_other():
    x = torch.linspace(-12, 12, 3001, dtype=torch.float64)
    p, q = P(x).exp(), Q(x).exp()
    d_star = optimal_discriminator(p, q)
    best = game_value(d_star, p, q, x)
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.1, 1.0, 5.0):
        for _ in range(20):
            # smooth random perturbations of the logit (random Fourier features)
            k, phase, amp = torch.rand(3, 8, generator=g, dtype=torch.float64)
            bump = (scale * amp * torch.cos(3 * k * x[:, None] + 6 * phase)).sum(1)
            d = torch.sigmoid(torch.logit(d_star.clamp(1e-12, 1 - 1e-12)) + bump)
            assert game_value(d, p, q, x) < best
    # and in closed form, the loss of D is a sum of pointwise KLs: V(D*) - V(D) = int (p + q) KL(Bern(D*) || Bern(D))
    d = torch.sigmoid(torch.sin(x))
    kl = d_star * torch.log(d_star / d) + (1 - d_star) * torch.log((1 - d_star) / (1 - d))
    assert best - game_value(d, p, q, x) == pytest.approx(torch.trapezoid((p + q) * kl, x).item(), rel=1e-9)


def test_jsd_bounds_and_extremes():
    x = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        means = (4 * torch.rand(4, generator=g) - 2).tolist()
        stds = (0.2 + torch.rand(4, generator=g)).tolist()
        p = mixture([0.5, 0.5], means[:2], stds[:2])(x).exp()
        q = mixture([0.2, 0.8], means[2:], stds[2:])(x).exp()
        assert 0 <= jensen_shannon(p, q, x) <= math.log(2)
    assert jensen_shannon(p, p, x) == pytest.approx(0, abs=1e-12)
    # disjoint supports: smooth bumps c (1 - u^2)^2 on [-4, -2] and on [2, 4]: JSD = log 2 exactly
    def bump(centre):
        u = (x - centre).clamp(-1, 1)
        return 15 / 16 * (1 - u ** 2) ** 2
    assert jensen_shannon(bump(-3.0), bump(3.0), x) == pytest.approx(math.log(2), abs=1e-6)
    # discrete form: the closed form of two point masses and of two coins
    assert jensen_shannon(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(math.log(2))
    a, b = 0.2, 0.7
    m = [(a + b) / 2, 1 - (a + b) / 2]
    kl = lambda u, v: sum(ui * math.log(ui / vi) for ui, vi in zip(u, v))   # noqa: E731
    assert jensen_shannon(torch.tensor([a, 1 - a]), torch.tensor([b, 1 - b])) == pytest.approx(
        0.5 * kl([a, 1 - a], m) + 0.5 * kl([b, 1 - b], m), rel=1e-6)


def test_theory_refuses_bad_grids():
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)
    p = Normal(0.0, 1.0).log_prob(x).exp()
    with pytest.raises(ValueError, match="integrates to"):
        jensen_shannon(p, p, x)                                # most of N(0, 1) lies outside [-1, 1]
    with pytest.raises(ValueError, match="increasing"):
        jensen_shannon(p, p, x.flip(0))
    with pytest.raises(ValueError, match="sums to"):
        jensen_shannon(torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.5]))
    x = torch.linspace(-9, 9, 301, dtype=torch.float64)
    p = Normal(0.0, 1.0).log_prob(x).exp()
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        game_value(torch.full_like(x, 1.5), p, p, x)


def test_wgan_gp_critic_reaches_its_closed_form_optimum():
    # real data at 0, fakes at 3: interpolates are uniform on [0, 3] and the critic's loss
    # c(3) - c(0) + lam/3 int_0^3 (|c'| - 1)^2 dt is minimised pointwise by the constant slope c' = -(1 + 3 / (2 lam)).
    # With lam = 1: slope -2.5, E c(real) - E c(fake) = 7.5, penalty (k - 1)^2 = 2.25, loss -7.5 + 2.25 = -5.25.
    torch.manual_seed(0)
    g = MLP(1, 1, depth=0)
    with torch.no_grad():
        g.net[0].weight.zero_()
        g.net[0].bias.fill_(3.0)
    critic = MLP(1, 1, 32, 2, "leaky_relu")
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3, betas=(0.5, 0.9))
    rng = torch.Generator().manual_seed(0)
    for _ in range(1000):
        terms = discriminator_step(g, critic, opt, torch.zeros(256, 1), rng, loss="wgan_gp", gp_weight=1.0)
    with torch.no_grad():
        c = critic(torch.linspace(0, 3, 7)[:, None]).squeeze(1)
    assert torch.allclose(c.diff() / 0.5, torch.full((6,), -2.5), atol=0.1)      # linear with slope -2.5
    assert terms["loss_d"] == pytest.approx(-5.25, abs=0.05)
    assert terms["d_real"] - terms["d_fake"] == pytest.approx(7.5, rel=0.02)


def test_input_checks_leave_batch_norm_statistics_and_modes_alone():
    torch.manual_seed(0)
    d = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    before = {k: v.clone() for k, v in d.state_dict().items()}
    with pytest.raises(ValueError, match="generator makes samples of shape"):
        train_gan(MLP(2, 3), d, ring() + 5.0, n_epochs=1, progress=False)     # fails after probing both networks
    assert all(torch.equal(before[k], v) for k, v in d.state_dict().items())
    assert d.training
