"""Self-checks for the exercises that have a closed-form or exactly computable answer.

A student writes the answer as a function and passes it to the check, which
compares it with an independent computation (brute-force enumeration,
numerical quadrature, exact Gaussian integrals, ``torch.distributions``) and
raises :class:`SelfCheckError` with a hint when it disagrees. Passing
``None`` (the exercise is not solved yet) prints what to define and returns
``False``, so the exercise cells of the course notebooks run in CI; the
reference solutions in ``solutions/`` pass their functions and must succeed.

Every check returns ``True`` when the answer is right and prints the largest
error it measured (statistical checks: the distance in standard errors).
"""
from __future__ import annotations

import itertools
import math

import torch

__all__ = ["SelfCheckError", "spin_rbm", "hastings_kernel", "heat_bath", "gaussian_kl", "mean_field_gap",
           "iwae_bound", "gibbs_bogoliubov"]

DT = torch.float64


class SelfCheckError(AssertionError):
    """An exercise's answer disagrees with the independent computation; the message says where."""


def _pending(exercise: str, what: str) -> bool:
    print(f"{exercise}: not solved yet. Define {what}, pass it here and rerun this cell.")
    return False


def _call(fn, *args):
    out = fn(*args)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out, dtype=DT)
    if not torch.isfinite(out).all():
        raise SelfCheckError(f"{getattr(fn, '__name__', 'your function')} returned NaN or inf: "
                             "use log-sum-exp or softplus forms that stay finite")
    return out.to(DT)


def _compare(name, got, want, atol, hint=""):
    if got.shape != want.shape:
        raise SelfCheckError(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    err = (got - want).abs().max().item()
    if not err <= atol:
        if err < 1e-5 and not hint:
            hint = "Close: compute in float64 (torch.float64) throughout."
        raise SelfCheckError(f"{name}: largest error {err:.2e} > {atol:.0e}. {hint}".strip())
    return err


def _done(exercise, errors):
    print(f"{exercise}: correct (" + ", ".join(f"{k} {v if isinstance(v, str) else f'{v:.1e}'}"
                                               for k, v in errors.items()) + ")")
    return True


# ---------------------------------------------------------------------------------------------------------
# week 10, exercise 1: an RBM with +-1 units

def _spin_states(n):
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n)), dtype=DT)


def spin_rbm(p_h_plus, free_energy, seed: int = 0) -> bool:
    """Week 10, exercise 1: an RBM with units in {-1, +1} and energy E = -a.x - b.h - x.W.h.

    Parameters
    ----------
    p_h_plus : callable ``(x, W, b) -> Tensor (n, N)``, or None
        p(h_j = +1 | x) for a batch ``x`` (n, M) of +-1 rows, ``W`` (M, N), ``b`` (N,).
    free_energy : callable ``(x, W, a, b) -> Tensor (n,)``, or None
        F(x) = -log sum_h exp(-E(x, h)) in nats (no additive constant), ``a`` (M,).

    Both are compared with brute-force sums over all 2^N hidden states of two
    random float64 models (M = 5, N = 3, couplings of order 1), to 1e-10.
    """
    if p_h_plus is None or free_energy is None:
        return _pending("Week 10, exercise 1", "p_h_plus(x, W, b) and free_energy(x, W, a, b)")
    gen = torch.Generator().manual_seed(seed)
    errors = {"p(h=+1|x)": 0.0, "F(x)": 0.0}
    for M, N in [(5, 3), (4, 2)]:
        W = torch.randn(M, N, generator=gen, dtype=DT)
        a, b = 0.5 * torch.randn(M, generator=gen, dtype=DT), 0.5 * torch.randn(N, generator=gen, dtype=DT)
        x, h = _spin_states(M), _spin_states(N)                       # (2^M, M), (2^N, N)
        minus_E = (x @ a)[:, None] + (h @ b)[None, :] + x @ W @ h.T    # -E(x, h), (2^M, 2^N)
        F_true = -torch.logsumexp(minus_E, 1)
        joint = torch.softmax(minus_E, 1)                              # p(h | x) for every x
        p_true = joint @ (h > 0).to(DT)                                # p(h_j = +1 | x), (2^M, N)
        guess = torch.sigmoid(b + x @ W)
        hint = ("This is sigma(b + xW), the 0/1 answer: with +-1 units the two states of h_j differ by 2 in h_j."
                if torch.allclose(_call(p_h_plus, x, W, b), guess) else "")
        errors["p(h=+1|x)"] = max(errors["p(h=+1|x)"],
                                  _compare("p_h_plus", _call(p_h_plus, x, W, b), p_true, 1e-10, hint))
        hint = ("The difference is constant: F(x) has no additive constant (keep the log 2 of 2 cosh)."
                if (_call(free_energy, x, W, a, b) - F_true).std() < 1e-9 else "")
        errors["F(x)"] = max(errors["F(x)"], _compare("free_energy", _call(free_energy, x, W, a, b), F_true,
                                                      1e-10, hint))
    return _done("Week 10, exercise 1", errors)


