"""helpers.train: the one training loop (minibatches, history, NaN screening, checkpoints),
and that it serves the step functions of the coming weeks: a GAN (two optimisers, alternating
steps), a diffusion model (a noise level drawn per batch) and an energy-based model (a replay
buffer of negatives kept across batches and epochs)."""
import math
from dataclasses import dataclass

import pytest
import torch

from helpers import train
from helpers.train import History, build_settings, fit, minibatches


def G(seed):
    return torch.Generator().manual_seed(seed)


def test_minibatches_cover_every_row_once_and_are_seeded():
    batches = minibatches(10, 4, G(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(batches, minibatches(10, 4, G(0))))
    assert not torch.equal(torch.cat(batches), torch.cat(minibatches(10, 4, G(1))))
    assert torch.equal(torch.cat(minibatches(10, 4, G(0), shuffle=False)), torch.arange(10))


def test_history_holds_weighted_epoch_means_and_evaluations():
    values = torch.arange(10, dtype=torch.float64)

    def step(idx):
        return {"value": values[idx].mean().item()}   # batch mean; batches of 4, 4, 2

    history = fit(step, 10, n_epochs=3, batch_size=4, generator=G(0), evaluate=lambda e: {"twice": 2 * e},
                  progress=False, settings={"lr": 0.1})
    assert isinstance(history, History) and history.settings == {"lr": 0.1}
    assert history["epoch"] == [1, 2, 3] and history["twice"] == [2, 4, 6]
    assert all(math.isclose(v, 4.5, rel_tol=0, abs_tol=1e-12) for v in history["value"])   # the mean of all rows
    assert len(history["time"]) == 3 and all(t >= 0 for t in history["time"])


def test_non_finite_loss_or_step_error_names_epoch_and_batch():
    calls = []

    def nan_on_third(idx):
        calls.append(1)
        return {"loss": float("nan") if len(calls) == 3 else 1.0}

    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 1 of 2: the loss term 'loss' became nan\. Try x"):
        fit(nan_on_third, 4, n_epochs=3, batch_size=2, generator=G(0), progress=False, hint="Try x")

    def bad_gradient(idx):
        raise FloatingPointError("a gradient became NaN")

    with pytest.raises(FloatingPointError, match=r"a gradient became NaN \(toy diverged at epoch 1, batch 1 of 2\)"):
        fit(bad_gradient, 4, n_epochs=1, batch_size=2, generator=G(0), progress=False, desc="toy")
    with pytest.raises(TypeError, match="dict of loss terms"):
        fit(lambda idx: 1.0, 4, n_epochs=1, batch_size=2, generator=G(0), progress=False)


def test_checkpoint_loads_a_matching_run_and_retrains_a_stale_one(tmp_path, capsys):
    path = tmp_path / "run.pt"
    w = torch.zeros(3)

    def run(lr, target):
        def step(idx):
            w.add_(lr * (1.0 - w))
            return {"w0": w[0].item()}
        return fit(step, 6, n_epochs=2, batch_size=3, generator=G(0), progress=False, checkpoint=path,
                   fingerprint={"lr": lr}, state=lambda: {"w": w.clone()}, restore=lambda s: target.copy_(s["w"]))

    first = run(0.5, w)
    trained = w.clone()
    w.zero_()
    again = run(0.5, w)                                   # same fingerprint: loaded, not trained
    assert torch.equal(w, trained) and dict(again) == dict(first)
    assert "Loaded the trained weights" in capsys.readouterr().out
    w.zero_()
    run(0.25, w)                                          # stale: trained again
    assert "differs in: lr" in capsys.readouterr().out and not torch.equal(w, trained)
    with pytest.raises(ValueError, match="fingerprint=, state= and restore="):
        fit(lambda idx: {}, 2, n_epochs=1, batch_size=1, generator=G(0), progress=False, checkpoint=path)


def test_settings_are_validated_and_unknown_names_listed():
    @dataclass(frozen=True)
    class Toy:
        lr: float = 0.1
        n_epochs: int = 1

    assert build_settings(Toy, {"lr": 0.2}) == Toy(0.2, 1)
    with pytest.raises(TypeError, match=r"unknown setting\(s\) 'lr_rate'; Toy has: lr, n_epochs"):
        build_settings(Toy, {"lr_rate": 0.2})


def test_a_gan_step_with_two_optimisers_alternating():
    # data N(3, 1); generator x = mu + z; logistic discriminator on (x, x^2). Two discriminator
    # steps per generator step, each with its own optimiser, inside one step function.
    gen = G(0)
    data = 3.0 + torch.randn(512, generator=gen)
    mu = torch.zeros(1, requires_grad=True)
    disc = torch.nn.Linear(2, 1)
    opt_g, opt_d = torch.optim.Adam([mu], lr=0.05), torch.optim.Adam(disc.parameters(), lr=0.05)
    counts = {"d": 0, "g": 0}
    features = lambda x: torch.stack([x, x**2 / 10], 1)  # noqa: E731
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def step(idx):
        real = data[idx]
        for _ in range(2):
            fake = (mu + torch.randn(len(idx), generator=gen)).detach()
            logits = disc(features(torch.cat([real, fake]))).squeeze(1)
            d_loss = bce(logits, torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))]))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            counts["d"] += 1
        fake = mu + torch.randn(len(idx), generator=gen)
        g_loss = bce(disc(features(fake)).squeeze(1), torch.ones(len(idx)))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        counts["g"] += 1
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    history = fit(step, len(data), n_epochs=30, batch_size=64, generator=gen, progress=False)
    assert counts == {"d": 2 * 30 * 8, "g": 30 * 8}
    assert set(history) == {"epoch", "time", "d_loss", "g_loss"}
    assert abs(mu.item() - 3.0) < 1.0, mu.item()            # the generator moved from 0 towards the data


