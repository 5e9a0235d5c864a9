"""VAE training loop and IWAE cost, measured side by side in one run.

Run (from the repository root):

    COURSE_DATA=/path/to/data python bench/bench_vae.py [--threads N] [--reps R] [--iwae-conv]

Part 1, epoch time. ``helpers.vae.train_vae`` on preloaded tensors (shuffled
index batches) against the loop of the common examples (pytorch/examples
``vae/main.py``): torchvision's ``MNIST.__getitem__`` (a PIL image per item)
with a per-sample ``transforms.ToTensor()`` plus thresholding, through a
``torch.utils.data.DataLoader`` (batch 128, shuffle, no worker processes, as
those examples use on a CPU). torchvision's ``MNIST`` constructor insists on all
four files, and offline only the test split exists, so the reference subclasses
``torchvision.datasets.MNIST`` and fills ``data``/``targets`` with the same
uint8 images (its own ``__getitem__`` runs unchanged). Both sides train the same
architecture on the same 8,000 images (offline fallback "train" split, fixed
threshold binarization at 0.5) with Adam and batch size 128. Three timings per
architecture, interleaved and repeated, best of ``--reps``:

* ours: ``train_vae(..., n_epochs=1)``, the whole call (input checks included);
* reference: the DataLoader loop with a plain model as in the examples
  (default contiguous NCHW tensors, no channels-last);
* reference loop with our model: the DataLoader loop training our
  ``helpers.vae`` model, which isolates the data pipeline's share.

Part 2, IWAE: ``iwae_log_likelihood`` on 1,000 test images for k = 1, 10, 100,
1000 (MLP VAE, and with ``--iwae-conv`` the convolutional one up to k = 100):
time and the estimate in nats per image.

``--threads`` sets ``torch.set_num_threads`` for everything (default: torch's
choice). On a machine shared with other jobs, one thread avoids OpenMP
contention that can make two threads many times slower.
"""
import argparse
import math
import os
import platform
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from helpers.data import load_mnist, mnist_split_info
from helpers.vae import conv_vae, elbo, iwae_log_likelihood, kl_normal_std, mlp_vae, train_vae

BATCH = 128


class OfflineMNIST(torchvision.datasets.MNIST):
    """torchvision's MNIST dataset with its own ``__getitem__`` (PIL image, then the
    per-sample transform), fed with already-loaded uint8 images: the constructor
    of torchvision's class needs all four files, which do not exist offline."""

    def __init__(self, images_uint8, labels, transform):  # torchvision's __init__ skipped on purpose
        self.data, self.targets = images_uint8, labels
        self.transform, self.target_transform = transform, None


# --------------------------------------------------------------- the common examples' models
class RefMLPVAE(nn.Module):
    """pytorch/examples-style MLP VAE (784 -> 512 -> 2 x 2, 2 -> 512 -> 784 logits)."""

    def __init__(self, hidden=512, latent=2):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.fc4(F.relu(self.fc3(z))), mu, logvar


