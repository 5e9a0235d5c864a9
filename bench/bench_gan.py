"""One GAN training epoch: the course's train_gan against a plain PyTorch loop of the same networks.

Both train the week-14 DCGAN (``helpers.nets.DCGANGenerator`` and ``DCGANDiscriminator``, the same
initial weights) for one epoch on the same MNIST images with the non-saturating loss and Adam
(lr 2e-4, betas (0.5, 0.999)), batches of 64:

* course: ``helpers.gan.train_gan``: the images are one preloaded tensor (batch, 1, 28, 28) in [0, 1],
  each batch a slice of a shuffled index; helpers.train.fit adds the progress bar (off here), the
  history and the NaN screening of every loss and gradient;
* plain: the usual tutorial loop: ``torchvision.datasets.MNIST`` with a per-sample ``ToTensor``
  transform (a PIL image converted per sample), a ``DataLoader`` (shuffle, batch 64, no worker
  processes: the laptop default that works everywhere), then the same discriminator and generator
  updates, written out with ``F.binary_cross_entropy_with_logits``.

It prints seconds per epoch and the ratio plain / course (above 1: the course's loop is faster), the
best of ``--repeats`` runs. The plain loop needs the MNIST files in ``<COURSE_DATA>/MNIST/raw``
(standard split); nothing is downloaded.

    python bench/bench_gan.py                  # 60,000 images, about 2-4 minutes on 2 cores
    python bench/bench_gan.py --n-train 10000  # quicker
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from bench_loop import best_of  # the sibling script (bench/ is on sys.path when this file runs)

from helpers.config import data_dir
from helpers.data import load_mnist
from helpers.gan import train_gan
from helpers.nets import DCGANDiscriminator, DCGANGenerator

BATCH, LR, BETAS = 64, 2e-4, (0.5, 0.999)


def torchvision_root():
    """A temporary folder with the four MNIST files unpacked, where torchvision's MNIST reads them
    (it wants the raw idx files, all four; the course keeps the .gz ones)."""
    import gzip
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="bench-gan-"))
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(data_dir() / "MNIST" / "raw" / f"{name}.gz") as src:
            (root / "MNIST" / "raw" / name).write_bytes(src.read())
    return root


def plain_epoch(generator, discriminator, root, n_train, seed):
    """torchvision dataset + per-sample ToTensor + DataLoader, then the same two updates per batch."""
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    subset = torch.utils.data.Subset(dataset, range(n_train))
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(subset, batch_size=BATCH, shuffle=True, generator=gen)
    opt_g = torch.optim.Adam(generator.parameters(), lr=LR, betas=BETAS)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=LR, betas=BETAS)
    generator.train()
    discriminator.train()
    for x, _ in loader:
        n = len(x)
        fake = generator(torch.randn(n, generator.latent_dim, generator=gen)).detach()
        real_logit, fake_logit = discriminator(x), discriminator(fake)
        loss_d = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                  + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        logit = discriminator(generator(torch.randn(n, generator.latent_dim, generator=gen)))
        loss_g = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))   # non-saturating
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=60000, help="training images (default: all 60,000)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    x, _ = load_mnist("train", flat=False, limit=args.n_train)          # (n, 1, 28, 28) grey levels in [0, 1]
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())   # the first Adam imports torch._dynamo (~2 s, once)
    torch.manual_seed(0)
    g0, d0 = DCGANGenerator(), DCGANDiscriminator()
    course = best_of(args.repeats, lambda: train_gan(copy.deepcopy(g0), copy.deepcopy(d0), x, n_epochs=1,
                                                     batch_size=BATCH, lr_g=LR, lr_d=LR, beta1=BETAS[0],
                                                     beta2=BETAS[1], seed=0, progress=False))
    root = torchvision_root()
    plain = best_of(args.repeats, lambda: plain_epoch(copy.deepcopy(g0), copy.deepcopy(d0), root, args.n_train, 0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats}; one epoch of "
          f"{args.n_train} images, DCGAN (latent {g0.latent_dim}), batches of {BATCH}")
    print(f"{'loop':62s} {'s/epoch':>8s}")
    print(f"{'course: helpers.gan.train_gan on preloaded tensors':62s} {course:8.2f}")
    print(f"{'plain: torchvision MNIST + ToTensor + DataLoader, same updates':62s} {plain:8.2f}")
    print(f"ratio plain / course: {plain / course:.2f} (above 1: the course's loop is faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
