"""helpers.baselines.independent_pixels against torch.distributions.Bernoulli."""
import pytest
import torch
from torch.distributions import Bernoulli

from helpers.baselines import independent_pixels


def test_matches_torch_distributions_with_laplace_smoothing():
    gen = torch.Generator().manual_seed(0)
    grey = torch.rand(50, 1, 4, 4, generator=gen)
    test = torch.bernoulli(torch.rand(7, 16, generator=gen), generator=gen)
    p = (grey.flatten(1).sum(0) + 1) / (50 + 2)
    expected = Bernoulli(probs=p.double()).log_prob(test.double()).sum(1)
    torch.testing.assert_close(independent_pixels(grey, test), expected)


def test_maximum_likelihood_on_the_training_set_itself():
    # With a tiny pseudo-count the fit is the MLE, whose mean log-likelihood on the training data
    # is minus the sum of the pixels' binary entropies.
    gen = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((400, 9), 0.3), generator=gen)
    p = x.mean(0).double()
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum()
    assert independent_pixels(x, x, pseudo_count=1e-9).mean().item() == pytest.approx(-entropy.item(), rel=1e-6)


@pytest.mark.parametrize("train, test, match", [
    (torch.rand(5, 4), torch.full((2, 4), 0.5), "binary"),
    (torch.rand(5, 4) * 2, torch.ones(2, 4), r"\[0, 1\]"),
    (torch.rand(5, 4), torch.ones(2, 5), "pixels per image"),
    (torch.rand(4), torch.ones(2, 4), "images"),
])
def test_bad_input(train, test, match):
    with pytest.raises(ValueError, match=match):
        independent_pixels(train, test)
