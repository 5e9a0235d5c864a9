"""helpers.metrics.knn_accuracy against a brute-force nearest-neighbour vote written with numpy."""
import numpy as np
import pytest
import torch

from helpers.metrics import knn_accuracy, mode_coverage


def _brute_force(ref, ref_y, qry, qry_y, k):
    correct = 0
    for q, label in zip(qry, qry_y):
        d = np.sqrt(((ref - q) ** 2).sum(1))
        nearest = sorted(range(len(ref)), key=lambda j: (d[j], j))[:k]
        votes = np.bincount(ref_y[nearest], minlength=10)
        correct += int(np.argmax(votes) == label)  # argmax: the smallest label wins ties
    return correct / len(qry)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    ref, qry = rng.normal(size=(200, 3)), rng.normal(size=(150, 3))
    ref_y, qry_y = rng.integers(0, 4, 200), rng.integers(0, 4, 150)
    ref_y[ref[:, 0] > 0.5] = 1  # some structure, so that the accuracy is not just chance
    qry_y[qry[:, 0] > 0.5] = 1
    got = knn_accuracy(torch.tensor(ref), torch.tensor(ref_y), torch.tensor(qry), torch.tensor(qry_y), k=k,
                       batch_size=64)
    assert got == pytest.approx(_brute_force(ref, ref_y, qry, qry_y, k), abs=1e-12)


def test_separated_clusters_are_classified_and_one_point_is_chance():
    centres = torch.eye(5) * 10
    labels = torch.arange(5).repeat(40)
    x = centres[labels] + torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert knn_accuracy(x[::2], labels[::2], x[1::2], labels[1::2]) == 1.0
    same = torch.zeros(200, 5)  # every point identical: ties go to the first reference points
    acc = knn_accuracy(same[::2], labels[::2], same[1::2], labels[1::2], k=10)
    assert acc == pytest.approx(0.2)  # the vote is always label 0..4 of the first ten: one class in five


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k must be"), (dict(k=11), "exceeds"),
    (dict(test_features=torch.zeros(4, 3)), "same dimension"),
    (dict(train_labels=torch.zeros(10)), "integer tensor"),
    (dict(train_features=torch.full((10, 2), float("nan"))), "NaN"),
])
def test_bad_arguments(kwargs, match):
    args = dict(train_features=torch.zeros(10, 2), train_labels=torch.zeros(10, dtype=torch.long),
                test_features=torch.zeros(4, 2), test_labels=torch.zeros(4, dtype=torch.long), k=3)
    args.update(kwargs)
    if "test_features" in kwargs:
        args["test_labels"] = torch.zeros(len(kwargs["test_features"]), dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        knn_accuracy(**args)


# ---------------------------------------------------------------------- mode_coverage
def _ring(k=8, radius=2.0):
    angles = 2 * np.pi * np.arange(k) / k
    return torch.tensor(np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1))


def test_mode_coverage_counts_a_hand_made_set():
    c = _ring()
    right = torch.tensor([1.0, 0.0], dtype=torch.float64)
    samples = torch.cat([c[0].repeat(5, 1),                   # 5 exactly on mode 0
                         c[1] + 0.05 * right.repeat(3, 1),    # 3 at 2.5 sigma from mode 1: high quality
                         c[2] + 0.07 * right.repeat(2, 1),    # 2 at 3.5 sigma from mode 2: not
                         torch.zeros(1, 2, dtype=torch.float64)])  # the origin: far from every mode
    got = mode_coverage(samples, c, 0.02)
    assert got.modes_covered == 2
    assert got.high_quality_fraction == pytest.approx(8 / 11)
    assert got.counts.tolist() == [5, 3, 0, 0, 0, 0, 0, 0]
    assert mode_coverage(samples, c, 0.02, min_count=4).modes_covered == 1   # mode 1 has only 3
    assert mode_coverage(samples, c, 0.02, n_std=4.0).modes_covered == 3     # 3.5 sigma now inside
    per_mode = torch.full((8,), 0.02, dtype=torch.float64)
    per_mode[1] = 0.01                                                       # 5 sigma for mode 1 now
    assert mode_coverage(samples, c, per_mode).counts.tolist() == [5, 0, 0, 0, 0, 0, 0, 0]


def test_mode_coverage_of_samples_from_six_of_eight_gaussians():
    """Exact samples of 6 of the 8 modes: 6 covered, and the high-quality fraction is the
    probability 1 - exp(-9/2) that a 2-D Gaussian lies within 3 sigma (chi-square, 2 dof)."""
    rng = np.random.default_rng(0)
    c, sigma, n = _ring(), 0.05, 24000
    which = rng.integers(0, 6, n)
    samples = c[which].numpy() + sigma * rng.normal(size=(n, 2))
    got = mode_coverage(samples, c, sigma)
    p = 1 - np.exp(-4.5)
    assert got.modes_covered == 6
    assert abs(got.high_quality_fraction - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert got.counts[6:].sum() == 0 and got.counts.sum() == round(got.high_quality_fraction * n)
    expected = np.bincount(which, minlength=8)[:6] * p
    assert np.all(np.abs(got.counts[:6].numpy() - expected) < 5 * np.sqrt(expected))


@pytest.mark.parametrize("kwargs, match", [
    (dict(samples=torch.zeros(5, 3)), "dimension 3"),
    (dict(scale=-1.0), "scale must be"), (dict(scale=torch.ones(3)), "one per centre"),
    (dict(n_std=0.0), "n_std must be"), (dict(min_count=0), "min_count must be"),
    (dict(samples=torch.full((4, 2), float("nan"))), "NaN"), (dict(samples=torch.zeros(4)), "shape"),
])
def test_mode_coverage_refuses_bad_arguments(kwargs, match):
    args = dict(samples=torch.zeros(5, 2), centres=_ring(), scale=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mode_coverage(**args)
