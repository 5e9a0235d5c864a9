"""Measurements of what a model has learned, on features it produces.

:func:`knn_accuracy` asks whether a representation (for example the posterior
means of a VAE) separates the digit classes: a k-nearest-neighbour classifier
fitted on one part of the features and scored on another. Chance is the
frequency of the most common label (about 11% on MNIST); a representation that
ignores its input scores near chance.

:func:`mode_coverage` is the mode-collapse count of the low-dimensional GAN
benchmarks (a mixture of Gaussians on a ring or a grid): how many mixture
components the samples reach, and what fraction of the samples lie close to
some component.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._validate import check_count, check_real


def _as_points(name: str, x, dim: int | None = None) -> torch.Tensor:
    """``x`` (a tensor or array of shape (n, d)) as a float64 CPU tensor; ValueError naming ``name`` otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or numpy array of shape (n, d), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n, d >= 1, got {tuple(x.shape)}"
                         + ("; use x[:, None] for scalars" if x.dim() == 1 else ""))
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains {int((~torch.isfinite(x)).sum())} NaN or infinite values")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]} but the other argument has {dim}; "
                         "both must describe points of the same space")
    return x


class ModeCoverage(NamedTuple):
    """Result of :func:`mode_coverage`."""

    modes_covered: int
    """Number of modes that received at least ``min_count`` high-quality samples."""
    high_quality_fraction: float
    """Fraction of all samples within ``n_std * scale`` of their nearest centre."""
    counts: torch.Tensor
    """(K,) int64: high-quality samples per mode (those nearest to it and within its radius)."""


def mode_coverage(samples, centres, scale, n_std: float = 3.0, min_count: int = 1) -> ModeCoverage:
    """Modes covered and fraction of high-quality samples, for samples of a mixture of isotropic Gaussians.

    Each sample is assigned to its nearest centre (Euclidean distance) and counts as *high quality*
    when its distance to that centre is at most ``n_std * scale`` (of that centre). A mode is
    *covered* when at least ``min_count`` high-quality samples were assigned to it.

    With ``n_std=3`` and ``min_count=1`` these are the two numbers of Srivastava et al. (2017,
    VEEGAN, section 5.1: high quality = within three standard deviations of the nearest mode;
    modes captured = components whose mean is nearest to at least one high-quality sample, on 2,500
    samples), also used for the 2-D ring and grid benchmarks that followed. A mode reached by one
    stray sample then counts as covered; raise ``min_count`` for a stricter count, and always
    report the number of samples, since coverage grows with it.

    For reference: a d-dimensional isotropic Gaussian puts the mass P(chi^2_d <= n_std^2) within
    ``n_std`` standard deviations of its mean, 1 - exp(-n_std^2 / 2) = 0.9889 for d = 2 and
    n_std = 3, so perfect samples of well-separated modes score a high-quality fraction near that.

    Parameters
    ----------
    samples : Tensor or array (n, d)
        Generated points, in the units of the data.
    centres : Tensor or array (K, d)
        The mixture's component means.
    scale : float or Tensor/array (K,)
        Standard deviation of each component (one number for all, or one per component), > 0.
    n_std : float
        Radius of the high-quality ball in standard deviations, > 0.
    min_count : int
        High-quality samples a mode needs to count as covered, >= 1.

    Returns
    -------
    ModeCoverage
        ``(modes_covered, high_quality_fraction, counts)``; ``counts`` has shape (K,).
    """
    centres = _as_points("centres", centres)
    samples = _as_points("samples", samples, centres.shape[1])
    n_std = check_real("n_std", n_std, 0.0, low_ok=False)
    min_count = check_count("min_count", min_count)
    if isinstance(scale, (torch.Tensor, np.ndarray)):
        scale = torch.as_tensor(scale).detach().to("cpu", torch.float64).reshape(-1)
        if scale.numel() == 1:
            scale = scale.expand(len(centres))
        if scale.shape != (len(centres),) or not (torch.isfinite(scale) & (scale > 0)).all():
            raise ValueError(f"scale must be a positive number or {len(centres)} positive numbers (one per centre), "
                             f"got shape {tuple(scale.shape)} with values {scale[:4].tolist()}...")
    else:
        scale = torch.full((len(centres),), check_real("scale", scale, 0.0, low_ok=False), dtype=torch.float64)
    dist = torch.cdist(samples, centres)                      # (n, K)
    nearest_dist, nearest = dist.min(dim=1)
    good = nearest_dist <= n_std * scale[nearest]
    counts = torch.bincount(nearest[good], minlength=len(centres))
    return ModeCoverage(int((counts >= min_count).sum()), float(good.double().mean()), counts)


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
