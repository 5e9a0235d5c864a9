"""Exact log Z: enumerating only the smaller layer against enumerating every (x, h) pair.

Run:  python bench/bench_log_partition.py
Prints the time of both methods on the same RBM and their ratio, then the time
of BernoulliRBM.log_partition_exact for 784 visible units and 10-20 hidden units
(the largest exact checks of week 11).
"""
import time

import torch

from helpers.rbm import BernoulliRBM, binary_states


def brute_force_log_z(rbm):
    """Every (x, h) pair: 2**(M+N) energies, in chunks of visible states."""
    hs = binary_states(rbm.n_hidden, dtype=rbm.dtype)
    parts = []
    for start in range(0, 2**rbm.n_visible, 256):
        xs = binary_states(rbm.n_visible, start, min(start + 256, 2**rbm.n_visible), dtype=rbm.dtype)
        neg_e = (xs @ rbm.a)[:, None] + (hs @ rbm.b)[None, :] + xs @ rbm.W @ hs.T
        parts.append(torch.logsumexp(neg_e.flatten(), 0))
    return torch.logsumexp(torch.stack(parts), 0)


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    torch.manual_seed(0)
    rbm = BernoulliRBM(12, 10, seed=0, dtype=torch.float64)
    rbm.W = 0.5 * torch.randn(12, 10, dtype=torch.float64)
    t_brute, z_brute = timed(lambda: brute_force_log_z(rbm))
    t_exact, z_exact = timed(lambda: rbm.log_partition_exact())
    print(f"RBM 12 x 10 (float64): all 2^22 pairs {t_brute * 1e3:8.1f} ms, smaller layer only (2^10 states) "
          f"{t_exact * 1e3:6.2f} ms, ratio {t_brute / t_exact:7.0f}x, |difference| "
          f"{abs(z_brute - z_exact).item():.1e} nats")
    for n_hidden in (10, 15, 20):
        big = BernoulliRBM(784, n_hidden, seed=0)
        t, _ = timed(big.log_partition_exact, repeat=1)
        print(f"RBM 784 x {n_hidden} (float32, {torch.get_num_threads()} threads): log_partition_exact {t:6.2f} s")


if __name__ == "__main__":
    main()
