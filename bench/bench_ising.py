"""Ising Metropolis: the batched checkerboard sampler against a plain per-spin loop.

Run:  python bench/bench_ising.py

Compares, in one process and at the same temperature (T = 2.3, J = 1):

* ``helpers.ising.metropolis_sweeps`` on a batch of 512 lattices of 64 x 64
  spins (int8, four checkerboard sub-lattices, one uniform random number per
  spin update), with 1 torch thread and with the default number of threads;
* a plain per-spin Metropolis loop in numpy on one 64 x 64 lattice (the
  textbook double loop over sites: neighbour sum, energy change, accept),
  timed on a few sweeps only.

Prints both rates in spin updates per second, their ratio, and whether the
goal of 1e8 updates per second is met. Each rate is the best of a few
repetitions (the machine may be shared). Also prints the Wolff cluster
update's speed for reference.
"""
import math
import time

import numpy as np
import torch

from helpers import ising

T = 2.3
GOAL = 1e8


def plain_numpy_sweeps(s, T, n_sweeps, rng):
    """Textbook Metropolis: visit every site in order, flip with probability min(1, exp(-dE/T))."""
    L = s.shape[0]
    for _ in range(n_sweeps):
        for i in range(L):
            for j in range(L):
                h = s[(i + 1) % L, j] + s[i - 1, j] + s[i, (j + 1) % L] + s[i, j - 1]
                d_e = 2 * s[i, j] * h
                if d_e <= 0 or rng.random() < math.exp(-d_e / T):
                    s[i, j] = -s[i, j]
    return s


def best_rate(fn, n_updates, repeat):
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_updates / best


def main():
    default_threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    batch, L, n_sweeps = 512, 64, 20
    spins = ising.metropolis_sweeps(ising.random_spins(batch, L, gen), T, 5, gen)  # warm-up
    n_upd = batch * L * L * n_sweeps
    rates = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        rates[threads] = best_rate(lambda: ising.metropolis_sweeps(spins, T, n_sweeps, gen), n_upd, repeat=5)
    torch.set_num_threads(default_threads)

    rng = np.random.default_rng(0)
    lattice = rng.choice(np.array([-1, 1], dtype=np.int64), size=(L, L))
    n_loop = 3
    loop_rate = best_rate(lambda: plain_numpy_sweeps(lattice, T, n_loop, rng), L * L * n_loop, repeat=3)

    print(f"Ising Metropolis at T = {T} (spin updates per second, best of several runs; machine may be shared)")
    print(f"  plain per-spin loop in numpy, one {L}x{L} lattice, {n_loop} sweeps: {loop_rate:12.3e} /s")
    for threads, rate in rates.items():
        print(f"  metropolis_sweeps, {batch} lattices of {L}x{L}, {n_sweeps} sweeps, {threads} thread(s): "
              f"{rate:12.3e} /s  = {rate / loop_rate:7.0f}x the loop")
    if len(rates) > 1 and rates[default_threads] < rates[1]:
        print("  note: slower with more threads than with one; the cores are busy with other work "
              "(idle OpenMP threads spin-wait), so trust the 1-thread row")
    best = max(rates.values())
    print(f"  goal 1e8 updates/s: {'met' if best >= GOAL else 'NOT met'} ({best / GOAL:.2f}x the goal)")

    small = ising.wolff_updates(ising.metropolis_sweeps(ising.random_spins(8, 32, gen), ising.T_CRITICAL, 200, gen),
                                ising.T_CRITICAL, 20, gen)
    t0 = time.perf_counter()
    _, sizes = ising.wolff_updates(small, ising.T_CRITICAL, 50, gen, return_cluster_sizes=True)
    dt = time.perf_counter() - t0
    print(f"  for reference, Wolff at T_c on 8 lattices of 32x32: {sizes.numel() / dt:8.0f} clusters/s, "
          f"mean cluster {sizes.double().mean():.0f} spins, {sizes.sum().item() / dt:10.3e} spins flipped/s")


if __name__ == "__main__":
    main()
