"""The exercise self-checks accept right answers, reject typical wrong ones, and skip unsolved ones."""
import math

import pytest
import torch

from helpers import selfcheck
from helpers.ising import metropolis_sweeps
from helpers.selfcheck import SelfCheckError

DT = torch.float64


def f64(value):
    return torch.tensor(value, dtype=DT)


# right answers, written from the closed forms (the checks compute theirs by enumeration and quadrature)

def p_h_plus(x, W, b):
    return torch.sigmoid(2 * (b + x @ W))


def spin_free_energy(x, W, a, b):
    u = b + x @ W
    return -x @ a - (u.abs() + torch.log1p(torch.exp(-2 * u.abs()))).sum(-1)   # log 2 cosh u = |u| + log(1 + e^-2|u|)


def hastings_kernel(F, p_on=0.8):
    n = len(F)
    M = n.bit_length() - 1
    bits = (torch.arange(n)[:, None] >> torch.arange(M)) & 1
    n_on = bits.sum(1, keepdim=True).to(DT)
    n_off = M - n_on
    q_on = torch.where(n_off > 0, f64(p_on), f64(1.0)) / n_on.clamp(min=1)
    q_off = torch.where(n_on > 0, f64(1 - p_on), f64(1.0)) / n_off.clamp(min=1)
    q = torch.where(bits == 1, q_on, q_off)                          # q(x ^ e_i | x), (n, M)
    K = torch.zeros(n, n, dtype=DT)
    k = torch.arange(n)
    for i in range(M):
        k_y = k ^ (1 << i)
        K[k, k_y] = q[k, i] * torch.clamp(torch.exp(F[k] - F[k_y]) * q[k_y, i] / q[k, i], max=1)
    K[k, k] = 1 - K.sum(1)
    return K


def heat_bath_sweeps(spins, T, n_sweeps, generator):
    s = spins.clone().to(torch.int8)
    L = s.shape[-1]
    colour = ((torch.arange(L)[:, None] + torch.arange(L)) % 2).bool()
    for _ in range(n_sweeps):
        for c in (colour, ~colour):
            h = (s.roll(1, 1) + s.roll(-1, 1) + s.roll(1, 2) + s.roll(-1, 2)).to(DT)
            up = torch.rand(s.shape, generator=generator, dtype=DT) < torch.sigmoid(2 * h / T)
            s = torch.where(c, torch.where(up, 1, -1).to(torch.int8), s)
    return s


def gaussian_kl(mu1, s1, mu2, s2):
    return torch.log(s2 / s1) + (s1**2 + (mu1 - mu2) ** 2) / (2 * s2**2) - 0.5


def mean_field_gap(precision):
    return 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))


def iwae(log_w):
    return torch.logsumexp(log_w, 1) - math.log(log_w.shape[1])


def variational_free_energy(s, lam):
    return s**2 / 2 + 3 * lam * s**4 - 0.5 * math.log(2 * math.pi * math.e * s**2)


def exact_free_energy(lam):
    z = torch.linspace(-15, 15, 300_001, dtype=DT)
    return -math.log(torch.trapezoid(torch.exp(-z**2 / 2 - lam * z**4), z).item())


RIGHT = [
    (selfcheck.spin_rbm, (p_h_plus, spin_free_energy)),
    (selfcheck.hastings_kernel, (hastings_kernel,)),
    (selfcheck.heat_bath, (heat_bath_sweeps,)),
    (selfcheck.gaussian_kl, (gaussian_kl,)),
    (selfcheck.mean_field_gap, (mean_field_gap,)),
    (selfcheck.iwae_bound, (iwae,)),
    (selfcheck.gibbs_bogoliubov, (variational_free_energy, exact_free_energy)),
]


@pytest.mark.parametrize("check, answer", RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_right_answers_pass(check, answer, capsys):
    assert check(*answer) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("check, answer", RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_unsolved_exercises_only_print(check, answer, capsys):
    assert check(*([None] * len(answer))) is False
    assert "not solved yet" in capsys.readouterr().out


def test_metropolis_also_samples_the_ising_model():
    # the heat-bath check is statistical: any correct Ising sampler passes it
    assert selfcheck.heat_bath(metropolis_sweeps, n_lattices=2000)


WRONG = [
    (selfcheck.spin_rbm, (lambda x, W, b: torch.sigmoid(b + x @ W), spin_free_energy), "0/1 answer"),
    (selfcheck.spin_rbm, (p_h_plus, lambda x, W, a, b: spin_free_energy(x, W, a, b) + math.log(2) * W.shape[1]),
     "additive constant"),
    (selfcheck.hastings_kernel, (lambda F: hastings_kernel(F, p_on=0.5),), "largest error"),
    (selfcheck.heat_bath, (lambda s, T, n, g: heat_bath_sweeps(s, 2 * T, n, g),), "standard errors"),
    (selfcheck.gaussian_kl, (lambda m1, s1, m2, s2: gaussian_kl(m1, s1**2, m2, s2**2),), "standard deviation"),
    (selfcheck.mean_field_gap, (lambda P: 0.5 * (P.diagonal().log().sum() + torch.logdet(P)),), "largest error"),
    (selfcheck.iwae_bound, (lambda lw: torch.log(torch.exp(lw).mean(1)),), "NaN or inf"),
    (selfcheck.iwae_bound, (lambda lw: lw.mean(1),), "largest error"),
    (selfcheck.gibbs_bogoliubov, (lambda s, lam: s**2 / 2 + lam * s**4 - 0.5 * math.log(2 * math.pi * math.e * s**2),
                                  exact_free_energy), r"3 s\^4"),
]


@pytest.mark.parametrize("check, answer, message", WRONG)
def test_wrong_answers_fail_with_a_hint(check, answer, message):
    with pytest.raises(SelfCheckError, match=message):
        check(*answer)


def test_uncorrected_kernel_is_named():
    def uncorrected(F):
        n, M = len(F), len(F).bit_length() - 1
        bits = (torch.arange(n)[:, None] >> torch.arange(M)) & 1
        n_on = bits.sum(1, keepdim=True).to(DT)
        q = torch.where(bits == 1, torch.where(M - n_on > 0, f64(0.8), f64(1.0)) / n_on.clamp(min=1),
                        torch.where(n_on > 0, f64(0.2), f64(1.0)) / (M - n_on).clamp(min=1))
        K = torch.zeros(n, n, dtype=DT)
        k = torch.arange(n)
        for i in range(M):
            K[k, k ^ (1 << i)] = q[k, i] * torch.clamp(torch.exp(F[k] - F[k ^ (1 << i)]), max=1)
        K[k, k] = 1 - K.sum(1)
        return K

    with pytest.raises(SelfCheckError, match="without the Hastings factor"):
        selfcheck.hastings_kernel(uncorrected)