class RefConvVAE(nn.Module):
    """The classic convolutional VAE (Keras example) written plainly in PyTorch."""

    def __init__(self, latent=2):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(3136, 16), nn.ReLU())
        self.mu, self.logvar = nn.Linear(16, latent), nn.Linear(16, latent)
        self.dec = nn.Sequential(nn.Linear(latent, 3136), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
                                 nn.ConvTranspose2d(64, 64, 3, 2, 1, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(64, 32, 3, 2, 1, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(32, 1, 3, 1, 1))

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec(z), mu, logvar


def reference_epoch(model, loader, opt, flat):
    """One epoch of the examples' loop (loss = -ELBO averaged over the batch, like ours)."""
    model.train()
    for data, _ in loader:
        if flat:
            data = data.view(-1, 784)
        opt.zero_grad()
        logits, mu, logvar = model(data)  # both kinds of model return (logits, mu, logvar)
        rec = F.binary_cross_entropy_with_logits(logits.reshape(len(data), -1), data.reshape(len(data), -1),
                                                 reduction="sum")
        loss = (rec + kl_normal_std(mu, logvar).sum()) / len(data)
        loss.backward()
        opt.step()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_training(name, make_ours, make_ref, x, loader, flat, reps):
    ours_model, ref_model, mixed_model = make_ours(), make_ref(), make_ours()
    ref_opt = torch.optim.Adam(ref_model.parameters(), 1e-3)
    mixed_opt = torch.optim.Adam(mixed_model.parameters(), 1e-3)
    t = {"ours": [], "ref": [], "ref_loop_our_model": []}
    for rep in range(reps):
        t["ours"].append(timed(lambda: train_vae(ours_model, x, n_epochs=1, batch_size=BATCH, seed=rep,
                                                 progress=False)))
        t["ref"].append(timed(lambda: reference_epoch(ref_model, loader, ref_opt, flat)))
        t["ref_loop_our_model"].append(timed(lambda: reference_epoch(mixed_model, loader, mixed_opt, flat)))
    best = {k: min(v) for k, v in t.items()}
    print(f"\n{name} VAE, one epoch of {len(x)} images, batch {BATCH} (best of {reps}; all runs in brackets):")
    for k, label in (("ours", "train_vae, preloaded tensors"),
                     ("ref", "reference: DataLoader + ToTensor, plain model"),
                     ("ref_loop_our_model", "reference loop with our model")):
        runs = ", ".join(f"{v:.2f}" for v in t[k])
        print(f"  {label:<48s} {best[k]:7.2f} s  [{runs}]")
    print(f"  ratio ours / reference                           {best['ours'] / best['ref']:7.2f}x  (goal <= 0.4x)")
    print(f"  ratio ours / reference loop with our model       {best['ours'] / best['ref_loop_our_model']:7.2f}x"
          "  (data pipeline and loop only)")
    return ours_model, best


def bench_data_only(x, loader):
    """The data pipelines alone: one pass over the 8,000 images."""
    t_loader = timed(lambda: [None for _ in loader])
    gen = torch.Generator().manual_seed(0)

    def ours():
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            x[perm[i:i + BATCH]]
    t_ours = timed(ours)
    print(f"\nData pipeline alone, one pass: DataLoader + ToTensor {t_loader:.3f} s, "
          f"preloaded index batches {t_ours * 1000:.1f} ms ({t_loader / t_ours:.0f}x)")


def bench_iwae(name, model, x_test, ks):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        el = elbo(model, x_test, gen).elbo.item()
    print(f"\nIWAE estimate of log p(x), {name} VAE, {len(x_test)} test images "
          f"(nats per image; one-sample ELBO {el:.2f}):")
    print(f"  {'k':>6s} {'time (s)':>9s} {'log p(x) estimate':>18s} {'s.e. over images':>16s}")
    for k in ks:
        t0 = time.perf_counter()
        est = iwae_log_likelihood(model, x_test, k, generator=torch.Generator().manual_seed(k))
        dt = time.perf_counter() - t0
        print(f"  {k:>6d} {dt:9.2f} {est.mean().item():18.2f} {est.std().item() / math.sqrt(len(est)):16.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions per timing (best is reported)")
    ap.add_argument("--iwae-epochs", type=int, default=5, help="extra epochs of the MLP VAE before the IWAE part")
    ap.add_argument("--iwae-conv", action="store_true", help="also time IWAE with the conv VAE (k up to 100)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}")

    x, _ = load_mnist("train", binarize="threshold", flat=False)
    x_test, _ = load_mnist("test", binarize="threshold", flat=False, limit=1000)
    print(f"data: {mnist_split_info('train')}; binarized with the fixed threshold 0.5")
    images = (load_mnist("train", flat=False)[0][:, 0] * 255).round().to(torch.uint8)
    labels = torch.zeros(len(images), dtype=torch.int64)
    dataset = OfflineMNIST(images, labels, transforms.Compose([transforms.ToTensor(),
                                                               transforms.Lambda(lambda t: (t > 0.5).float())]))
    assert torch.equal(torch.stack([dataset[i][0] for i in range(50)]), x[:50])  # the very same data
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)

    bench_data_only(x, loader)
    mlp, _ = bench_training("MLP (784-512-2)", lambda: mlp_vae(), lambda: RefMLPVAE(), x.view(-1, 784), loader,
                            True, max(args.reps, 3))
    conv, _ = bench_training("Convolutional (32-64-16-2)", lambda: conv_vae(), lambda: RefConvVAE(), x, loader,
                             False, args.reps)
    print(f"\nload average now {os.getloadavg()[0]:.1f}")

    train_vae(mlp, x.view(-1, 784), n_epochs=args.iwae_epochs, progress=False)
    bench_iwae(f"MLP (after {max(args.reps, 3) + args.iwae_epochs} epochs)", mlp, x_test.view(-1, 784),
               (1, 10, 100, 1000))
    if args.iwae_conv:
        bench_iwae(f"convolutional (after {args.reps} epochs)", conv, x_test, (1, 10, 100))


if __name__ == "__main__":
    main()
