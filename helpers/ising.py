"""The 2-D Ising model: fast samplers, observables, exact small-lattice results, Onsager.

Spins ``s_i = +-1`` on an L x L square lattice with periodic boundaries,
coupling J = 1, no field, k_B = 1, so temperatures are in units of J/k_B:

    E(s) = - sum_<ij> s_i s_j,        p(s) = exp(-E(s) / T) / Z,

the sum running over nearest-neighbour pairs, each counted once (each site with
its right and its lower neighbour; for L = 2 the periodic wrap makes the left
and right neighbours the same site, which then interacts twice). Lattices are
tensors of shape (batch, L, L) (int8 is the most compact; any integer or float
dtype holding +-1 works). The ordered phase ends at Onsager's
:data:`T_CRITICAL` ~= 2.269.

Samplers (every random thing takes a ``torch.Generator``):

* :func:`metropolis_sweeps`: single-spin Metropolis, vectorized over a batch
  of lattices with the checkerboard decomposition (L even). Fast (well above
  1e8 spin updates per second on two CPU cores for large batches), but it
  mixes slowly near T_CRITICAL (critical slowing down).
* :func:`wolff_updates`: Wolff cluster updates, which mix fast near T_CRITICAL.

Per-spin observables (:func:`energy_per_spin`, :func:`abs_magnetization`),
fluctuation formulas (:func:`specific_heat`, :func:`susceptibility`), the
spin-spin correlation (:func:`spin_correlation`) and all of them with error
bars for samples from any source, Monte Carlo or a generative model
(:func:`sample_observables`); exact results by enumeration for L <= 4
(:func:`exact_observables`; :func:`all_lattices`, :func:`exact_log_prob` and
i.i.d. samples :func:`exact_samples`), Onsager's infinite-lattice results
(:func:`onsager_energy`, :func:`onsager_magnetization`), and a seeded, cached
data set generator (:func:`ising_dataset`). For generative models of lattices:
:func:`ordered_state_fractions` (how often each ordered state appears, the
physical measure of mode collapse); a GAN generator of +-1 lattices is
:class:`helpers.nets.SpinGenerator`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import checkpoint as checkpoint_io
from ._validate import check_count as _check_count, check_generator as _check_generator, check_real as _check_real

__all__ = [
    "T_CRITICAL", "random_spins", "metropolis_sweeps", "wolff_updates",
    "energy_per_spin", "magnetization", "abs_magnetization", "specific_heat", "susceptibility",
    "exact_observables", "MAX_EXACT_L", "elliptic_k", "onsager_energy", "onsager_magnetization",
    "IsingSamples", "ising_dataset", "default_cache_dir",
    "spin_correlation", "sample_observables", "all_lattices", "exact_log_prob", "exact_samples",
    "ordered_state_fractions",
]

#: Onsager's critical temperature 2 / ln(1 + sqrt 2) = 2.26918531... (units of J / k_B).
T_CRITICAL = 2.0 / math.log(1.0 + math.sqrt(2.0))

#: :func:`exact_observables` enumerates 2**(L*L) states; L = 4 is 65,536 of them, L = 5 would be 3.4e7.
MAX_EXACT_L = 4


# ============================================================================ input checks


def _check_lattices(spins, need_even=False):
    """Validate (batch, L, L) lattices of +-1; return (batch, L)."""
    if not isinstance(spins, torch.Tensor):
        raise TypeError(f"spins must be a torch.Tensor of shape (batch, L, L), got {type(spins).__name__}")
    if spins.dim() != 3 or spins.shape[1] != spins.shape[2]:
        hint = " (use spins[None] for a single lattice)" if spins.dim() == 2 else ""
        raise ValueError(f"spins must have shape (batch, L, L), got {tuple(spins.shape)}{hint}")
    batch, L = spins.shape[0], spins.shape[1]
    if batch == 0 or L < 2:
        raise ValueError(f"need at least one lattice with L >= 2, got shape {tuple(spins.shape)}")
    if need_even and L % 2:
        raise ValueError(f"the checkerboard update needs an even L, got L = {L}; use L = {L - 1} or {L + 1} "
                         "(or wolff_updates, which takes any L)")
    bad = (spins != 1) & (spins != -1)
    if bad.any():
        raise ValueError(f"spins must be +1 or -1, but {int(bad.sum())} entries are not, e.g. "
                         f"{spins[bad].flatten()[0].item()!r}; map 0/1 data with 2 * x - 1")
    return batch, L


def _check_temperatures(T, batch):
    """T as a float64 tensor of shape (batch,): a scalar for every lattice or one value per lattice."""
    t = torch.as_tensor(T, dtype=torch.float64).flatten() if not isinstance(T, torch.Tensor) \
        else T.detach().to("cpu", torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    elif t.numel() != batch:
        raise ValueError(f"T must be one temperature or one per lattice ({batch}), got {t.numel()} values")
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"temperatures must be positive and finite (units of J/k_B), got "
                         f"{t[~(torch.isfinite(t) & (t > 0))][0].item()!r}; T -> 0 is the ground state, "
                         "use a small positive T such as 0.1")
    return t


def random_spins(n_lattices: int, L: int, generator: torch.Generator | None = None, dtype=torch.int8):
    """Independent uniformly random +-1 lattices (infinite temperature), shape (n_lattices, L, L)."""
    n_lattices, L = _check_count("n_lattices", n_lattices), _check_count("L", L, 2)
    bits = torch.randint(0, 2, (n_lattices, L, L), generator=_check_generator(generator), dtype=torch.int8)
    return (2 * bits - 1).to(dtype)


# ============================================================================ checkerboard Metropolis
def _pair_sum(out, X, shift, dim):
    """out[r] = X[r] + X[r - shift] along ``dim`` (periodic, shift = +-1), written in place."""
    n = X.shape[dim]
    if n == 1:
        torch.add(X, X, out=out)
        return
    if shift == 1:
        torch.add(X.narrow(dim, 1, n - 1), X.narrow(dim, 0, n - 1), out=out.narrow(dim, 1, n - 1))
        torch.add(X.narrow(dim, 0, 1), X.narrow(dim, n - 1, 1), out=out.narrow(dim, 0, 1))
    else:
        torch.add(X.narrow(dim, 0, n - 1), X.narrow(dim, 1, n - 1), out=out.narrow(dim, 0, n - 1))
        torch.add(X.narrow(dim, n - 1, 1), X.narrow(dim, 0, 1), out=out.narrow(dim, n - 1, 1))


def metropolis_sweeps(spins: torch.Tensor, T, n_sweeps: int, generator: torch.Generator | None = None):
    """Single-spin Metropolis sweeps over a batch of lattices, checkerboard order.

    The lattice splits into two colours (black: i + j even); all spins of one
    colour have only neighbours of the other colour, so they can be updated at
    once, exactly as if one after the other. A sweep updates every spin once:
    spin ``s`` with local field ``h`` (sum of its 4 neighbours) flips with
    probability ``min(1, exp(-2 s h / T))``, using one uniform random number
    per spin. Because ``s h`` takes only the values -4, -2, 0, 2, 4, only the
    two acceptance probabilities ``exp(-4/T)`` and ``exp(-8/T)`` are needed.

    Ergodicity caveat: a move with ``s h = 0`` (no energy change) is always
    accepted, so a lattice in which every spin has ``s h = 0`` (e.g. alternating
    columns) flips whole sublattices deterministically and cycles forever at
    any temperature (36 of the 65,536 4 x 4 states). No chain can enter such a
    cycle from another state, but one can *start* in it: start small lattices
    ordered, or interleave :func:`wolff_updates`.

    Implementation (why it is fast): the lattice is stored as four int8
    sub-lattices, ``(i % 2, j % 2)``, each (batch, L/2, L/2); the neighbour sums
    of one sub-lattice come from shifted views of two others, written into
    preallocated buffers, and flips are done in place.

    Parameters
    ----------
    spins : Tensor, shape (batch, L, L)
        +-1 values, L even. Not modified.
    T : float or sequence/Tensor of shape (batch,)
        Temperature(s) in units of J/k_B, > 0: one for all lattices or one per lattice.
    n_sweeps : int
        Number of sweeps, >= 1.
    generator : torch.Generator, optional

    Returns
    -------
    Tensor, shape (batch, L, L)
        The new lattices, same dtype as ``spins``.
    """
    batch, L = _check_lattices(spins, need_even=True)
    temps = _check_temperatures(T, batch)
    n_sweeps = _check_count("n_sweeps", n_sweeps)
    generator = _check_generator(generator)
    half = L // 2
    # s[p, q, b, r, c] = spins[b, 2r + p, 2c + q]; A, B, C, D are contiguous views into s.
    s = spins.to(torch.int8).reshape(batch, half, 2, half, 2).permute(2, 4, 0, 1, 3).contiguous()
    A, B, C, D = s[0, 0], s[0, 1], s[1, 0], s[1, 1]
    # acceptance for s*h = 2 and 4 (energy change 4 and 8); s*h <= 0 always flips
    beta = (1.0 / temps).view(batch, 1, 1)
    p2, p4 = (torch.exp(-de * beta).to(device=A.device, dtype=torch.float32) for de in (4.0, 8.0))
    field = torch.empty_like(A)
    other = torch.empty_like(A)
    u = torch.empty(A.shape, dtype=torch.float32, device=A.device)
    below2 = torch.empty(A.shape, dtype=torch.bool, device=A.device)
    below4 = torch.empty_like(below2)

    def update(X, P, shift_p, Q, shift_q):
        # local field: P[r] + P[r - shift_p] (rows) + Q[c] + Q[c - shift_q] (columns)
        _pair_sum(field, P, shift_p, 1)
        _pair_sum(other, Q, shift_q, 2)
        field.add_(other).mul_(X)                       # s * h, in {-4, -2, 0, 2, 4}
        u.uniform_(generator=generator)
        torch.lt(u, p2, out=below2)
        torch.lt(u, p4, out=below4)
        # largest allowed s*h: 4 if u < exp(-8/T), 2 if u < exp(-4/T), else 0
        torch.add(below2.view(torch.int8), below4.view(torch.int8), out=other).mul_(2)
        torch.le(field, other, out=below2)              # flip?
        # +1 and -1 in int8 are 0x01 and 0xFF: XOR with 0xFE (= -2) flips the sign
        torch.mul(below2.view(torch.int8), -2, out=other)
        X.bitwise_xor_(other)

    # Neighbours (derived from s[p, q, b, r, c] = spins[b, 2r + p, 2c + q]):
    #   A[r, c]: C[r-1, c], C[r, c] and B[r, c-1], B[r, c]
    #   D[r, c]: B[r, c], B[r+1, c] and C[r, c], C[r, c+1]
    #   B[r, c]: D[r-1, c], D[r, c] and A[r, c], A[r, c+1]
    #   C[r, c]: A[r, c], A[r+1, c] and D[r, c-1], D[r, c]
    for _ in range(n_sweeps):
        update(A, C, 1, B, 1)     # black
        update(D, B, -1, C, -1)   # black
        update(B, D, 1, A, -1)    # white
        update(C, A, -1, D, 1)    # white
    out = s.permute(2, 3, 0, 4, 1).reshape(batch, L, L)
    return out.to(spins.dtype)


# ============================================================================ Wolff cluster updates
@functools.lru_cache(maxsize=16)
def _neighbours(L):
    """For each site i = row * L + col, its four neighbours (up, down, left, right), periodic."""
    return tuple(
        (((r - 1) % L) * L + c, ((r + 1) % L) * L + c, r * L + (c - 1) % L, r * L + (c + 1) % L)
        for r in range(L) for c in range(L)
    )


def _wolff_lattice(s, nbrs, p_add, n_updates, rng, sizes):
    """Wolff updates of one lattice ``s`` (a flat Python list of +-1), in place.

    The cluster grows from a random seed site by a depth-first stack: a
    neighbour aligned with the seed's original spin joins with probability
    ``p_add``, each bond tested once. Spins are flipped as they join, so
    "already in the cluster" is simply "no longer equal to s0".
    """
    rand = rng.random
    n_sites = len(s)
    for _ in range(n_updates):
        seed = int(rand() * n_sites)
        s0 = s[seed]
        s[seed] = -s0
        stack, size = [seed], 1
        while stack:
            for j in nbrs[stack.pop()]:
                if s[j] == s0 and rand() < p_add:
                    s[j] = -s0
                    stack.append(j)
                    size += 1
        sizes.append(size)


def wolff_updates(spins: torch.Tensor, T, n_updates: int, generator: torch.Generator | None = None,
                  return_cluster_sizes: bool = False):
    """Wolff single-cluster updates (Wolff 1989) for each lattice of a batch.

    One update picks a uniformly random seed site, grows a cluster by adding
    each aligned nearest neighbour with probability ``p_add = 1 - exp(-2/T)``
    (each bond tested once) and flips the whole cluster; the move is always
    accepted and satisfies detailed balance. Near T_CRITICAL clusters are
    large and decorrelate the lattice in a few updates; at high T they are
    small (combine with :func:`metropolis_sweeps` there).

    Plain Python per lattice (a stack-based cluster growth): correctness and
    clarity over speed, roughly 1 microsecond per spin flipped.

    Parameters
    ----------
    spins : Tensor, shape (batch, L, L)
        +-1 values, any L >= 2. Not modified.
    T : float or sequence/Tensor of shape (batch,)
        Temperature(s) in units of J/k_B, > 0.
    n_updates : int
        Cluster updates per lattice, >= 1.
    generator : torch.Generator, optional
        Seeds the Python random generator used for the cluster growth.
    return_cluster_sizes : bool
        Also return the cluster sizes, shape (batch, n_updates), int64.

    Returns
    -------
    Tensor, shape (batch, L, L), same dtype as ``spins`` (and the sizes if asked).
    """
    batch, L = _check_lattices(spins)
    temps = _check_temperatures(T, batch)
    n_updates = _check_count("n_updates", n_updates)
    generator = _check_generator(generator)
    rng = random.Random(int(torch.randint(0, 2**62, (), generator=generator)))
    p_add = (-torch.expm1(-2.0 / temps)).tolist()
    nbrs = _neighbours(L)
    flat = spins.detach().to("cpu", torch.int8).reshape(batch, L * L).tolist()
    sizes = []
    for b in range(batch):
        _wolff_lattice(flat[b], nbrs, p_add[b], n_updates, rng, sizes)
    out = torch.tensor(flat, dtype=torch.int8).reshape(batch, L, L).to(device=spins.device, dtype=spins.dtype)
    if return_cluster_sizes:
        return out, torch.tensor(sizes, dtype=torch.int64).reshape(batch, n_updates)
    return out


# ============================================================================ observables
def _check_any_lattices(spins):
    if not isinstance(spins, torch.Tensor):
        spins = torch.as_tensor(np.asarray(spins))
    if spins.dim() < 2 or spins.shape[-1] != spins.shape[-2] or spins.shape[-1] < 2:
        raise ValueError(f"spins must have shape (..., L, L) with L >= 2, got {tuple(spins.shape)}")
    return spins.to(torch.float64)


def energy_per_spin(spins) -> torch.Tensor:
    """Energy per spin e = E / N = -(1/N) sum_i s_i (s_right(i) + s_down(i)), in units of J.

    Parameters
    ----------
    spins : Tensor, shape (..., L, L)
        +-1 lattices (any leading dimensions, e.g. (batch, L, L)).

    Returns
    -------
    Tensor, shape (...), float64. Ground state: -2.
    """
    s = _check_any_lattices(spins)
    bonds = s * (s.roll(-1, dims=-1) + s.roll(-1, dims=-2))
    return -bonds.sum(dim=(-1, -2)) / (s.shape[-1] * s.shape[-2])


def magnetization(spins) -> torch.Tensor:
    """Magnetization per spin m = (1/N) sum_i s_i; spins (..., L, L) -> (...), float64."""
    s = _check_any_lattices(spins)
    return s.mean(dim=(-1, -2))


def abs_magnetization(spins) -> torch.Tensor:
    """Absolute magnetization per spin |m| = |sum_i s_i| / N; spins (..., L, L) -> (...), float64.

    On a finite lattice <m> = 0 by symmetry at every T, so |m| is the order
    parameter that approaches Onsager's spontaneous magnetization.
    """
    return magnetization(spins).abs()


def _samples_and_temperature(spins, T):
    s = _check_any_lattices(spins)
    if s.dim() < 3 or s.shape[-3] < 2:
        raise ValueError(f"need samples of shape (..., n_samples, L, L) with n_samples >= 2, got {tuple(s.shape)}")
    t = torch.as_tensor(T, dtype=torch.float64)
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"T must be positive and finite, got {T!r}")
    return s, t, s.shape[-1] * s.shape[-2]


def specific_heat(spins, T) -> torch.Tensor:
    """Specific heat per spin from equilibrium samples at temperature T.

    C = N (<e^2> - <e>^2) / T^2 = Var(E) / (N T^2), with e the energy per spin,
    N = L^2 and <.> the average over samples (k_B = 1).

    Parameters
    ----------
    spins : Tensor, shape (..., n_samples, L, L)
        Samples at one temperature (per leading index).
    T : float or Tensor broadcastable to shape (...)

    Returns
    -------
    Tensor, shape (...), float64.
    """
    s, t, n = _samples_and_temperature(spins, T)
    e = energy_per_spin(s)
    return n * e.var(dim=-1, unbiased=False) / t**2


def susceptibility(spins, T) -> torch.Tensor:
    """Magnetic susceptibility per spin from equilibrium samples at temperature T.

    chi = N (<m^2> - <|m|>^2) / T, with m the magnetization per spin and
    N = L^2. This finite-lattice convention uses |m|: since <m> = 0 on a finite
    lattice, N <m^2> / T would grow like N below T_CRITICAL instead of
    measuring fluctuations about the ordered state.

    Parameters
    ----------
    spins : Tensor, shape (..., n_samples, L, L)
    T : float or Tensor broadcastable to shape (...)

    Returns
    -------
    Tensor, shape (...), float64.
    """
    s, t, n = _samples_and_temperature(spins, T)
    m = magnetization(s)
    return n * ((m**2).mean(dim=-1) - m.abs().mean(dim=-1) ** 2) / t


def spin_correlation(spins, r_max: int | None = None) -> torch.Tensor:
    """Spin-spin correlation G(r) = <s_i s_{i+r}> of each lattice, for r = 0 ... r_max lattice spacings.

    Averaged over the N = L^2 sites i and over both lattice axes (``i + r`` is
    the site r steps to the right or r steps down, periodic), lattice by lattice:

        G(r) = 1/(2N) sum_i s_i (s_{i + r x} + s_{i + r y}).

    For +-1 spins G(0) = 1 and the nearest-neighbour value is the energy,
    e = -2 G(1) (:func:`energy_per_spin`; every site owns two bonds). On the
    periodic lattice G(r) = G(L - r), hence ``r_max <= L // 2``. Like
    :func:`energy_per_spin` it takes any real values, e.g. a generative model's
    conditional means <s_i | z>: for conditionally independent spins G(r >= 1)
    is then <s_i s_{i+r} | z>, while G(0) is the mean square, not 1.
    Average over a sample with ``.mean(0)``; error bars: :func:`sample_observables`.

    Parameters
    ----------
    spins : Tensor, shape (..., L, L)
    r_max : int, optional
        Largest distance, ``0 <= r_max <= L // 2`` (default ``L // 2``).

    Returns
    -------
    Tensor, shape (..., r_max + 1), float64.
    """
    s = _check_any_lattices(spins)
    L = s.shape[-1]
    r_max = L // 2 if r_max is None else _check_count("r_max", r_max, 0)
    if r_max > L // 2:
        raise ValueError(f"r_max must be at most L // 2 = {L // 2} on the periodic {L} x {L} lattice "
                         f"(G(r) = G(L - r) repeats beyond it), got {r_max}")
    return torch.stack([(s * (s.roll(-r, -1) + s.roll(-r, -2))).mean((-1, -2)) / 2 for r in range(r_max + 1)], -1)


def _check_samples(spins):
    """+-1 samples as float64 of shape (groups, per_group, L, L), from (n, L, L) or (groups, per_group, L, L)."""
    if not isinstance(spins, torch.Tensor):
        raise TypeError(f"spins must be a torch.Tensor of shape (n_samples, L, L) or (n_groups, n_per_group, L, L), "
                        f"got {type(spins).__name__}")
    if spins.dim() not in (3, 4) or spins.shape[-1] != spins.shape[-2] or spins.shape[-1] < 2:
        raise ValueError(f"spins must have shape (n_samples, L, L) (independent samples) or (n_groups, "
                         f"n_per_group, L, L) (independent groups, e.g. chains) with L >= 2, got {tuple(spins.shape)}")
    s = spins[:, None] if spins.dim() == 3 else spins
    if s.shape[0] < 2 or s.shape[1] < 1:
        raise ValueError(f"need at least 2 independent samples or groups for an error bar, got shape "
                         f"{tuple(spins.shape)}")
    bad = (s != 1) & (s != -1)
    if bad.any():
        raise ValueError(f"spins must be +1 or -1, but {int(bad.sum())} entries are not, e.g. "
                         f"{s[bad].flatten()[0].item()!r}; map 0/1 data with 2 * x - 1")
    return s.to(torch.float64)


def sample_observables(spins, T, *, r_max: int | None = None, n_boot: int = 200, seed: int = 0) -> dict:
    """Energy, |m|, specific heat, susceptibility and G(r) of samples, each with a bootstrap error bar.

    The samples may come from anywhere (Monte Carlo, an RBM, a VAE); only their
    independence structure matters for the error bars. Independent samples are
    passed as (n_samples, L, L); correlated ones as (n_groups, n_per_group, L, L)
    with independent groups (e.g. one group per Markov chain, its consecutive
    states correlated). The error is the standard deviation over ``n_boot``
    bootstrap resamples of whole groups (single samples for a 3-D input), so
    correlations within a group are accounted for. Definitions (per spin, N = L^2):

    * ``energy``: <e> (:func:`energy_per_spin`), units of J;
    * ``abs_magnetization``: <|m|>;
    * ``specific_heat``: N (<e^2> - <e>^2) / T^2 (:func:`specific_heat`);
    * ``susceptibility``: N (<m^2> - <|m|>^2) / T (:func:`susceptibility`);
    * ``correlation``: G(r), r = 0 ... r_max (:func:`spin_correlation`).

    The values equal those functions applied to all samples pooled; the keys are
    those of :func:`exact_observables`, for direct comparison.

    Parameters
    ----------
    spins : Tensor, shape (n_samples, L, L) or (n_groups, n_per_group, L, L)
        +-1 values (any dtype); at least 2 samples or groups.
    T : float
        Temperature of the samples (units of J/k_B, > 0), used by C and chi.
    r_max : int, optional
        Largest distance of G(r) (default L // 2).
    n_boot : int
        Bootstrap resamples, >= 2.
    seed : int
        Seed of the resampling (a ``torch.Generator``), >= 0.

    Returns
    -------
    dict
        ``energy``, ``abs_magnetization``, ``specific_heat``, ``susceptibility``:
        (value, error) as floats; ``correlation``: (values, errors), float64
        tensors of shape (r_max + 1,).
    """
    s = _check_samples(spins)
    T = _check_real("T", T, 0.0, low_ok=False)
    n_boot, seed = _check_count("n_boot", n_boot, 2), _check_count("seed", seed, 0)
    n_spins = s.shape[-1] * s.shape[-2]
    e, m = energy_per_spin(s), magnetization(s)                         # (groups, per_group)
    parts = torch.stack([e.mean(1), (e**2).mean(1), m.abs().mean(1), (m**2).mean(1)], 1)   # (groups, 4)
    corr = spin_correlation(s, r_max).mean(1)                           # (groups, r_max + 1)

    def combine(p, g):  # p (..., 4) and g (..., r_max + 1): means over groups -> observables
        e1, e2, a1, m2 = p.unbind(-1)
        return {"energy": e1, "abs_magnetization": a1, "specific_heat": n_spins * (e2 - e1**2) / T**2,
                "susceptibility": n_spins * (m2 - a1**2) / T, "correlation": g}

    n_groups = s.shape[0]
    idx = torch.randint(n_groups, (n_boot, n_groups), generator=torch.Generator().manual_seed(seed))
    best, boot = combine(parts.mean(0), corr.mean(0)), combine(parts[idx].mean(1), corr[idx].mean(1))
    out = {k: (best[k].item(), boot[k].std().item()) for k in best if k != "correlation"}
    out["correlation"] = (best["correlation"], boot["correlation"].std(0))
    return out


# ============================================================================ exact (L <= 4)
@functools.lru_cache(maxsize=4)
def _density_of_states(L):
    """Distinct (E, |M|) pairs over all 2**(L*L) configurations and how many have each."""
    n = L * L
    idx = np.arange(2**n, dtype=np.int64)
    s = (((idx[:, None] >> np.arange(n)) & 1) * 2 - 1).astype(np.int8).reshape(-1, L, L)
    s32 = s.astype(np.int32)
    energy = -(s32 * (np.roll(s32, -1, axis=2) + np.roll(s32, -1, axis=1))).sum(axis=(1, 2))
    abs_m = np.abs(s32.sum(axis=(1, 2)))
    pairs, counts = np.unique(np.stack([energy, abs_m], axis=1), axis=0, return_counts=True)
    return pairs[:, 0].astype(np.float64), pairs[:, 1].astype(np.float64), counts.astype(np.float64)


def exact_observables(L: int, T) -> dict:
    """Exact thermodynamics of the L x L periodic lattice by enumerating all 2**(L*L) states.

    Parameters
    ----------
    L : int
        2 <= L <= :data:`MAX_EXACT_L` (= 4, 65,536 states).
    T : float or array
        Temperature(s), > 0, in units of J/k_B.

    Returns
    -------
    dict of floats (arrays for array ``T``):
        ``log_z``: log Z of the whole lattice (nats, not per spin);
        ``energy``: <e>, energy per spin; ``abs_magnetization``: <|m|> per spin;
        ``specific_heat``: N (<e^2> - <e>^2) / T^2;
        ``susceptibility``: N (<m^2> - <|m|>^2) / T  (the conventions of
        :func:`specific_heat` and :func:`susceptibility`, N = L^2).
    """
    L = _check_count("L", L, 2)
    if L > MAX_EXACT_L:
        raise ValueError(f"exact enumeration of an L x L lattice visits 2**(L*L) states; L = {L} would be "
                         f"2**{L * L} = {2**(L * L):.2e}. Use L <= {MAX_EXACT_L}, or sample larger lattices "
                         "(metropolis_sweeps, wolff_updates) and compare with onsager_energy/onsager_magnetization")
    t = np.asarray(T, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"T must be positive and finite, got {T!r}")
    energy, abs_m, counts = _density_of_states(L)
    n = L * L
    log_w = np.log(counts) - energy / t[..., None]        # (..., n_levels)
    shift = log_w.max(axis=-1, keepdims=True)
    w = np.exp(log_w - shift)
    z = w.sum(axis=-1)
    p = w / z[..., None]
    e, m = energy / n, abs_m / n
    mean_e, mean_m = p @ e, p @ m
    out = {
        "log_z": np.log(z) + shift[..., 0],
        "energy": mean_e,
        "abs_magnetization": mean_m,
        # centred second moments: the same quantities as <e^2> - <e>^2, without the cancellation
        "specific_heat": n * (p * (e - mean_e[..., None]) ** 2).sum(-1) / t**2,
        "susceptibility": n * (p * (m - mean_m[..., None]) ** 2).sum(-1) / t,
    }
    if t.ndim == 0:
        out = {k: float(v) for k, v in out.items()}
    return out


def _check_exact_L(L):
    L = _check_count("L", L, 2)
    if L > MAX_EXACT_L:
        raise ValueError(f"exact enumeration of an L x L lattice visits 2**(L*L) states; L = {L} would be "
                         f"2**{L * L} = {2**(L * L):.2e}. Use L <= {MAX_EXACT_L}, or sample larger lattices "
                         "(metropolis_sweeps, wolff_updates)")
    return L


@functools.lru_cache(maxsize=4)
def _lattices_and_energies(L):
    """All 2**(L*L) lattices (int8, bit i of the row index is site i, row-major) and their energies E (float64)."""
    n = L * L
    bits = (torch.arange(2**n)[:, None] >> torch.arange(n)) & 1
    s = (2 * bits - 1).to(torch.int8).reshape(-1, L, L)
    return s, n * energy_per_spin(s)


def all_lattices(L: int) -> torch.Tensor:
    """Every configuration of the periodic L x L lattice once, for L <= :data:`MAX_EXACT_L`.

    Row ``k`` holds the bits of the integer ``k``: site ``i`` (row-major) is +1
    where bit ``i`` is 1, else -1, the order of ``helpers.rbm.binary_states(L*L)``
    mapped by s = 2x - 1.

    Returns
    -------
    Tensor, shape (2**(L*L), L, L), int8 (65,536 lattices for L = 4).
    """
    return _lattices_and_energies(_check_exact_L(L))[0].clone()


def exact_log_prob(spins, T) -> torch.Tensor:
    """Exact log p(s) = -E(s)/T - log Z of given configurations, in nats per lattice (L <= 4).

    log Z is the exact partition function of :func:`exact_observables` (by
    enumeration of all 2**(L*L) states), so ``exact_log_prob(all_lattices(L), T)``
    exponentiates and sums to 1.

    Parameters
    ----------
    spins : Tensor, shape (..., L, L)
        +-1 lattices, 2 <= L <= :data:`MAX_EXACT_L`.
    T : float
        Temperature, > 0 (units of J/k_B).

    Returns
    -------
    Tensor, shape (...), float64.
    """
    s = _check_any_lattices(spins)
    bad = (s != 1) & (s != -1)
    if bad.any():
        raise ValueError(f"spins must be +1 or -1, but {int(bad.sum())} entries are not, e.g. "
                         f"{s[bad].flatten()[0].item()!r}; map 0/1 data with 2 * x - 1")
    L = _check_exact_L(s.shape[-1])
    T = _check_real("T", T, 0.0, low_ok=False)
    return -L * L * energy_per_spin(s) / T - exact_observables(L, T)["log_z"]


def exact_samples(L: int, T, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent samples of the exact Boltzmann distribution of the L x L lattice (L <= 4).

    Draws ``n_samples`` lattices with replacement from all 2**(L*L) states with
    probabilities exp(-E/T) / Z (``torch.multinomial``): exact and independent,
    no Markov chain, no burn-in, no autocorrelation.

    Parameters
    ----------
    L : int
        2 <= L <= :data:`MAX_EXACT_L`.
    T : float
        Temperature, > 0 (units of J/k_B).
    n_samples : int
        >= 1.
    generator : torch.Generator, optional

    Returns
    -------
    Tensor, shape (n_samples, L, L), int8, values +-1.
    """
    lattices, energy = _lattices_and_energies(_check_exact_L(L))
    T = _check_real("T", T, 0.0, low_ok=False)
    n_samples = _check_count("n_samples", n_samples)
    p = torch.softmax(-energy / T, 0)
    return lattices[torch.multinomial(p, n_samples, replacement=True, generator=_check_generator(generator))]


# ============================================================================ Onsager
def _positive_temperatures(T):
    t = np.asarray(T, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"T must be positive and finite (the T -> 0 limits are energy -2 and |m| 1), got {T!r}")
    return t


def _scalar_or_array(x, like):
    return float(x) if np.ndim(like) == 0 else x


def elliptic_k(k):
    """Complete elliptic integral of the first kind, K(k) = int_0^{pi/2} dt / sqrt(1 - k^2 sin^2 t).

    Modulus convention (``k``, not the parameter ``m = k^2``), computed as
    ``pi / (2 AGM(1, sqrt(1 - k^2)))`` with the arithmetic-geometric mean
    (quadratic convergence, a handful of iterations). ``0 <= k <= 1``; K(1) = inf.
    """
    k = np.asarray(k, dtype=np.float64)
    if np.any(~np.isfinite(k)) or np.any(k < 0) or np.any(k > 1):
        raise ValueError("the modulus k must lie in [0, 1]")
    a, b = np.ones_like(k), np.sqrt(1.0 - np.where(k < 1, k, 0.0) ** 2)  # k = 1 handled below
    for _ in range(64):  # converges quadratically: < 10 iterations even for 1 - k = 1e-16
        a, b = (a + b) / 2, np.sqrt(a * b)
        if np.all(np.abs(a - b) <= 4e-16 * a):
            break
    return _scalar_or_array(np.where(k < 1, np.pi / (2 * a), np.inf), k)


def onsager_magnetization(T):
    """Onsager-Yang spontaneous magnetization per spin of the infinite lattice.

    M(T) = (1 - sinh(2/T)^-4)^(1/8) for T < T_CRITICAL, 0 above. Scalars or
    arrays of T (> 0, units of J/k_B); M -> 1 as T -> 0.
    """
    t = _positive_temperatures(T)
    with np.errstate(over="ignore"):
        x = 1.0 - np.sinh(2.0 / t) ** -4.0
    m = np.where(t < T_CRITICAL, np.clip(x, 0.0, 1.0) ** 0.125, 0.0)
    return _scalar_or_array(m, t)


def onsager_energy(T):
    """Onsager's energy per spin of the infinite lattice (J = 1, no field).

    u(T) = -coth(2b) [1 + (2/pi) (2 tanh^2(2b) - 1) K(k)],  b = 1/T,
    k = 2 sinh(2b) / cosh^2(2b), with :func:`elliptic_k` (modulus k). At
    T_CRITICAL, k = 1 and K diverges logarithmically but its prefactor
    vanishes: u(T_CRITICAL) = -sqrt(2). Limits: -2 as T -> 0, 0 as T -> inf.
    Scalars or arrays of T (> 0).
    """
    t = _positive_temperatures(T)
    two_beta = 2.0 / t
    with np.errstate(over="ignore"):
        sech = 1.0 / np.cosh(two_beta)           # 0 for very small T instead of inf / inf
    tanh = np.tanh(two_beta)
    k = np.clip(2.0 * tanh * sech, 0.0, 1.0)
    K = np.asarray(elliptic_k(k))
    with np.errstate(invalid="ignore"):
        term = (2.0 * tanh**2 - 1.0) * K
    term = np.where(np.isfinite(K), term, 0.0)     # exactly at T_CRITICAL: 0 * log-divergence -> 0
    u = -(1.0 / tanh) * (1.0 + 2.0 / np.pi * term)
    return _scalar_or_array(u, t)


# ============================================================================ data sets
class IsingSamples(NamedTuple):
    """Output of :func:`ising_dataset`.

    Attributes
    ----------
    spins : Tensor, shape (n_temps, n_samples, L, L), int8, values +-1
    temperatures : Tensor, shape (n_temps,), float64
    """

    spins: torch.Tensor
    temperatures: torch.Tensor


_CACHE_VERSION = 1  # bump when the generation procedure changes, so old caches are not reused
_CACHE_FORMAT = "helpers.ising data set 2"   # stored through helpers.checkpoint, the course's one cache


def default_cache_dir() -> Path:
    """``<repo>/build/ising_cache`` (git-ignored). Not the data folder, which may be read-only (CI)."""
    from helpers.config import REPO_ROOT

    return REPO_ROOT / "build" / "ising_cache"


def _generate(L, temps, n_samples, seed, n_thermalize, n_between, algorithm, n_chains, progress):
    gen = torch.Generator().manual_seed(seed)
    n_temps = len(temps)
    t_lat = torch.tensor(temps, dtype=torch.float64).repeat_interleave(n_chains)   # (n_temps * n_chains,)
    batch = len(t_lat)
    # ordered start below T_CRITICAL (avoids long-lived stripe states), random start above
    spins = torch.where((t_lat < T_CRITICAL).view(batch, 1, 1), torch.ones(batch, L, L, dtype=torch.int8),
                        random_spins(batch, L, gen))
    n_records = -(-n_samples // n_chains)
    out = torch.empty((n_temps, n_records, n_chains, L, L), dtype=torch.int8)

    def rounds(spins, n):
        if algorithm == "wolff":
            for _ in range(n):
                spins = metropolis_sweeps(wolff_updates(spins, t_lat, 1, gen), t_lat, 1, gen)
            return spins
        return metropolis_sweeps(spins, t_lat, n, gen)

    def global_flip(spins):
        # s -> -s leaves p(s) unchanged, so a random global flip is a valid Monte Carlo move;
        # it populates both ordered states equally even when the local moves cannot.
        sign = 1 - 2 * (torch.rand(batch, generator=gen) < 0.5).to(torch.int8)
        return spins * sign.view(batch, 1, 1)

    from tqdm.auto import tqdm

    total = n_thermalize + n_records * n_between
    chunk = 1 if algorithm == "wolff" else 50
    with tqdm(total=total, disable=not progress, leave=False, unit="round",
              desc=f"Ising L={L}, {n_temps} temperatures ({algorithm})") as bar:
        done = 0
        while done < n_thermalize:
            step = min(chunk, n_thermalize - done)
            spins = rounds(spins, step)
            done += step
            bar.update(step)
        for r in range(n_records):
            spins = global_flip(rounds(spins, n_between))
            out[:, r] = spins.view(n_temps, n_chains, L, L)
            bar.update(n_between)
    # sample index = record * n_chains + chain
    return out.reshape(n_temps, n_records * n_chains, L, L)[:, :n_samples].contiguous()


def ising_dataset(L: int, temperatures, n_samples: int, seed: int = 0, n_thermalize: int | None = None,
                  n_between: int | None = None, algorithm: str = "wolff", n_chains: int | None = None,
                  cache_dir=None, progress: bool = True) -> IsingSamples:
    """Equilibrium samples of the L x L Ising model at several temperatures, seeded and cached on disk.

    For each temperature, ``n_chains`` independent chains are thermalized for
    ``n_thermalize`` rounds, then one sample per chain is recorded every
    ``n_between`` rounds until ``n_samples`` are collected. A round is

    * ``algorithm="wolff"``: one Wolff cluster update followed by one
      checkerboard Metropolis sweep (clusters decorrelate near and below
      T_CRITICAL, the sweep at high T where clusters are tiny);
    * ``algorithm="metropolis"``: one checkerboard Metropolis sweep (L even;
      correlated samples near T_CRITICAL: critical slowing down).

    Chains start ordered (all +1) below T_CRITICAL and random above; before
    each record every lattice is flipped globally with probability 1/2 (a
    valid move, since p(s) = p(-s)), so both signs of m appear.

    The result is cached through :mod:`helpers.checkpoint` (the course's one cache) as
    ``<cache_dir>/ising_L{L}_{algorithm}_{hash}.pt``, the hash and the stored fingerprint
    covering every argument that changes the data; a later call with the same arguments
    loads it (weights-only loading) and says so, and an unreadable, foreign or mismatching
    file is regenerated with a printed reason.

    Parameters
    ----------
    L : int
        Lattice side, >= 2 (even for "metropolis").
    temperatures : sequence of float
        Positive temperatures in units of J/k_B.
    n_samples : int
        Samples per temperature, >= 1.
    seed : int
        Seed of the whole generation (non-negative).
    n_thermalize, n_between : int, optional
        Rounds before the first record (>= 0) and between records (>= 1).
        Defaults: 200 and 5 for "wolff", 2000 and 20 for "metropolis".
    algorithm : {"wolff", "metropolis"}
    n_chains : int, optional
        Independent chains per temperature (default ``min(n_samples, 8)``).
    cache_dir : path, optional
        Folder of the cache (default :func:`default_cache_dir`, ``<repo>/build/ising_cache``);
        ``False`` disables caching.
    progress : bool
        Show a tqdm progress bar while generating.

    Returns
    -------
    IsingSamples
        ``spins`` (n_temps, n_samples, L, L) int8 and ``temperatures`` (n_temps,) float64.
    """
    L = _check_count("L", L, 2)
    if algorithm not in ("wolff", "metropolis"):
        raise ValueError(f"algorithm must be 'wolff' or 'metropolis', got {algorithm!r}")
    if algorithm == "metropolis" and L % 2:
        raise ValueError(f"algorithm='metropolis' (checkerboard) needs an even L, got L = {L}; use 'wolff'")
    temps = torch.as_tensor(temperatures, dtype=torch.float64).flatten()
    if temps.numel() == 0:
        raise ValueError("temperatures is empty; pass at least one temperature")
    _check_temperatures(temps, temps.numel())
    n_samples = _check_count("n_samples", n_samples)
    seed = _check_count("seed", seed, 0)
    defaults = {"wolff": (200, 5), "metropolis": (2000, 20)}[algorithm]
    n_thermalize = _check_count("n_thermalize", defaults[0] if n_thermalize is None else n_thermalize, 0)
    n_between = _check_count("n_between", defaults[1] if n_between is None else n_between, 1)
    n_chains = _check_count("n_chains", min(n_samples, 8) if n_chains is None else n_chains, 1)

    fingerprint = {"version": _CACHE_VERSION, "L": L, "temperatures": [float(t).hex() for t in temps.tolist()],
                   "n_samples": n_samples, "seed": seed, "n_thermalize": n_thermalize, "n_between": n_between,
                   "algorithm": algorithm, "n_chains": n_chains}
    path = None
    if cache_dir is not False:
        name = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        folder = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        path = folder / f"ising_L{L}_{algorithm}_{name}.pt"

    def generate():
        return {"spins": _generate(L, temps.tolist(), n_samples, seed, n_thermalize, n_between, algorithm, n_chains,
                                   progress)}

    spins = checkpoint_io.cached(path, fingerprint, _CACHE_FORMAT, generate, what="Ising data",
                                 redo="generating it")["spins"]
    return IsingSamples(spins, temps)


# ============================================================================ generative models of lattices
def ordered_state_fractions(spins) -> dict:
    """How often samples sit in the m > 0 and the m < 0 state, with binomial standard errors.

    Below T_CRITICAL the Ising model has two ordered states, related by s -> -s and
    equally probable, so equilibrium samples give each sign of the magnetization with
    probability 1/2 (up to the lattices with m = 0, possible for even N). A generative
    model that produces only one of them has collapsed onto one mode of the data.

    Parameters
    ----------
    spins : Tensor, shape (n_samples, L, L)
        Independent samples, +-1 values (any dtype), n_samples >= 1.

    Returns
    -------
    dict
        ``positive``, ``negative``, ``zero``: (fraction, standard error) of the lattices
        with m > 0, m < 0 and m = 0; the error is the binomial sqrt(f (1 - f) / n), which
        is 0 for f = 0 or 1: then quote the "rule of three" instead (with 95 % confidence
        the true fraction is below 3 / n when none of n samples shows it). ``n``: the
        number of samples.
    """
    if not isinstance(spins, torch.Tensor):
        raise TypeError(f"spins must be a torch.Tensor of shape (n_samples, L, L), got {type(spins).__name__}")
    if spins.dim() != 3:
        raise ValueError(f"spins must have shape (n_samples, L, L), got {tuple(spins.shape)}; reshape flat rows "
                         "with spins.view(-1, L, L)")
    _check_lattices(spins)
    n = spins.shape[0]
    total = spins.to(torch.int64).sum((-1, -2))
    out = {}
    for name, mask in (("positive", total > 0), ("negative", total < 0), ("zero", total == 0)):
        f = mask.double().mean().item()
        out[name] = (f, math.sqrt(f * (1 - f) / n))
    out["n"] = n
    return out
