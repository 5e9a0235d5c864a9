"""What evaluating in nats costs: IWAE with k = 5000 on the 10,000 MNIST test images and AIS on a 784 x 500 RBM,
each against the naive loop, measured side by side in this process.

Run (from the repository root):

    COURSE_DATA=/path/to/data python bench/bench_eval.py [--threads 1] [--quick] [--full-iwae]

1. IWAE (``helpers.vae.iwae_log_likelihood``) on the week-12 MLP VAE (784-512-10), trained for one epoch on
   10,000 images here (the cost does not depend on how well it is trained; the estimates are printed only to
   show that the three ways agree):

   * batched: ``iwae_log_likelihood(k=5000)`` (32 importance samples x 64 images per decoder call) on
     ``--n-iwae`` test images (default 200), extrapolated linearly to all 10,000 unless ``--full-iwae``;
   * one importance sample at a time (``batch_k=1``): the same function, 64 images per decoder call;
   * naive: a Python loop over images and over the k samples, one decoder call per (image, sample), as the
     formula reads, on ``--n-naive`` images (default 2), extrapolated.

2. AIS (``helpers.ais.ais_log_partition``) on a 784 x 500 RBM (random weights W ~ N(0, 0.05^2), base rates of
   the MNIST training images as visible bias: the cost does not depend on the weights), 100 runs, ``--n-betas``
   inverse temperatures (default 1,000; the course uses 10,000, so multiply by 10):

   * batched: all 100 runs advance together (one (100, 784) x (784, 500) product per step);
   * naive: a Python loop over the runs, ``ais_log_partition(n_runs=1)`` each.

   And RAISE (``helpers.ais.raise_log_likelihood``), one chain per test image, on ``--n-raise`` images
   (default 500) with the same schedule, extrapolated to 10,000 test images.

Every figure is measured in this run; extrapolated ones are labelled as such. Timings move when the machine is
shared (run with --threads 1 on a busy machine).
"""
import argparse
import math
import time

import torch

from helpers.ais import ais_log_partition, raise_log_likelihood
from helpers.data import load_mnist, mnist_split_info
from helpers.rbm import BernoulliRBM, base_rate_visible_bias
from helpers.vae import iwae_log_likelihood, log_importance_weights, mlp_vae, train_vae

N_TEST = 10000


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def sem(t):
    return t.std().item() / math.sqrt(len(t)) if len(t) > 1 else float("nan")


