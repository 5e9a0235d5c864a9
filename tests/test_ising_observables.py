"""helpers.ising's observables of arbitrary samples, spin correlation and exact log-probabilities,
against independent computations.

* spin_correlation against explicit loops over sites (any real values), G(0) = 1 and e = -2 G(1)
  on any sample, its range checks;
* sample_observables on exact i.i.d. samples (drawn from the enumerated Boltzmann distribution) against
  exact <e>, <|m|>, C, chi and G(r) from an enumeration written here with numpy, within 4 of the
  function's own error bars; the error bars themselves calibrated over repeated samples and scaled
  correctly for correlated groups;
* exact_log_prob normalised over all 2**(L*L) states and equal to the enumeration; exact_samples
  against the exact probabilities (a chi-square test); all_lattices in binary_states order;
* clear errors for bad input.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from helpers import ising
from helpers.rbm import binary_states

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- an independent enumeration (numpy loops)
def enumeration(L, T):
    """Every configuration with explicit neighbour loops; exact moments and G(r), r = 0 .. L // 2."""
    n = L * L
    s = np.array(list(itertools.product([-1, 1], repeat=n)), dtype=np.int64).reshape(-1, L, L)
    energy = np.zeros(len(s))
    corr = np.zeros((len(s), L // 2 + 1))
    for r in range(L):
        for c in range(L):
            energy -= s[:, r, c] * (s[:, r, (c + 1) % L] + s[:, (r + 1) % L, c])
            for d in range(L // 2 + 1):
                corr[:, d] += s[:, r, c] * (s[:, r, (c + d) % L] + s[:, (r + d) % L, c]) / (2 * n)
    log_w = -energy / T
    log_z = np.log(np.exp(log_w - log_w.max()).sum()) + log_w.max()
    p = np.exp(log_w - log_z)
    e, m = energy / n, np.abs(s.sum((1, 2))) / n
    mean_e, mean_m = p @ e, p @ m
    return {"states": s, "log_p": log_w - log_z, "p": p, "energy": mean_e, "abs_magnetization": mean_m,
            "specific_heat": n * (p @ (e - mean_e) ** 2) / T**2,
            "susceptibility": n * (p @ (m - mean_m) ** 2) / T, "correlation": p @ corr}


@pytest.fixture(scope="module")
def exact_4x4():
    return {T: enumeration(4, T) for T in (1.5, ising.T_CRITICAL, 3.5)}


def loop_correlation(lattice, r):
    """G(r) of one lattice with plain Python loops."""
    L = len(lattice)
    total = 0.0
    for i in range(L):
        for j in range(L):
            total += lattice[i][j] * (lattice[i][(j + r) % L] + lattice[(i + r) % L][j])
    return total / (2 * L * L)


# ---------------------------------------------------------------- spin_correlation
@pytest.mark.parametrize("L", [2, 3, 4, 5, 8])
def test_spin_correlation_matches_loops(L):
    g = torch.Generator().manual_seed(L)
    spins = ising.random_spins(3, L, g)
    real = torch.randn(2, L, L, generator=g, dtype=torch.float64)          # any real values are accepted
    for batch in (spins, real):
        got = ising.spin_correlation(batch)
        assert got.shape == (len(batch), L // 2 + 1) and got.dtype == torch.float64
        for b in range(len(batch)):
            for r in range(L // 2 + 1):
                assert got[b, r].item() == pytest.approx(loop_correlation(batch[b].tolist(), r), abs=1e-12)


def test_g0_is_one_and_energy_is_minus_two_g1_on_any_sample():
    g = torch.Generator().manual_seed(0)
    samples = [ising.random_spins(50, 6, g),
               ising.metropolis_sweeps(torch.ones(20, 8, 8, dtype=torch.int8), 2.0, 30, g),
               ising.exact_samples(4, 2.5, 100, g)]
    for s in samples:
        G = ising.spin_correlation(s)
        assert torch.equal(G[:, 0], torch.ones(len(s), dtype=torch.float64))
        assert torch.allclose(-2 * G[:, 1], ising.energy_per_spin(s), rtol=0, atol=1e-14)
    # the identity holds for any real lattice (both sides are the same bond sum)
    x = torch.randn(7, 5, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(-2 * ising.spin_correlation(x)[:, 1], ising.energy_per_spin(x), rtol=0, atol=1e-13)


def test_spin_correlation_leading_dimensions_and_r_max():
    s = ising.random_spins(12, 6, torch.Generator().manual_seed(1))
    full = ising.spin_correlation(s)
    assert torch.equal(ising.spin_correlation(s.reshape(3, 4, 6, 6)).reshape(12, -1), full)
    assert torch.equal(ising.spin_correlation(s, r_max=1), full[:, :2])
    assert ising.spin_correlation(s, r_max=0).shape == (12, 1)
    with pytest.raises(ValueError, match=r"at most L // 2 = 3"):
        ising.spin_correlation(s, r_max=4)
    with pytest.raises(ValueError, match="r_max"):
        ising.spin_correlation(s, r_max=-1)
    with pytest.raises(ValueError, match=r"\(\.\.\., L, L\)"):
        ising.spin_correlation(torch.ones(3, 4, 5))


# ---------------------------------------------------------------- sample_observables vs the exact distribution
SCALARS = ("energy", "abs_magnetization", "specific_heat", "susceptibility")


@pytest.mark.parametrize("T", [1.5, ising.T_CRITICAL, 3.5])
def test_sample_observables_of_exact_samples_agree_with_enumeration(T, exact_4x4):
    exact = exact_4x4[T]
    # helpers.ising's own exact results agree with this file's enumeration
    for key in SCALARS:
        assert ising.exact_observables(4, T)[key] == pytest.approx(exact[key], rel=1e-10, abs=1e-12)
    spins = ising.exact_samples(4, T, 20000, torch.Generator().manual_seed(7))
    obs = ising.sample_observables(spins, T, n_boot=300, seed=3)
    for key in SCALARS:
        value, err = obs[key]
        assert 0 < err < 0.05, (key, err)
        assert abs(value - exact[key]) < 4 * err, (key, value, exact[key], err)
    G, G_err = obs["correlation"]
    assert G.shape == G_err.shape == (3,)
    assert G[0] == 1 and G_err[0] == 0
    assert ((G[1:] - torch.as_tensor(exact["correlation"][1:])).abs() < 4 * G_err[1:]).all(), (G, exact["correlation"])


def test_sample_observables_on_2x2_exact_samples():
    T = 2.0
    exact = enumeration(2, T)
    obs = ising.sample_observables(ising.exact_samples(2, T, 20000, torch.Generator().manual_seed(2)), T)
    for key in SCALARS:
        assert abs(obs[key][0] - exact[key]) < 4 * obs[key][1], key
    G, G_err = obs["correlation"]
    assert abs(G[1].item() - exact["correlation"][1]) < 4 * G_err[1].item()


def test_values_equal_the_pooled_functions():
    T = 2.3
    s = ising.metropolis_sweeps(torch.ones(60, 6, 6, dtype=torch.int8), T, 40, torch.Generator().manual_seed(4))
    grouped = s.reshape(10, 6, 6, 6)
    for spins in (s, grouped):
        obs = ising.sample_observables(spins, T)
        assert obs["energy"][0] == pytest.approx(ising.energy_per_spin(s).mean().item(), abs=1e-14)
        assert obs["abs_magnetization"][0] == pytest.approx(ising.abs_magnetization(s).mean().item(), abs=1e-14)
        assert obs["specific_heat"][0] == pytest.approx(ising.specific_heat(s, T).item(), rel=1e-10)
        assert obs["susceptibility"][0] == pytest.approx(ising.susceptibility(s, T).item(), rel=1e-10)
        assert torch.allclose(obs["correlation"][0], ising.spin_correlation(s).mean(0), atol=1e-14)


def test_error_bars_are_calibrated():
    # over 200 independent sample sets, (estimate - exact) / error has a standard deviation near 1
    T, n = ising.T_CRITICAL, 400
    exact = enumeration(2, T)
    gen = torch.Generator().manual_seed(11)
    z = {key: [] for key in ("energy", "abs_magnetization")}
    for rep in range(200):
        obs = ising.sample_observables(ising.exact_samples(2, T, n, gen), T, n_boot=100, seed=rep)
        for key in z:
            z[key].append((obs[key][0] - exact[key]) / obs[key][1])
    for key, values in z.items():
        sd = float(np.std(values))
        # the standard deviation of 200 unit normals is 1 +- 0.05; 0.8 .. 1.25 is four to five of those
        assert 0.8 < sd < 1.25, (key, sd)
        assert abs(float(np.mean(values))) < 4 / math.sqrt(200), (key, np.mean(values))


def test_groups_carry_the_correlation():
    # every group holds 25 copies of one exact sample: treated as 2,500 independent samples the error is
    # too small by sqrt(25) = 5; as 100 groups it is the error of 100 independent samples
    T = 2.5
    base = ising.exact_samples(4, T, 100, torch.Generator().manual_seed(5))
    copies = base[:, None].expand(100, 25, 4, 4)
    naive = ising.sample_observables(copies.reshape(-1, 4, 4), T, seed=1)
    grouped = ising.sample_observables(copies, T, seed=1)
    single = ising.sample_observables(base, T, seed=1)
    for key in ("energy", "abs_magnetization"):
        assert grouped[key][0] == pytest.approx(naive[key][0], abs=1e-12)
        assert grouped[key][1] == pytest.approx(single[key][1], rel=1e-12)   # same resampled groups
        assert 3.5 < grouped[key][1] / naive[key][1] < 7, key


def test_sample_observables_rejects_bad_input():
    s = ising.random_spins(10, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"2 \* x - 1"):
        ising.sample_observables(((s + 1) // 2).float(), 2.0)
    with pytest.raises(ValueError, match=r"\(n_samples, L, L\)"):
        ising.sample_observables(s.reshape(10, 16), 2.0)
    with pytest.raises(ValueError, match="at least 2"):
        ising.sample_observables(s[:1], 2.0)
    with pytest.raises(ValueError, match="T must be"):
        ising.sample_observables(s, 0.0)
    with pytest.raises(ValueError, match="n_boot"):
        ising.sample_observables(s, 2.0, n_boot=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ising.sample_observables(s.numpy(), 2.0)


# ---------------------------------------------------------------- exact log-probabilities and samples
@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("T", [0.8, ising.T_CRITICAL, 4.0])
def test_exact_log_prob_is_normalised_and_matches_enumeration(L, T):
    lattices = ising.all_lattices(L)
    log_p = ising.exact_log_prob(lattices, T)
    assert log_p.shape == (2 ** (L * L),) and log_p.dtype == torch.float64
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-10                      # sums to 1 over all states
    ref = enumeration(L, T)
    # all_lattices' order (bit i = site i) vs itertools.product's (site 0 is the most significant digit)
    order = {tuple(st.flatten().tolist()): k for k, st in enumerate(ref["states"])}
    idx = [order[tuple(st.flatten().tolist())] for st in lattices]
    assert np.allclose(log_p.numpy(), ref["log_p"][idx], rtol=0, atol=1e-10)
    assert torch.allclose(ising.exact_log_prob(-lattices, T), log_p, atol=1e-12)   # p(-s) = p(s)


def test_exact_log_prob_takes_any_leading_shape():
    s = ising.exact_samples(3, 2.0, 12, torch.Generator().manual_seed(0))
    assert ising.exact_log_prob(s.reshape(3, 4, 3, 3), 2.0).shape == (3, 4)
    # log-ratios are energy differences
    lp = ising.exact_log_prob(s, 2.0)
    e = ising.energy_per_spin(s) * 9
    assert torch.allclose(lp - lp[0], -(e - e[0]) / 2.0, atol=1e-12)


def test_exact_log_prob_and_samples_reject_bad_input():
    with pytest.raises(ValueError, match=r"L <= 4"):
        ising.exact_log_prob(torch.ones(1, 5, 5), 2.0)
    with pytest.raises(ValueError, match=r"2 \* x - 1"):
        ising.exact_log_prob(torch.zeros(1, 3, 3), 2.0)
    with pytest.raises(ValueError, match="T must be"):
        ising.exact_log_prob(torch.ones(1, 3, 3), -1.0)
    with pytest.raises(ValueError, match=r"L <= 4"):
        ising.exact_samples(5, 2.0, 10)
    with pytest.raises(ValueError, match="n_samples"):
        ising.exact_samples(3, 2.0, 0)
    with pytest.raises(TypeError, match="Generator"):
        ising.exact_samples(3, 2.0, 10, generator=0)


def test_exact_samples_follow_the_boltzmann_distribution():
    # chi-square test of 100,000 draws over the 16 states of the 2 x 2 lattice
    T, n = 1.2, 100_000
    lattices = ising.all_lattices(2)
    p = ising.exact_log_prob(lattices, T).exp()
    draws = ising.exact_samples(2, T, n, torch.Generator().manual_seed(9))
    assert draws.shape == (n, 2, 2) and draws.dtype == torch.int8
    index = (((draws.reshape(n, 4) + 1) // 2).long() << torch.arange(4)).sum(1)     # bit i = site i
    counts = torch.bincount(index, minlength=16).double()
    chi2 = (((counts - n * p) ** 2) / (n * p)).sum().item()
    df = 15
    assert chi2 < df + 6 * math.sqrt(2 * df), chi2          # mean df, standard deviation sqrt(2 df)
    again = ising.exact_samples(2, T, n, torch.Generator().manual_seed(9))
    assert torch.equal(draws, again)                      # seeded


def test_all_lattices_in_binary_states_order():
    for L in (2, 3):
        lattices = ising.all_lattices(L)
        assert lattices.shape == (2 ** (L * L), L, L) and lattices.dtype == torch.int8
        assert torch.equal(lattices.reshape(len(lattices), -1).double(), 2 * binary_states(L * L) - 1)
        assert len(torch.unique(lattices.reshape(len(lattices), -1), dim=0)) == len(lattices)
    with pytest.raises(ValueError, match="L must be"):
        ising.all_lattices(1)
