"""helpers.metrics.knn_accuracy against a brute-force nearest-neighbour vote written with numpy."""
import numpy as np
import pytest
import torch

from helpers.metrics import knn_accuracy


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
