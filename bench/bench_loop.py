"""Overhead of the shared training loop (helpers.train.fit) against a minimal hand-written loop.

For each trainer, the same model from the same initial weights is trained for the same number of
epochs twice in this script, on preloaded tensors:

* shared: the course's trainer (``train_vae`` with dynamic binarization and a per-epoch test ELBO;
  ``train_rbm`` with its per-epoch monitors), i.e. helpers.train.fit with its progress bar
  (disabled), history, NaN screening;
* minimal: the smallest honest loop that does the same work: shuffle, slice, binarize, forward,
  backward, Adam step, and the same per-epoch evaluation; no screening, no history.

It prints seconds per epoch and the ratio shared / minimal (goal: at most 1.2, i.e. the loop adds at
most 20 %). Timings are the best of ``--repeats`` runs, on whatever threads torch uses here.

    python bench/bench_loop.py                 # MNIST from COURSE_DATA (standard split), about 3 minutes
    python bench/bench_loop.py --n-train 10000 # a quicker run on a subset
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F

from helpers import rbm as rbm_module
from helpers.data import load_mnist
from helpers.rbm import BernoulliRBM, RBMSettings, train_rbm
from helpers.train import minibatches
from helpers.vae import conv_vae, kl_normal_std, mlp_vae, train_vae


def minimal_vae_epochs(model, x_train, x_test, n_epochs, batch_size, lr, seed):
    """Shuffle, slice, binarize, one reparameterized sample, Adam; a test ELBO after each epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(n_epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(x_train), batch_size):
            xb = torch.bernoulli(x_train[perm[start:start + batch_size]], generator=gen)
            mu, logvar = model.encoder(xb)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            rec = -F.binary_cross_entropy_with_logits(model.decoder(z), xb, reduction="none").flatten(1).sum(1)
            loss = (kl_normal_std(mu, logvar) - rec).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            test_gen = torch.Generator().manual_seed(seed)
            total = 0.0
            for start in range(0, len(x_test), 1000):
                xb = x_test[start:start + 1000]
                mu, logvar = model.encoder(xb)
                z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=test_gen)
                rec = -F.binary_cross_entropy_with_logits(model.decoder(z), xb, reduction="none").flatten(1).sum(1)
                total += (rec - kl_normal_std(mu, logvar)).sum().item()


def minimal_rbm_epochs(model, x_train, settings, seed):
    """The trainer's own fused CD step and monitors, called from a bare loop (no fit)."""
    gen = torch.Generator().manual_seed(seed)
    step = rbm_module._fused_cd_step(model, x_train, settings, gen, None)
    evaluate, _, _ = rbm_module._monitor(model, x_train, None, settings)
    with torch.no_grad():
        for epoch in range(1, settings.n_epochs + 1):
            for idx in minibatches(len(x_train), settings.batch_size, gen):
                step(idx)
            evaluate(epoch)


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=60000, help="training images (default: all 60,000)")
    parser.add_argument("--conv-n-train", type=int, default=10000, help="training images for the conv VAE")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", action="store_true",
                        help="also train both VAEs with precision='bfloat16' and compare time and test ELBO")
    args = parser.parse_args()

    grey, _ = load_mnist("train", limit=args.n_train)
    grey_test, _ = load_mnist("test", limit=10000)
    x_test = (grey_test > 0.5).float()
    rows = []

    vae_models = (("MLP VAE (10-D)", lambda: mlp_vae(latent_dim=10, seed=0), args.n_train, True),
                  ("conv VAE (2-D, hidden 128)", lambda: conv_vae(latent_dim=2, hidden=128, seed=0),
                   args.conv_n_train, False))
    for name, build, n, flat in vae_models:
        x = grey[:n] if flat else grey[:n].view(-1, 1, 28, 28)
        xt = x_test if flat else x_test.view(-1, 1, 28, 28)
        start = build()
        shared = best_of(args.repeats, lambda: train_vae(copy.deepcopy(start), x, xt, n_epochs=1, batch_size=128,
                                                         lr=1e-3, dynamic_binarization=True, progress=False))
        minimal = best_of(args.repeats, lambda: minimal_vae_epochs(copy.deepcopy(start), x, xt, 1, 128, 1e-3, 0))
        rows.append((f"train_vae, {name}, {n} images", shared, minimal))

    x_bin = (grey[:args.n_train] > 0.5).float()
    settings = RBMSettings(method="cd", k=1, lr=0.05, batch_size=100, n_epochs=1)
    start = BernoulliRBM(784, 200, seed=0)
    shared = best_of(args.repeats, lambda: train_rbm(copy.deepcopy(start), x_bin, progress=False,
                                                     **{k: getattr(settings, k) for k in ("method", "k", "lr",
                                                                                          "batch_size", "n_epochs")}))
    minimal = best_of(args.repeats, lambda: minimal_rbm_epochs(copy.deepcopy(start), x_bin, settings, 0))
    rows.append((f"train_rbm, CD-1 784 x 200, {args.n_train} images", shared, minimal))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats}; one epoch each")
    print(f"{'trainer':52s} {'shared (s)':>11s} {'minimal (s)':>12s} {'ratio':>7s}")
    for label, s, m in rows:
        print(f"{label:52s} {s:11.2f} {m:12.2f} {s / m:7.2f}")
    if args.precision:
        print("\nopt-in mixed precision (train_vae precision='bfloat16'), one epoch, test ELBO in float32, nats:")
        for name, build, n, flat in vae_models:
            x = grey[:n] if flat else grey[:n].view(-1, 1, 28, 28)
            xt = x_test if flat else x_test.view(-1, 1, 28, 28)
            out = {}
            for precision in ("float32", "bfloat16"):
                t0 = time.perf_counter()
                hist = train_vae(build(), x, xt, n_epochs=1, batch_size=128, lr=1e-3, dynamic_binarization=True,
                                 progress=False, precision=precision)
                out[precision] = (time.perf_counter() - t0, hist["test_elbo"][-1])
            (t32, e32), (t16, e16) = out["float32"], out["bfloat16"]
            print(f"  {name}, {n} images: float32 {t32:.1f} s, ELBO {e32:.2f}; bfloat16 {t16:.1f} s, ELBO {e16:.2f}; "
                  f"speed-up {t32 / t16:.2f}x, ELBO difference {e16 - e32:+.2f}")
    worst = max(s / m for _, s, m in rows)
    print(f"largest ratio shared / minimal: {worst:.2f} (goal <= 1.20){'' if worst <= 1.2 else '  NOT MET'}")
    return 0 if math.isfinite(worst) else 1


if __name__ == "__main__":
    raise SystemExit(main())