@torch.no_grad()
def naive_iwae(model, x, k, seed):
    """log (1/k) sum_i w_i, one image and one importance sample at a time (the formula as a loop)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for xi in x:
        mu, logvar = model.encoder(xi[None])
        log_w = []
        for _ in range(k):
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            log_w.append(log_importance_weights(model, xi[None], z[None], mu, logvar)[0, 0])
        out.append(torch.logsumexp(torch.stack(log_w), 0) - math.log(k))
    return torch.stack(out)


def bench_iwae(args):
    x_train, _ = load_mnist("train", limit=10000)
    x_test, _ = load_mnist("test", binarize="sample", seed=0)
    model = mlp_vae(latent_dim=10, seed=0)
    _, t_train = timed(lambda: train_vae(model, x_train, n_epochs=1, seed=0, dynamic_binarization=True,
                                         progress=False))
    k = args.k
    print(f"\n=== IWAE, k = {k}: MLP VAE 784-512-10 (1 epoch on {len(x_train)} images, {t_train:.1f} s) ===")
    n_batched = N_TEST if args.full_iwae else args.n_iwae
    est, t_batched = timed(lambda: iwae_log_likelihood(model, x_test[:n_batched], k=k,
                                                       generator=torch.Generator().manual_seed(1)))
    per_image = t_batched / n_batched
    n_one = max(1, min(args.n_iwae // 4, 50))
    est_one, t_one = timed(lambda: iwae_log_likelihood(model, x_test[:n_one], k=k, batch_k=1,
                                                       generator=torch.Generator().manual_seed(1)))
    est_naive, t_naive = timed(lambda: naive_iwae(model, x_test[:args.n_naive], k, seed=1))
    full = "measured" if n_batched == N_TEST else f"extrapolated from {n_batched} images"
    print(f"  batched (32 samples x 64 images per call): {n_batched} images in {t_batched:.1f} s, "
          f"{per_image * 1e3:.1f} ms per image; all {N_TEST} test images: {per_image * N_TEST:.0f} s ({full})")
    print(f"  one sample at a time (batch_k=1):         {n_one} images in {t_one:.1f} s, "
          f"{t_one / n_one * 1e3:.1f} ms per image; {N_TEST} images: {t_one / n_one * N_TEST:.0f} s (extrapolated)")
    print(f"  naive loop (image by image, sample by sample): {args.n_naive} image(s) in {t_naive:.1f} s, "
          f"{t_naive / args.n_naive:.2f} s per image; {N_TEST} images: {t_naive / args.n_naive * N_TEST / 3600:.1f} h "
          "(extrapolated)")
    print(f"  ratios per image: naive / batched = {t_naive / args.n_naive / per_image:.0f}x, "
          f"one-at-a-time / batched = {t_one / n_one / per_image:.1f}x")
    m = min(n_one, args.n_naive)
    print(f"  the same numbers (first {m} images, different noise): batched {est[:m].mean():.2f}, "
          f"batch_k=1 {est_one[:m].mean():.2f}, naive {est_naive[:m].mean():.2f} nats per image; "
          f"batched L_{k} on {n_batched} images {est.mean():.2f} +- {sem(est):.2f}")


def bench_ais(args):
    x_train, _ = load_mnist("train", binarize="sample", seed=0, limit=10000)
    x_test, _ = load_mnist("test", binarize="sample", seed=1)
    gen = torch.Generator().manual_seed(0)
    rbm = BernoulliRBM(784, 500, seed=0)
    rbm.W = 0.05 * torch.randn(784, 500, generator=gen)
    a_base = base_rate_visible_bias(x_train)
    rbm.a = a_base.clone()
    nb, n_runs = args.n_betas, 100
    print(f"\n=== AIS on a 784 x 500 RBM, {n_runs} runs x {nb} inverse temperatures ===")
    batched, t_batched = timed(lambda: ais_log_partition(rbm, n_runs=n_runs, n_betas=nb, base_visible_bias=a_base,
                                                         generator=torch.Generator().manual_seed(1), progress=False))

    def loop():
        return [ais_log_partition(rbm, n_runs=1, n_betas=nb, base_visible_bias=a_base, progress=False,
                                  generator=torch.Generator().manual_seed(100 + r)).log_weights[0]
                for r in range(n_runs)]

    log_w, t_loop = timed(loop)
    log_w = torch.stack(log_w)
    looped = batched.log_z_base + torch.logsumexp(log_w, 0).item() - math.log(n_runs)
    print(f"  batched (all runs together): {t_batched:.1f} s; with 10,000 betas about {t_batched * 10000 / nb:.0f} s "
          "(extrapolated)")
    print(f"  Python loop over the runs:   {t_loop:.1f} s; with 10,000 betas about {t_loop * 10000 / nb:.0f} s "
          "(extrapolated)")
    print(f"  ratio loop / batched = {t_loop / t_batched:.1f}x; log Z {batched.log_z:.2f} +- {batched.stderr:.2f} "
          f"(batched) and {looped:.2f} (loop), nats")
    n_raise = args.n_raise
    _, t_raise = timed(lambda: raise_log_likelihood(rbm, x_test[:n_raise], n_betas=nb, base_visible_bias=a_base,
                                                    generator=torch.Generator().manual_seed(2), progress=False))
    print(f"  RAISE, one chain per test image: {n_raise} images in {t_raise:.1f} s; all {N_TEST} test images "
          f"about {t_raise * N_TEST / n_raise:.0f} s with {nb} betas, {t_raise * N_TEST / n_raise * 10000 / nb:.0f} s "
          "with 10,000 (extrapolated)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="smoke test: k=500, 20 images, 200 betas")
    ap.add_argument("--k", type=int, default=None, help="importance samples (default 5000, as Burda et al.)")
    ap.add_argument("--n-iwae", type=int, default=None, help="test images for the batched IWAE (default 200)")
    ap.add_argument("--full-iwae", action="store_true", help="batched IWAE on all 10,000 test images (~15 min)")
    ap.add_argument("--n-naive", type=int, default=2, help="test images for the naive IWAE loop (default 2)")
    ap.add_argument("--n-betas", type=int, default=None, help="AIS inverse temperatures (default 1000)")
    ap.add_argument("--n-raise", type=int, default=None, help="test images for RAISE (default 500)")
    args = ap.parse_args()
    q = args.quick
    args.k = args.k or (500 if q else 5000)
    args.n_iwae = args.n_iwae or (20 if q else 200)
    args.n_betas = args.n_betas or (200 if q else 1000)
    args.n_raise = args.n_raise or (50 if q else 500)
    args.n_naive = 1 if q else args.n_naive
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; test images: {mnist_split_info('test')}")
    t0 = time.perf_counter()
    bench_iwae(args)
    bench_ais(args)
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