# ---------------------------------------------------------------------------------------------------------
# week 11/01, exercise 1: Metropolis-Hastings with an asymmetric proposal

def _asymmetric_proposal(x, i, p_on=0.8):
    """q(x with bit i flipped | x) for the exercise's proposal; x a tuple of bits."""
    n_on = sum(x)
    n_off = len(x) - n_on
    if x[i] == 1:
        return (p_on if n_off > 0 else 1.0) / n_on
    return ((1 - p_on) if n_on > 0 else 1.0) / n_off


def _reference_hastings_kernel(F, M, corrected=True):
    K = torch.zeros(2**M, 2**M, dtype=DT)
    for k in range(2**M):
        x = tuple((k >> i) & 1 for i in range(M))
        for i in range(M):
            k_y = k ^ (1 << i)
            y = tuple((k_y >> j) & 1 for j in range(M))
            q_xy, q_yx = _asymmetric_proposal(x, i), _asymmetric_proposal(y, i)
            ratio = math.exp(F[k] - F[k_y]) * (q_yx / q_xy if corrected else 1.0)
            K[k, k_y] = q_xy * min(1.0, ratio)
        K[k, k] = 1.0 - K[k].sum()
    return K


def hastings_kernel(kernel, M: int = 6, seed: int = 0) -> bool:
    """Week 11/01, exercise 1: the exact kernel of MH with the asymmetric flip proposal.

    The proposal flips a bit that is on with probability 0.8 and one that is off
    with probability 0.2 (uniformly within the group); when one group is empty
    it flips a bit of the other group.

    Parameters
    ----------
    kernel : callable ``F -> Tensor (2^M, 2^M)``, or None
        ``F`` (2^M,) float64 holds the free energy of every state, state ``k``
        having bits ``x_i = (k >> i) & 1``; entry [k, l] of the result is the
        probability that one MH step moves state k to state l.

    Compared entry by entry (to 1e-12) with a state-by-state construction for
    two random free-energy tables, and checked for p K = p with p ~ exp(-F).
    """
    if kernel is None:
        return _pending("Week 11/01, exercise 1", "kernel(F) returning the 2^M x 2^M Hastings-corrected kernel")
    gen = torch.Generator().manual_seed(seed)
    errors = {"entries": 0.0, "pK - p": 0.0}
    for scale in (1.0, 3.0):
        F = scale * torch.randn(2**M, generator=gen, dtype=DT)
        K = _call(kernel, F)
        p = torch.softmax(-F, 0)
        ref = _reference_hastings_kernel(F.tolist(), M)
        hint = ""
        if torch.allclose(K, _reference_hastings_kernel(F.tolist(), M, corrected=False), atol=1e-12):
            hint = "This is the kernel without the Hastings factor q(x|y)/q(y|x): p is not stationary for it."
        errors["entries"] = max(errors["entries"], _compare("kernel", K, ref, 1e-12, hint))
        errors["pK - p"] = max(errors["pK - p"], _compare("p K", p @ K, p, 1e-12))
    return _done("Week 11/01, exercise 1", errors)


# ---------------------------------------------------------------------------------------------------------
# week 11/01, exercise 4: heat-bath sweeps of the Ising model