def test_a_diffusion_step_draws_a_noise_level_per_batch():
    # denoising score matching on 1-D data with a noise level sigma drawn for every batch
    def run(seed):
        gen = G(seed)
        data = torch.randn(256, generator=G(1)) * 0.5 + 1.0
        torch.manual_seed(0)                                   # the network's initial weights
        net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        sigmas = []

        def step(idx):
            sigma = 0.1 + 0.9 * torch.rand((), generator=gen)
            sigmas.append(sigma.item())
            x = data[idx]
            noise = torch.randn(len(idx), generator=gen)
            pred = net(torch.stack([x + sigma * noise, sigma.expand(len(idx))], 1)).squeeze(1)
            loss = ((pred + noise) ** 2).mean()               # predict -noise (the score times sigma)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": loss.item()}

        return fit(step, len(data), n_epochs=15, batch_size=32, generator=gen, progress=False), sigmas

    (h1, s1), (h2, s2), (_, s3) = run(0), run(0), run(1)
    assert len(s1) == 15 * 8 and len(set(s1)) == len(s1)       # one fresh level per batch
    assert s1 == s2 and s1 != s3 and h1["loss"] == h2["loss"]  # from the loop's seeded stream
    assert h1["loss"][-1] < h1["loss"][0]


def test_an_ebm_step_keeps_a_replay_buffer_across_batches_and_epochs():
    # a 1-D energy E(x) = (x - c)^2 / 2; negatives from a replay buffer refreshed by Langevin steps
    gen = G(0)
    data = 2.0 + torch.randn(256, generator=gen)
    c = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([c], lr=0.1)
    buffer = torch.randn(128, generator=gen)                  # persists between calls of step
    seen = []

    def step(idx):
        nonlocal buffer
        pick = torch.randint(len(buffer), (len(idx),), generator=gen)
        x_neg = buffer[pick].clone()
        for _ in range(10):                                    # Langevin on E with step 0.05
            x_neg = x_neg - 0.05 * (x_neg - c.detach()) + math.sqrt(0.1) * torch.randn(len(idx), generator=gen)
        buffer[pick] = x_neg
        seen.append(buffer.clone())
        energy = lambda x: (x - c) ** 2 / 2  # noqa: E731
        loss = energy(data[idx]).mean() - energy(x_neg.detach()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"contrastive_loss": loss.item()}

    fit(step, len(data), n_epochs=20, batch_size=64, generator=gen, progress=False)
    assert len(seen) == 80 and all(s.shape == (128,) for s in seen)
    assert not torch.equal(seen[0], seen[-1])                  # the same buffer, updated in place
    assert abs(c.item() - 2.0) < 0.5, c.item()                 # the energy's minimum moved to the data


def test_module_documents_cache_not_resume():
    assert "not a resumable training state" in train.__doc__
