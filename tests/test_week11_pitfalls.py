"""Pitfalls of the week-11 CD notebook that no other test covers: the pseudo-likelihood
and the reconstruction error can rank two models in the opposite order to the exact
log-likelihood.

The models are built by hand on the bars data of weeks 10-11 (5 patterns of 6 pixels,
repeated 16, 14, 12, 10 and 8 times), so every number is exact:

* a "pattern detector" with one hidden unit per bar, whose free energy has a deep local
  minimum at every bar and whose bar probabilities follow the data counts (a good model);
* the same model cooled (all parameters times beta): sharper minima, so a better
  pseudo-likelihood, but the mass drains into the most frequent bar, so a worse likelihood;
* a "copy machine" (W = 20 I, a = b = -10) that reconstructs any image almost perfectly
  and is almost the uniform distribution.

The other pitfalls (detached negatives, per-sample Bernoulli draws, pseudo-likelihood differs
from log p) are tested in test_rbm_training.py, test_rbm.py and test_mcmc.py.
"""
import math

import torch

from helpers.rbm import BernoulliRBM, binary_states, pseudo_log_likelihood

D = torch.float64
BARS = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0],
                     [0, 0, 1, 0, 0, 1]], dtype=D)
COUNTS = torch.tensor([16, 14, 12, 10, 8])
X = BARS.repeat_interleave(COUNTS, dim=0)  # (60, 6)


def pattern_detector(coupling=6.0, beta=1.0):
    """Hidden unit j fires for bar j: W_ij = +c on the bar's pixels, -c elsewhere; the hidden
    bias puts unit j's input at c/2 + log(count_j) on bar j and at or below -c/2 + log(count_j) one flip away."""
    rbm = BernoulliRBM(6, 5, dtype=D)
    rbm.W = beta * coupling * (2 * BARS.T - 1)
    rbm.b = beta * (-coupling * (BARS.sum(1) - 0.5) + torch.log(COUNTS.to(D)))
    rbm.a = torch.zeros(6, dtype=D)
    return rbm


def copy_machine():
    rbm = BernoulliRBM(6, 6, dtype=D)
    rbm.W = 20.0 * torch.eye(6, dtype=D)
    rbm.a = torch.full((6,), -10.0, dtype=D)
    rbm.b = torch.full((6,), -10.0, dtype=D)
    return rbm


def mean_log_likelihood(rbm):
    return rbm.log_likelihood_exact(X).mean().item()


def reconstruction_error(rbm, x):
    """Mean squared error per pixel of the mean-field reconstruction sigmoid(a + W sigmoid(b + x W)),
    the definition of train_rbm's "recon_error"."""
    return ((x - torch.sigmoid(torch.sigmoid(x @ rbm.W + rbm.b) @ rbm.W.T + rbm.a)) ** 2).mean().item()


def test_pattern_detector_is_a_good_model_of_the_bars():
    rbm = pattern_detector()
    p_bars = rbm.log_likelihood_exact(BARS).exp()
    # close to the data frequencies, most of the mass on the bars, near the bound -H(p_data)
    assert torch.allclose(p_bars / p_bars.sum(), COUNTS.to(D) / COUNTS.sum(), atol=1e-3)
    assert p_bars.sum() > 0.9
    p_data = COUNTS.to(D) / COUNTS.sum()
    assert mean_log_likelihood(rbm) > (p_data * p_data.log()).sum().item() - 0.1
    # every bar is a strict local minimum of F: all one-bit neighbours have a higher free energy
    states = binary_states(6)
    free = rbm.free_energy(states)
    for bar in BARS:
        k = int((bar.long() * 2 ** torch.arange(6)).sum())
        assert all(free[k ^ (1 << i)] > free[k] + 1.0 for i in range(6))


def test_pseudo_likelihood_can_rank_models_opposite_to_likelihood():
    good, cold = pattern_detector(beta=1.0), pattern_detector(beta=8.0)
    ll_good, ll_cold = mean_log_likelihood(good), mean_log_likelihood(cold)
    pl_good = pseudo_log_likelihood(good, X).mean().item()
    pl_cold = pseudo_log_likelihood(cold, X).mean().item()
    # the likelihood prefers the well-calibrated model by a wide margin ...
    assert ll_good > ll_cold + 0.5, (ll_good, ll_cold)
    # ... the pseudo-likelihood prefers the cooled one (its data points sit in deeper minima)
    assert pl_cold > pl_good + 0.02, (pl_good, pl_cold)
    # and neither pseudo-likelihood is the log-likelihood
    assert abs(pl_good - ll_good) > 1.0 and abs(pl_cold - ll_cold) > 1.0
    # the cooled model really has drained its mass into the most frequent bar
    p_cold = cold.log_likelihood_exact(BARS).exp()
    assert p_cold[0] > 0.5 and p_cold[-1] < 0.05


def test_reconstruction_error_can_rank_models_opposite_to_likelihood():
    copier, good = copy_machine(), pattern_detector()
    # the copier reconstructs better, on the data and on any other image ...
    assert reconstruction_error(copier, X) < 1e-6
    assert reconstruction_error(copier, binary_states(6)) < 1e-6
    assert reconstruction_error(copier, X) < reconstruction_error(good, X)
    # ... but it is almost the uniform distribution over the 64 states
    log_p_all = copier.log_likelihood_exact(binary_states(6))
    assert (log_p_all + 6 * math.log(2)).abs().max() < 1e-3
    assert mean_log_likelihood(copier) < mean_log_likelihood(good) - 2.0


def test_pitfall_box_of_the_notebook_names_existing_tests():
    """Every ``tests/<file>.py::<test>`` named in the week-11 CD notebook exists (no stale names)."""
    import re
    from pathlib import Path

    import nbformat

    root = Path(__file__).resolve().parent.parent
    nb = nbformat.read(root / "notebooks" / "week11" / "02_training_rbms_contrastive_divergence.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    named = re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text)
    assert len(named) >= 6, named
    for filename, test in named:
        source = (root / "tests" / filename).read_text()
        assert f"def {test}(" in source, f"{filename}::{test} is named in the notebook but does not exist"