def heat_bath(sweeps, temperatures=(2.0, 2.5, 3.5), n_lattices: int = 4000, n_sweeps: int = 100,
              seed: int = 0) -> bool:
    """Week 11/01, exercise 4: heat-bath (Gibbs) sweeps sample the Ising model.

    Parameters
    ----------
    sweeps : callable ``(spins, T, n_sweeps, generator) -> spins``, or None
        The signature of :func:`helpers.ising.metropolis_sweeps`: ``spins``
        (batch, L, L) of +-1 (int8), one temperature ``T`` (J/k_B) for all.

    ``n_lattices`` independent 4 x 4 lattices start at random and run
    ``n_sweeps`` sweeps (far more than the autocorrelation time there);
    the mean energy and |m| per spin of the final lattices must lie within
    5 standard errors of exact enumeration at each temperature.
    """
    from helpers.ising import abs_magnetization, energy_per_spin, exact_observables, random_spins

    if sweeps is None:
        return _pending("Week 11/01, exercise 4", "sweeps(spins, T, n_sweeps, generator) doing heat-bath sweeps")
    gen = torch.Generator().manual_seed(seed)
    errors = {}
    for T in temperatures:
        spins = sweeps(random_spins(n_lattices, 4, gen), T, n_sweeps, gen)
        exact = exact_observables(4, T)
        for name, values in (("energy", energy_per_spin(spins)), ("abs_magnetization", abs_magnetization(spins))):
            se = values.std().item() / math.sqrt(n_lattices)
            z = abs(values.mean().item() - exact[name]) / se
            if not z < 5:
                raise SelfCheckError(f"T = {T}: <{name}> = {values.mean().item():.4f}, exact {exact[name]:.4f} "
                                     f"({z:.1f} standard errors). Check the probability sigma(2 h / T) of s = +1 and "
                                     "that each colour of the checkerboard is updated from the other one.")
            errors[f"{name} at T = {T}"] = f"{z:.1f} se off"
    return _done("Week 11/01, exercise 4", errors)


# ---------------------------------------------------------------------------------------------------------
# week 12/02, exercises 1, 2, 3 and 6

def _f64(*values):
    return tuple(torch.tensor(v, dtype=DT) for v in values)


def _quadrature(f, lo, hi, n=200_001):
    z = torch.linspace(lo, hi, n, dtype=DT)
    return torch.trapezoid(f(z), z)


def gaussian_kl(kl, seed: int = 0) -> bool:
    """Week 12/02, exercise 1: KL(N(mu1, sigma1^2) || N(mu2, sigma2^2)) per dimension, in nats.

    Parameters
    ----------
    kl : callable ``(mu1, sigma1, mu2, sigma2) -> Tensor``, or None
        Elementwise on tensors of one shape (standard deviations, not variances).

    Compared with numerical quadrature of q log(q/p) on five parameter sets
    (to 1e-8) and with ``torch.distributions.kl_divergence`` on a random batch
    of shape (64, 3) (to 1e-12).
    """
    if kl is None:
        return _pending("Week 12/02, exercise 1", "kl(mu1, sigma1, mu2, sigma2)")
    from torch.distributions import Normal, kl_divergence

    errors = {}
    cases = [(0.0, 1.0, 0.0, 1.0), (1.0, 0.5, 0.0, 1.0), (-0.3, 2.0, 0.7, 0.8), (2.0, 0.3, -1.0, 1.5),
             (0.0, 1.0, 0.0, 3.0)]
    err = 0.0
    for mu1, s1, mu2, s2 in cases:
        q, p = Normal(*_f64(mu1, s1)), Normal(*_f64(mu2, s2))
        exact = _quadrature(lambda z: q.log_prob(z).exp() * (q.log_prob(z) - p.log_prob(z)),
                            mu1 - 20 * s1, mu1 + 20 * s1)
        got = _call(kl, *(torch.tensor(v, dtype=DT) for v in (mu1, s1, mu2, s2)))
        err = max(err, _compare(f"kl{(mu1, s1, mu2, s2)} against quadrature", got.reshape(()), exact, 1e-8,
                                "Is sigma a standard deviation in your formula (not a variance)?"))
    errors["quadrature"] = err
    gen = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(2, 64, 3, generator=gen, dtype=DT)
    s1, s2 = torch.exp(0.5 * torch.randn(2, 64, 3, generator=gen, dtype=DT))
    errors["torch.distributions"] = _compare("kl on a batch", _call(kl, mu1, s1, mu2, s2),
                                             kl_divergence(Normal(mu1, s1), Normal(mu2, s2)), 1e-12)
    return _done("Week 12/02, exercise 1", errors)


