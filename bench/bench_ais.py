"""AIS estimates of log Z against the exact value for a 784 x 20 RBM trained on MNIST.

Run:  COURSE_DATA=/path/to/data python bench/bench_ais.py      (about a minute on 2 cores)

What is compared, in one process:

* a 784 x 20 float32 RBM, visible bias started at the data's base rates, trained
  by PCD-1 (100 chains, lr 0.05, 5 epochs) on MNIST "train" binarized with a fixed
  threshold (pixel/255 > 0.5) -- the standard training set when present,
  otherwise the offline fallback split (printed);
* exact log Z by enumerating the 2**20 hidden states (``log_partition_exact``)
  against ``ais_log_partition`` with 100 runs and 1,000 / 3,000 / 10,000 linearly
  spaced inverse temperatures from the base-rate model of the training data
  (and once from the uniform base model, to show what the base model buys);
  for each: |AIS - exact| in nats, the AIS standard error (delta method), the
  effective sample size and the time;
* the resulting mean log-likelihood of the MNIST "test" images (same
  binarization), nats per image, with exact and with AIS log Z.

Goal: |AIS - exact| < 0.2 nats at 10,000 betas. Timings move when the machine
is shared with other jobs.
"""
import time
import warnings

import torch

from helpers.ais import ais_log_partition, log_likelihood
from helpers.data import load_mnist, mnist_split_info
from helpers.rbm import BernoulliRBM, base_rate_visible_bias, train_rbm


def main():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_train, _ = load_mnist("train", binarize="threshold")
        x_test, _ = load_mnist("test", binarize="threshold")
    print(f"train: {mnist_split_info('train')}, {len(x_train)} images")
    print(f"test:  {mnist_split_info('test')}, {len(x_test)} images")
    print("binarization: fixed threshold, pixel/255 > 0.5; log-likelihoods in nats per image\n")

    rbm = BernoulliRBM(784, 20, seed=0)
    rbm.a = base_rate_visible_bias(x_train)
    t0 = time.perf_counter()
    hist = train_rbm(rbm, x_train, method="pcd", k=1, lr=0.05, n_epochs=5, n_chains=100, seed=0, progress=False)
    print(f"training: PCD-1, 5 epochs, {time.perf_counter() - t0:.1f} s; pseudo-log-likelihood "
          f"{hist['pseudo_log_likelihood'][-1]:.1f} nats per image (not the likelihood)")

    t0 = time.perf_counter()
    exact = rbm.log_partition_exact().item()
    t_exact = time.perf_counter() - t0
    print(f"exact log Z = {exact:.3f} nats ({t_exact:.1f} s, 2^20 hidden states)\n")

    print(f"{'base model':>10} | {'betas':>6} | {'runs':>4} | {'AIS log Z':>10} | {'|AIS - exact|':>13} | "
          f"{'stderr':>7} | {'ESS':>5} | {'time':>6}")
    results = {}
    for base, n_betas in [("uniform", 1000), ("data", 1000), ("data", 3000), ("data", 10000)]:
        t0 = time.perf_counter()
        res = ais_log_partition(rbm, n_runs=100, n_betas=n_betas, data=x_train if base == "data" else None,
                                generator=torch.Generator().manual_seed(0), progress=False)
        dt = time.perf_counter() - t0
        results[(base, n_betas)] = res
        print(f"{base:>10} | {n_betas:>6} | {100:>4} | {res.log_z:10.3f} | {abs(res.log_z - exact):9.3f} nats | "
              f"{res.stderr:7.3f} | {res.ess:5.1f} | {dt:5.1f}s")

    best = results[("data", 10000)]
    ll_exact = log_likelihood(rbm, x_test, exact).mean
    ll_ais = log_likelihood(rbm, x_test, best).mean
    ll_train = log_likelihood(rbm, x_train, exact).mean
    print(f"\ntest log-likelihood: {ll_exact:.2f} nats per image with exact log Z, {ll_ais:.2f} with AIS "
          f"(10,000 betas, +/- {best.stderr:.2f} from log Z); train: {ll_train:.2f}")
    print(f"goal |AIS - exact| < 0.2 nats at 10,000 betas: {abs(best.log_z - exact):.3f} nats "
          f"({'met' if abs(best.log_z - exact) < 0.2 else 'NOT met'})")


if __name__ == "__main__":
    main()
