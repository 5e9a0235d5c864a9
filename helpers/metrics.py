"""Measurements of what a model has learned, on features it produces.

:func:`knn_accuracy` asks whether a representation (for example the posterior
means of a VAE) separates the digit classes: a k-nearest-neighbour classifier
fitted on one part of the features and scored on another. Chance is the
frequency of the most common label (about 11% on MNIST); a representation that
ignores its input scores near chance.
"""
from __future__ import annotations

import torch

from ._validate import check_count


def knn_accuracy(train_features, train_labels, test_features, test_labels, k: int = 10,
                 batch_size: int = 1000) -> float:
    """Accuracy of a k-nearest-neighbour classifier (Euclidean distance, majority vote).

    Parameters
    ----------
    train_features : Tensor (n, d)
        Reference points; ``train_labels`` (n,) integer labels.
    test_features : Tensor (m, d)
        Points to classify; ``test_labels`` (m,) integer labels.
    k : int
        Neighbours per vote, ``1 <= k <= n``. Ties between labels go to the smallest label;
        ties in distance go to the reference point that comes first.

    Returns
    -------
    float in [0, 1]: the fraction of test points whose vote equals their label.
    """
    for name, f, lab in (("train", train_features, train_labels), ("test", test_features, test_labels)):
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or not f.is_floating_point():
            raise ValueError(f"{name}_features must be a float tensor of shape (n, d), got "
                             f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
        if not isinstance(lab, torch.Tensor) or lab.shape != f.shape[:1] or lab.is_floating_point():
            raise ValueError(f"{name}_labels must be an integer tensor of shape ({f.shape[0]},), got "
                             f"{tuple(lab.shape) if isinstance(lab, torch.Tensor) else type(lab).__name__}")
        if not torch.isfinite(f).all():
            raise ValueError(f"{name}_features contain NaN or infinite values")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train and test features need the same dimension, got {train_features.shape[1]} "
                         f"and {test_features.shape[1]}")
    k = check_count("k", k)
    if k > len(train_features):
        raise ValueError(f"k = {k} exceeds the {len(train_features)} reference points; use a smaller k")
    ref, ref_y = train_features.double(), train_labels.long()
    n_classes = int(max(ref_y.max(), test_labels.max())) + 1
    correct = 0
    for i in range(0, len(test_features), batch_size):
        q = test_features[i:i + batch_size].double()
        dist = torch.cdist(q, ref)
        idx = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        votes = torch.zeros(len(q), n_classes, dtype=torch.long).scatter_add_(
            1, ref_y[idx], torch.ones_like(idx))
        correct += int((votes.argmax(1) == test_labels[i:i + batch_size].long()).sum())
    return correct / len(test_features)