def mean_field_gap(gap, seed: int = 0) -> bool:
    """Week 12/02, exercise 2: the smallest gap log p(x) - ELBO over diagonal Gaussian q, in nats.

    Parameters
    ----------
    gap : callable ``precision -> float or 0-d Tensor``, or None
        ``precision`` is the (d, d) posterior precision matrix Lambda (float64).

    Compared (to 1e-10) with KL(N(m, diag(1/Lambda_jj)) || N(m, Lambda^-1)) from
    ``torch.distributions`` for random precisions with d = 1, 2, 3, 5, and with
    -1/2 log(1 - rho^2) for 2-D posteriors of correlation rho = 0, 0.5, 0.9, 0.99.
    """
    if gap is None:
        return _pending("Week 12/02, exercise 2", "gap(precision) returning the smallest mean-field gap in nats")
    from torch.distributions import MultivariateNormal, kl_divergence

    gen = torch.Generator().manual_seed(seed)
    err = 0.0
    for d in (1, 2, 3, 5):
        A = torch.randn(d, d, generator=gen, dtype=DT)
        precision = torch.eye(d, dtype=DT) + A @ A.T
        m = torch.randn(d, generator=gen, dtype=DT)
        exact = kl_divergence(MultivariateNormal(m, torch.diag(1 / precision.diagonal())),
                              MultivariateNormal(m, precision_matrix=precision))
        err = max(err, _compare(f"gap for d = {d}", _call(gap, precision).reshape(()), exact, 1e-10))
    err_rho = 0.0
    for rho in (0.0, 0.5, 0.9, 0.99):
        cov = torch.tensor([[2.0, rho * math.sqrt(2.0 * 0.5)], [rho * math.sqrt(2.0 * 0.5), 0.5]], dtype=DT)
        err_rho = max(err_rho, _compare(f"gap at rho = {rho}", _call(gap, torch.linalg.inv(cov)).reshape(()),
                                        torch.tensor(-0.5 * math.log(1 - rho**2), dtype=DT), 1e-10))
    return _done("Week 12/02, exercise 2", {"random precisions": err, "2-D closed form": err_rho})


def iwae_bound(bound, n: int = 20_000, seed: int = 0) -> bool:
    """Week 12/02, exercise 3: the K-sample bound log (1/K) sum_k w_k from log-weights.

    Parameters
    ----------
    bound : callable ``log_w -> Tensor (n,)``, or None
        ``log_w`` (n, K) holds log w_k = log p(x, z_k) - log q(z_k | x) of n
        independent estimates; return the n values log (1/K) sum_k w_k (nats).

    Checks: (i) against float64 ``logsumexp`` on random log-weights, including
    log-weights near -1000 where exp underflows (to 1e-10); (ii) on a 1-D
    linear-Gaussian model (z ~ N(0, 1), x | z ~ N(w z, s^2), log p(x) exact):
    with q the exact posterior every estimate equals log p(x) (to 1e-10); with
    a too-narrow q the mean for K = 1 is the closed-form ELBO and the means for
    K = 1, 4, 16, 64 rise and stay below log p(x), each within 5 standard errors.
    """
    if bound is None:
        return _pending("Week 12/02, exercise 3", "bound(log_w) returning log (1/K) sum_k w_k for each row")
    from torch.distributions import Normal

    gen = torch.Generator().manual_seed(seed)
    log_w = torch.cat([torch.randn(50, 8, generator=gen, dtype=DT),
                       -1000 + torch.randn(50, 8, generator=gen, dtype=DT)])
    errors = {"log-mean-exp": _compare("bound on random log-weights", _call(bound, log_w),
                                       torch.logsumexp(log_w, 1) - math.log(8), 1e-10,
                                       "Subtract the largest log-weight before exponentiating (log-sum-exp).")}
    w, s, x = 1.5, 0.5, 1.2
    log_px = Normal(*_f64(0.0, math.sqrt(w**2 + s**2))).log_prob(torch.tensor(x, dtype=DT))
    post_mean, post_sd = w * x / (w**2 + s**2), s / math.sqrt(w**2 + s**2)

    def log_weights(mean, sd, K):
        z = mean + sd * torch.randn(n, K, generator=gen, dtype=DT)
        return (Normal(*_f64(0.0, 1.0)).log_prob(z) + Normal(w * z, torch.tensor(s, dtype=DT)).log_prob(
            torch.tensor(x, dtype=DT)) - Normal(*_f64(mean, sd)).log_prob(z))

    errors["q = posterior"] = _compare("bound with q = posterior", _call(bound, log_weights(post_mean, post_sd, 16)),
                                       log_px.expand(n), 1e-10, "With q = p(z|x) every weight equals p(x).")
    sd_q = 0.5 * post_sd
    # closed-form ELBO of q = N(post_mean, sd_q^2): E_q[log p(x|z) + log p(z) - log q(z)]
    elbo = (-0.5 * math.log(2 * math.pi * s**2) - ((x - w * post_mean) ** 2 + w**2 * sd_q**2) / (2 * s**2)
            - 0.5 * math.log(2 * math.pi) - (post_mean**2 + sd_q**2) / 2
            + 0.5 * math.log(2 * math.pi * math.e * sd_q**2))
    previous = -math.inf
    for K in (1, 4, 16, 64):
        est = _call(bound, log_weights(post_mean, sd_q, K))
        mean, se = est.mean().item(), est.std().item() / math.sqrt(n)
        if K == 1 and not abs(mean - elbo) < 5 * se:
            raise SelfCheckError(f"K = 1: mean {mean:.4f}, closed-form ELBO {elbo:.4f} "
                                 f"({abs(mean - elbo) / se:.1f} se)")
        if not (mean < log_px.item() + 5 * se and mean > previous - 5 * se):
            raise SelfCheckError(f"K = {K}: mean {mean:.4f} is not between the previous K's {previous:.4f} and "
                                 f"log p(x) = {log_px.item():.4f} (se {se:.4f})")
        previous = mean
        errors[f"log p(x) - L_{K}"] = log_px.item() - mean
    return _done("Week 12/02, exercise 3", errors)


