"""helpers.ising against independent computations.

* exact_observables against a brute-force loop written here (L = 2, 3), the
  T -> 0 and T -> inf limits, and thermodynamic identities (C = d<e>/dT).
* Both samplers on L = 4 against exact_observables, with error bars from the
  integrated autocorrelation time (4 standard errors).
* The checkerboard update at T -> 0 against a plain numpy implementation (the
  dynamics is then deterministic, so the comparison is exact).
* Onsager's results against known values, a quadrature of K, the derivative
  of Onsager's free-energy integral, and a 32 x 32 simulation.
* The data-set cache: reuse, seeds, corruption, an unwritable folder.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from helpers import ising
from helpers.mcmc import integrated_autocorrelation_time
from helpers.rbm import binary_states

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- exact enumeration
def brute_force(L, T):
    """Every configuration with explicit neighbour loops; each site couples to its right and lower neighbour."""
    n = L * L
    weights, es, ms = [], [], []
    for conf in itertools.product([-1, 1], repeat=n):
        s = [conf[r * L:(r + 1) * L] for r in range(L)]
        energy = 0
        for r in range(L):
            for c in range(L):
                energy -= s[r][c] * (s[r][(c + 1) % L] + s[(r + 1) % L][c])
        weights.append(-energy / T)
        es.append(energy / n)
        ms.append(sum(conf) / n)
    top = max(weights)
    w = [math.exp(x - top) for x in weights]
    z = sum(w)

    def mean(f):
        return sum(wi * f(e, m) for wi, e, m in zip(w, es, ms)) / z

    e1, a1 = mean(lambda e, m: e), mean(lambda e, m: abs(m))
    var_e, var_a = mean(lambda e, m: (e - e1) ** 2), mean(lambda e, m: (abs(m) - a1) ** 2)  # <m^2> = <|m|^2>
    return {"log_z": math.log(z) + top, "energy": e1, "abs_magnetization": a1,
            "specific_heat": n * var_e / T**2, "susceptibility": n * var_a / T}


@pytest.mark.parametrize("L", [2, 3])
@pytest.mark.parametrize("T", [0.7, 2.0, 5.0])
def test_exact_observables_match_brute_force(L, T):
    exact, ref = ising.exact_observables(L, T), brute_force(L, T)
    assert set(exact) == set(ref)
    for key in ref:
        assert exact[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-12), key


def test_exact_observables_limits_and_identities():
    n = 16
    cold = ising.exact_observables(4, 0.05)
    assert cold["energy"] == pytest.approx(-2.0, abs=1e-12)
    assert cold["abs_magnetization"] == pytest.approx(1.0, abs=1e-12)
    assert cold["log_z"] == pytest.approx(math.log(2) + 2 * n / 0.05, rel=1e-12)  # two ground states
    hot = ising.exact_observables(4, 1e4)
    assert hot["log_z"] == pytest.approx(n * math.log(2), rel=1e-6)
    assert abs(hot["energy"]) < 1e-3
    # C = d<e>/dT and <e> = T^2 d(log Z / N)/dT, by central differences
    T, h = 2.0, 1e-5
    up, mid, down = (ising.exact_observables(4, t) for t in (T + h, T, T - h))
    assert mid["specific_heat"] == pytest.approx((up["energy"] - down["energy"]) / (2 * h), rel=1e-6)
    assert mid["energy"] == pytest.approx(T**2 * (up["log_z"] - down["log_z"]) / (2 * h) / n, rel=1e-6)
    # arrays of temperatures give the same numbers as scalars
    arr = ising.exact_observables(3, np.array([1.0, 3.0]))
    assert arr["energy"][1] == pytest.approx(ising.exact_observables(3, 3.0)["energy"], rel=1e-14)


def test_fluctuation_formulas_on_hand_made_samples():
    L, T = 4, 2.0
    up = torch.ones(L, L, dtype=torch.int8)
    checker = torch.tensor([[(-1) ** (r + c) for c in range(L)] for r in range(L)], dtype=torch.int8)
    samples = torch.stack([up, checker])  # e = -2 and +2, m = 1 and 0
    assert ising.energy_per_spin(samples).tolist() == [-2.0, 2.0]
    assert ising.abs_magnetization(samples).tolist() == [1.0, 0.0]
    assert ising.specific_heat(samples, T).item() == pytest.approx(16 * 4 / T**2)
    assert ising.susceptibility(samples, T).item() == pytest.approx(16 * (0.5 - 0.25) / T)
    assert ising.susceptibility(-samples, T).item() == pytest.approx(16 * (0.5 - 0.25) / T)
    # leading dimensions: (n_temps, n_samples, L, L) with one T per row
    stacked = torch.stack([samples, samples])
    assert torch.allclose(ising.specific_heat(stacked, torch.tensor([1.0, 2.0])),
                          torch.tensor([64.0, 16.0], dtype=torch.float64))


def all_lattices(L):
    """Every +-1 configuration of an L x L lattice, (2**(L*L), L, L) int8."""
    return (2 * binary_states(L * L, dtype=torch.int8) - 1).reshape(-1, L, L)


def test_fluctuation_formulas_on_exact_samples_agree_with_exact_observables():
    """Independent draws from the exact L = 3 Boltzmann distribution (all 512 states enumerated)."""
    L, T, n = 3, 2.5, 200_000
    states = all_lattices(L)
    p = torch.softmax(-ising.energy_per_spin(states) * L * L / T, 0)
    draws = states[torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(0))]
    exact = ising.exact_observables(L, T)
    # relative sd of a variance estimate ~ sqrt((kurtosis - 1) / n) < 1% here: tolerance 4%
    assert ising.specific_heat(draws, T).item() == pytest.approx(exact["specific_heat"], rel=0.04)
    assert ising.susceptibility(draws, T).item() == pytest.approx(exact["susceptibility"], rel=0.04)
    assert ising.energy_per_spin(draws).mean().item() == pytest.approx(exact["energy"], abs=0.01)


# ---------------------------------------------------------------- samplers against exact L = 4
def check_against_exact(series_e, series_m, T):
    """series: (n_steps, n_chains). Means within 4 standard errors, SE = sd sqrt(tau / N)."""
    exact = ising.exact_observables(4, T)
    for series, key in ((series_e, "energy"), (series_m, "abs_magnetization")):
        x = series.numpy()
        tau = integrated_autocorrelation_time(x)
        se = x.std() * math.sqrt(tau / x.size)
        assert se < 0.01  # the check can fail: the error bar is tight
        assert abs(x.mean() - exact[key]) < 4 * se, f"{key} at T={T}: {x.mean():.4f} vs {exact[key]:.4f} +- {se:.4f}"


def _traces(update, spins, n_steps):
    """Energy and |m| per spin after each of ``n_steps`` updates, shapes (n_steps, n_lattices)."""
    es, ms = [], []
    for _ in range(n_steps):
        spins = update(spins)
        es.append(ising.energy_per_spin(spins))
        ms.append(ising.abs_magnetization(spins))
    return torch.stack(es), torch.stack(ms)


@pytest.mark.parametrize("T", [1.5, 2.27, 3.5])
def test_checkerboard_metropolis_matches_exact_L4(T):
    gen = torch.Generator().manual_seed(int(T * 100))
    # ordered start: a random one lands in a Metropolis cycle state (see the next test) with
    # probability 36 / 65536 per lattice, about 13% for 256 lattices
    spins = ising.metropolis_sweeps(torch.ones(256, 4, 4, dtype=torch.int8), T, 50, gen)
    check_against_exact(*_traces(lambda sp: ising.metropolis_sweeps(sp, T, 1, gen), spins, 300), T)


def test_metropolis_cycle_states_are_the_documented_36_and_flip_every_sweep():
    """The ergodicity caveat in metropolis_sweeps' docstring (and week 11/01): states in which every
    spin has s h = 0 flip as a whole, deterministically, at any T; Wolff moves leave them."""
    def in_cycle(s):  # every spin has two aligned and two opposite neighbours
        field = sum(torch.roll(s, shift, dim).int() for shift in (1, -1) for dim in (1, 2))
        return ((s.int() * field) == 0).flatten(1).all(1)

    s = all_lattices(4)
    trapped = s[in_cycle(s)]
    assert len(trapped) == 36
    for T in (0.5, 2.27, 100.0):
        for seed in range(3):
            once = ising.metropolis_sweeps(trapped, T, 1, torch.Generator().manual_seed(seed))
            assert torch.equal(once, -trapped)
    escaped = ising.wolff_updates(trapped, 2.27, 5, torch.Generator().manual_seed(0))
    assert in_cycle(escaped).float().mean() < 0.5


@pytest.mark.parametrize("T", [1.5, 2.27, 3.5])
def test_wolff_matches_exact_L4(T):
    gen = torch.Generator().manual_seed(int(T * 100) + 1)
    spins = ising.wolff_updates(ising.random_spins(64, 4, gen), T, 30, gen)
    check_against_exact(*_traces(lambda sp: ising.wolff_updates(sp, T, 1, gen), spins, 250), T)


def test_wolff_on_odd_lattice_and_per_lattice_temperatures():
    """Wolff takes any L; here L = 3 with two temperatures in one batch."""
    gen = torch.Generator().manual_seed(11)
    temps = torch.tensor([1.0] * 32 + [4.0] * 32)
    spins = ising.wolff_updates(ising.random_spins(64, 3, gen), temps, 20, gen)
    es = []
    for _ in range(200):
        spins, sizes = ising.wolff_updates(spins, temps, 1, gen, return_cluster_sizes=True)
        es.append(ising.energy_per_spin(spins))
    assert sizes.shape == (64, 1) and (sizes >= 1).all() and (sizes <= 9).all()
    es = torch.stack(es)
    for cols, T in ((slice(0, 32), 1.0), (slice(32, 64), 4.0)):
        x = es[:, cols].numpy()
        se = x.std() * math.sqrt(integrated_autocorrelation_time(x) / x.size) + 1e-12
        assert abs(x.mean() - ising.exact_observables(3, T)["energy"]) < 4 * se + 1e-9


def zero_temperature_sweep(s):
    """Plain numpy checkerboard sweep at T -> 0: flip a spin when that does not raise the energy."""
    s = s.copy()
    L = s.shape[-1]
    rows, cols = np.indices((L, L))
    for colour in (0, 1):
        field = np.roll(s, 1, -1) + np.roll(s, -1, -1) + np.roll(s, 1, -2) + np.roll(s, -1, -2)
        flip = ((rows + cols) % 2 == colour) & (s * field <= 0)
        s = np.where(flip, -s, s)
    return s


@pytest.mark.parametrize("L", [2, 6, 8])
def test_checkerboard_neighbours_against_plain_numpy(L):
    """At T = 0.01, exp(-4/T) underflows to 0 in float32: the update is deterministic."""
    gen = torch.Generator().manual_seed(L)
    spins = ising.random_spins(20, L, gen)
    ours, ref = spins, spins.numpy()
    for _ in range(3):
        ours = ising.metropolis_sweeps(ours, 0.01, 1, gen)
        ref = zero_temperature_sweep(ref)
        assert np.array_equal(ours.numpy(), ref)


def test_metropolis_keeps_dtype_and_input_and_takes_per_lattice_T():
    gen = torch.Generator().manual_seed(0)
    spins = ising.random_spins(4, 6, gen).float()
    before = spins.clone()
    out = ising.metropolis_sweeps(spins, [0.01, 0.01, 100.0, 100.0], 2, gen)
    assert out.dtype == torch.float32 and out.shape == (4, 6, 6)
    assert torch.equal(spins, before)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    # energy can only go down at T -> 0
    assert (ising.energy_per_spin(out[:2]) <= ising.energy_per_spin(before[:2])).all()


# ---------------------------------------------------------------- Onsager
def test_onsager_known_values():
    assert ising.T_CRITICAL == pytest.approx(2.269185314213022, abs=1e-14)
    assert ising.onsager_energy(ising.T_CRITICAL) == pytest.approx(-math.sqrt(2), abs=1e-12)
    assert ising.onsager_energy(0.1) == pytest.approx(-2.0, abs=1e-12)
    assert ising.onsager_magnetization(0.1) == pytest.approx(1.0, abs=1e-12)
    assert ising.onsager_magnetization(2.0) == pytest.approx(0.911319, abs=1e-6)
    assert ising.onsager_magnetization(ising.T_CRITICAL) == 0.0
    assert ising.onsager_magnetization(3.0) == 0.0
    m = ising.onsager_magnetization(np.array([1.0, 2.0, 2.2, 2.26]))
    assert isinstance(m, np.ndarray) and np.all(np.diff(m) < 0)  # decreasing towards T_CRITICAL
    # high-temperature series: log Z / N = ln 2 + 2 ln cosh b + v^4 + 2 v^6 + O(v^8), v = tanh b
    # (one 4-bond and two 6-bond closed polygons per site), so u = -2v - (1 - v^2)(4 v^3 + 12 v^5) + O(v^7)
    v = math.tanh(1 / 20.0)
    assert ising.onsager_energy(20.0) == pytest.approx(-2 * v - (1 - v**2) * (4 * v**3 + 12 * v**5), rel=1e-6)
    assert ising.elliptic_k(0.0) == pytest.approx(math.pi / 2, rel=1e-15)


@pytest.mark.parametrize("k", [0.3, 0.9, 0.99])
def test_elliptic_k_against_quadrature(k):
    nodes, weights = np.polynomial.legendre.leggauss(400)
    theta = (nodes + 1) * math.pi / 4  # map [-1, 1] to [0, pi/2]
    quad = (weights * math.pi / 4 / np.sqrt(1 - k**2 * np.sin(theta) ** 2)).sum()
    assert ising.elliptic_k(k) == pytest.approx(quad, rel=1e-12)


@pytest.mark.parametrize("T", [1.5, 2.0, 3.0])
def test_onsager_energy_is_derivative_of_onsager_free_energy(T):
    """-b f = ln 2 + 1/(8 pi^2) int int ln[cosh^2(2b) - sinh(2b)(cos t1 + cos t2)] dt1 dt2; u = d(b f)/db."""
    theta = (np.arange(512) + 0.5) * 2 * np.pi / 512  # midpoint rule: spectral for a smooth periodic integrand
    cos_sum = np.cos(theta)[:, None] + np.cos(theta)[None, :]

    def minus_beta_f(b):
        return math.log(2) + 0.5 * np.log(np.cosh(2 * b) ** 2 - np.sinh(2 * b) * cos_sum).mean()

    b, h = 1 / T, 1e-5
    u = -(minus_beta_f(b + h) - minus_beta_f(b - h)) / (2 * h)
    assert ising.onsager_energy(T) == pytest.approx(u, abs=1e-7)


@pytest.mark.parametrize("T", [1.8, 3.0])
def test_large_lattice_simulation_approaches_onsager(T):
    """32 x 32 lattices, away from T_CRITICAL (finite-size corrections ~ exp(-L / xi) are negligible)."""
    gen = torch.Generator().manual_seed(5)
    spins = torch.ones(32, 32, 32, dtype=torch.int8)
    spins = ising.metropolis_sweeps(spins, T, 100, gen)
    es, ms = [], []
    for _ in range(200):
        spins = ising.metropolis_sweeps(spins, T, 1, gen)
        es.append(ising.energy_per_spin(spins))
        ms.append(ising.abs_magnetization(spins))
    checks = [(torch.stack(es), ising.onsager_energy(T))]
    if T < ising.T_CRITICAL:  # above T_CRITICAL, <|m|> ~ 1/L is a finite-size effect, not Onsager's 0
        checks.append((torch.stack(ms), ising.onsager_magnetization(T)))
    for series, exact in checks:
        x = series.numpy()
        se = x.std() * math.sqrt(integrated_autocorrelation_time(x) / x.size)
        assert se < 2e-3
        assert abs(x.mean() - exact) < 4 * se + 2e-4  # + a small allowance for finite-size corrections


# ---------------------------------------------------------------- data sets and cache
SMALL = dict(L=4, temperatures=[1.5, 3.0], n_samples=20, n_thermalize=10, n_between=2, progress=False)


def test_dataset_shape_cache_reuse_and_seeds(tmp_path, monkeypatch):
    first = ising.ising_dataset(**SMALL, cache_dir=tmp_path)
    assert first.spins.shape == (2, 20, 4, 4) and first.spins.dtype == torch.int8
    assert set(first.spins.unique().tolist()) == {-1, 1}
    assert torch.equal(first.temperatures, torch.tensor([1.5, 3.0], dtype=torch.float64))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("ising_L4_wolff_") and files[0].suffix == ".pt"

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated although a valid cache exists")

    with monkeypatch.context() as m:
        m.setattr(ising, "_generate", no_generation)
        again = ising.ising_dataset(**SMALL, cache_dir=tmp_path)
    assert torch.equal(again.spins, first.spins)

    other = ising.ising_dataset(**SMALL, seed=1, cache_dir=tmp_path)
    assert not torch.equal(other.spins, first.spins)
    assert len(list(tmp_path.iterdir())) == 2
    metro = ising.ising_dataset(**SMALL, algorithm="metropolis", cache_dir=tmp_path)
    assert metro.spins.shape == first.spins.shape and len(list(tmp_path.iterdir())) == 3
    # same seed without a cache: the same data (generation is deterministic)
    assert torch.equal(ising.ising_dataset(**SMALL, cache_dir=False).spins, first.spins)
    assert len(list(tmp_path.iterdir())) == 3


def test_corrupted_cache_is_regenerated_with_a_message(tmp_path, capsys):
    first = ising.ising_dataset(**SMALL, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a torch file")
    again = ising.ising_dataset(**SMALL, cache_dir=tmp_path)
    assert "could not be loaded safely" in capsys.readouterr().out
    assert torch.equal(again.spins, first.spins)
    # the file was rewritten and is valid again: the next call loads it
    assert torch.equal(ising.ising_dataset(**SMALL, cache_dir=tmp_path).spins, first.spins)
    assert "Loaded the Ising data" in capsys.readouterr().out
    # a file that loads but holds something else is also replaced
    torch.save({"spins": torch.zeros(3), "temperatures": torch.zeros(2)}, path)
    assert torch.equal(ising.ising_dataset(**SMALL, cache_dir=tmp_path).spins, first.spins)
    assert "is not a helpers.ising data set" in capsys.readouterr().out


def test_unwritable_cache_folder_says_so_but_returns_data(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    data = ising.ising_dataset(**SMALL, cache_dir=blocker / "cache")
    assert "Could not write the cache file" in capsys.readouterr().out
    assert data.spins.shape == (2, 20, 4, 4)


def test_default_cache_folder_is_the_ignored_build_folder():
    from helpers.config import REPO_ROOT

    assert ising.default_cache_dir() == REPO_ROOT / "build" / "ising_cache"


def test_dataset_samples_match_exact_and_both_signs_appear():
    data = ising.ising_dataset(4, [1.5, 3.0], 400, seed=3, n_thermalize=20, n_between=3, cache_dir=False,
                               progress=False)
    for i, T in enumerate((1.5, 3.0)):
        e = ising.energy_per_spin(data.spins[i]).reshape(-1, 8).numpy()  # (records, chains)
        se = e.std() * math.sqrt(integrated_autocorrelation_time(e) / e.size)
        assert abs(e.mean() - ising.exact_observables(4, T)["energy"]) < 4 * se
    m = ising.magnetization(data.spins[0])  # T = 1.5: ordered, both signs
    assert (m > 0.5).sum() > 100 and (m < -0.5).sum() > 100
    # single-spin Metropolis from the ordered start never reverses an 8 x 8 lattice at T = 1.5;
    # the random global flips still give both signs
    metro = ising.ising_dataset(8, [1.5], 64, n_thermalize=20, n_between=2, algorithm="metropolis",
                                cache_dir=False, progress=False)
    m = ising.magnetization(metro.spins[0])
    assert (m > 0.5).sum() > 10 and (m < -0.5).sum() > 10


# ---------------------------------------------------------------- bad input
def test_bad_input_messages():
    spins = torch.ones(2, 4, 4, dtype=torch.int8)
    with pytest.raises(ValueError, match="positive"):
        ising.metropolis_sweeps(spins, 0.0, 1)
    with pytest.raises(ValueError, match="positive"):
        ising.wolff_updates(spins, -1.0, 1)
    with pytest.raises(ValueError, match="even L"):
        ising.metropolis_sweeps(torch.ones(2, 5, 5), 2.0, 1)
    with pytest.raises(ValueError, match="n_sweeps must be an int >= 1"):
        ising.metropolis_sweeps(spins, 2.0, 0)
    with pytest.raises(ValueError, match="n_updates"):
        ising.wolff_updates(spins, 2.0, 0)
    with pytest.raises(ValueError, match="L <= 4"):
        ising.exact_observables(5, 2.0)
    with pytest.raises(ValueError, match="positive"):
        ising.exact_observables(3, 0.0)
    with pytest.raises(ValueError, match=r"\+1 or -1.*2 \* x - 1"):
        ising.metropolis_sweeps(torch.zeros(2, 4, 4), 2.0, 1)
    with pytest.raises(ValueError, match=r"spins\[None\]"):
        ising.metropolis_sweeps(torch.ones(4, 4), 2.0, 1)
    with pytest.raises(ValueError, match="one per lattice"):
        ising.metropolis_sweeps(spins, [1.0, 2.0, 3.0], 1)
    with pytest.raises(ValueError, match="positive"):
        ising.onsager_energy(0.0)
    with pytest.raises(ValueError, match="positive"):
        ising.onsager_magnetization([1.0, -1.0])
    with pytest.raises(ValueError, match="algorithm"):
        ising.ising_dataset(4, [2.0], 10, algorithm="heatbath", cache_dir=False)
    with pytest.raises(ValueError, match="even L"):
        ising.ising_dataset(5, [2.0], 10, algorithm="metropolis", cache_dir=False)
    with pytest.raises(ValueError, match="empty"):
        ising.ising_dataset(4, [], 10, cache_dir=False)
    with pytest.raises(ValueError, match="positive"):
        ising.ising_dataset(4, [2.0, 0.0], 10, cache_dir=False)