def gibbs_bogoliubov(variational_free_energy, exact_free_energy) -> bool:
    """Week 12/02, exercise 6: Gaussian trial distributions for E(z) = z^2/2 + lambda z^4 at k_B T = 1.

    Parameters
    ----------
    variational_free_energy : callable ``(s, lam) -> float``, or None
        F[q] = <E>_q - H[q] in closed form for q = N(0, s^2), nats.
    exact_free_energy : callable ``lam -> float``, or None
        F = -log int exp(-E(z)) dz, nats.

    Both are compared with numerical quadrature on [-30, 30] (to 1e-7) for
    lambda = 0, 0.1, 1 and s = 0.3, 0.7, 1; the check also confirms the
    Gibbs-Bogoliubov inequality min_s F[q] >= F.
    """
    if variational_free_energy is None or exact_free_energy is None:
        return _pending("Week 12/02, exercise 6",
                        "variational_free_energy(s, lam) and exact_free_energy(lam)")
    from torch.distributions import Normal

    err_q = err_f = 0.0
    for lam in (0.0, 0.1, 1.0):
        def energy(z, lam=lam):
            return z**2 / 2 + lam * z**4

        exact = -math.log(_quadrature(lambda z: torch.exp(-energy(z)), -30, 30).item())
        err_f = max(err_f, _compare(f"exact_free_energy({lam})", _call(exact_free_energy, lam).reshape(()),
                                    torch.tensor(exact, dtype=DT), 1e-7))
        best = math.inf
        for s in (0.3, 0.7, 1.0):
            q = Normal(*_f64(0.0, s))
            f_q = _quadrature(lambda z: q.log_prob(z).exp() * (energy(z) + q.log_prob(z)), -30 * s, 30 * s).item()
            got = _call(variational_free_energy, s, lam).reshape(())
            err_q = max(err_q, _compare(f"variational_free_energy({s}, {lam})", got, torch.tensor(f_q, dtype=DT), 1e-7,
                                        "<z^4> under N(0, s^2) is 3 s^4; H[q] = log(2 pi e s^2) / 2."))
            best = min(best, got.item())
        if not best >= exact - 1e-9:
            raise SelfCheckError(f"lambda = {lam}: F[q] = {best} below the exact F = {exact}, "
                                 "which the Gibbs-Bogoliubov inequality forbids")
    return _done("Week 12/02, exercise 6", {"F[q]": err_q, "F": err_f})
