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

The sample-quality metrics of week 14 compare generated images with real ones through the
penultimate-layer features of the course's MNIST classifier (:mod:`helpers.classifier`,
:class:`helpers.nets.MNISTClassifier`): :func:`frechet_distance` (Gaussians fitted to the two
feature sets; :func:`frechet_distance_gaussians` is the closed form it rests on),
:func:`precision_recall` (k-nearest-neighbour manifolds, Kynkäänniemi et al. 2019) and
:func:`label_histogram` (which digits are generated, and the KL of that histogram to uniform).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._validate import check_count, check_real
from .classifier import predict


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


# ---------------------------------------------------------------------- Fréchet distance
def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64), by eigendecomposition;
    eigenvalues below zero (rounding) are set to zero."""
    w, v = torch.linalg.eigh(0.5 * (c + c.T))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_gaussians(mean_a, cov_a, mean_b, cov_b) -> float:
    """The squared Fréchet (2-Wasserstein) distance between two Gaussians, in squared feature units:

        d^2 = |m_a - m_b|^2 + tr C_a + tr C_b - 2 tr (C_a^{1/2} C_b C_a^{1/2})^{1/2}

    (Dowson & Landau 1982). The product C_a^{1/2} C_b C_a^{1/2} is symmetric positive semi-definite, so
    both square roots are taken by symmetric eigendecompositions in float64, without the complex
    intermediate a general matrix square root of C_a C_b would need. Zero exactly when the two
    Gaussians are equal; for commuting covariances the last term is tr (C_a C_b)^{1/2}.

    Parameters
    ----------
    mean_a, mean_b : Tensor or array (d,)
    cov_a, cov_b : Tensor or array (d, d), symmetric positive semi-definite

    Returns
    -------
    float >= 0 (clipped at 0 against rounding).
    """
    mean_a = _as_points("mean_a", torch.as_tensor(mean_a).reshape(1, -1))[0]
    d = len(mean_a)
    mean_b = _as_points("mean_b", torch.as_tensor(mean_b).reshape(1, -1), d)[0]
    covs = []
    for name, c in (("cov_a", cov_a), ("cov_b", cov_b)):
        c = torch.as_tensor(c)
        if c.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match the means, got {tuple(c.shape)}")
        c = _as_points(name, c)
        if not torch.allclose(c, c.T, rtol=1e-6, atol=1e-9 * float(c.abs().max().clamp(min=1e-300))):
            raise ValueError(f"{name} must be symmetric (a covariance matrix)")
        covs.append(0.5 * (c + c.T))
    root_a = _psd_sqrt(covs[0])
    middle = root_a @ covs[1] @ root_a
    trace_root = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp(min=0).sqrt().sum()
    value = (mean_a - mean_b).square().sum() + covs[0].trace() + covs[1].trace() - 2 * trace_root
    return max(float(value), 0.0)


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (the FID recipe, Heusel et al. 2017).

    The sample means and the unbiased sample covariances (divisor n - 1) of ``features_a`` and
    ``features_b``, in float64, go into :func:`frechet_distance_gaussians`. With Inception-v3 features
    this is the FID; with the course's MNIST classifier (:meth:`helpers.nets.MNISTClassifier.features`)
    it is the same construction on other features, and its numbers are comparable only with each other.

    The estimate is biased upwards at finite sample sizes (two independent sets from one distribution
    give a positive value that shrinks roughly like 1/n): compare models at equal sample sizes and
    quote the distance between two real sets of the same size as the floor.

    Parameters
    ----------
    features_a : Tensor or array (n_a, d)
    features_b : Tensor or array (n_b, d)
        The same d; each set needs at least d + 1 rows, the fewest for which a sample covariance can
        be non-singular (with fewer, the estimate has rank < d and the distance is meaningless).

    Returns
    -------
    float >= 0, in squared feature units.
    """
    a = _as_points("features_a", features_a)
    b = _as_points("features_b", features_b, a.shape[1])
    d = a.shape[1]
    for name, x in (("features_a", a), ("features_b", b)):
        if len(x) < d + 1:
            raise ValueError(f"{name} has {len(x)} rows, too few for the covariance of {d}-dimensional features: "
                             f"give at least d + 1 = {d + 1} (in practice many more: the bias falls like 1/n)")
    return frechet_distance_gaussians(a.mean(0), torch.cov(a.T).reshape(d, d), b.mean(0), torch.cov(b.T).reshape(d, d))


# ---------------------------------------------------------------------- precision and recall
def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest *other* row (float64, (n,))."""
    out = []
    for i in range(0, len(x), batch_size):
        dist = torch.cdist(x[i:i + batch_size], x)
        # the (k + 1)-th smallest: the smallest is the point itself (0); topk is ~5x faster than kthvalue here
        out.append(dist.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _inside(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Bool (m,): does each query point lie in at least one ball B(ref_j, radii_j) (closed ball)?"""
    out = []
    for i in range(0, len(query), batch_size):
        out.append((torch.cdist(query[i:i + batch_size], ref) <= radii).any(dim=1))
    return torch.cat(out)


class PrecisionRecall(NamedTuple):
    """Result of :func:`precision_recall`."""

    precision: float
    """Fraction of generated samples inside the estimated manifold of the real ones."""
    recall: float
    """Fraction of real samples inside the estimated manifold of the generated ones."""


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 1000) -> PrecisionRecall:
    """Improved precision and recall of Kynkäänniemi et al. (2019), on feature vectors.

    Each set's *manifold* is estimated as the union of balls around its points, the ball of point
    phi having as radius the distance from phi to its k-th nearest neighbour within the same set
    (excluding phi itself). Then

        precision = fraction of fake points inside the real manifold   (are the samples realistic?)
        recall    = fraction of real points inside the fake manifold    (is the data's variety covered?)

    Identical sets give exactly 1 and 1; well-separated sets give 0 and 0; samples that cover only
    half of the data's modes give precision near 1 and recall near 1/2. Both depend on k and on the
    sample sizes (the paper uses k = 3 and equal sizes): compare models at equal settings only.

    Parameters
    ----------
    real_features : Tensor or array (n, d)
        Features of real data; n >= k + 1.
    fake_features : Tensor or array (m, d)
        Features of generated samples, the same d; m >= k + 1.
    k : int
        The neighbour that sets the radius, >= 1.
    batch_size : int
        Rows per distance block (memory: batch_size x max(n, m) float64 numbers).

    Returns
    -------
    PrecisionRecall
        ``(precision, recall)``, each in [0, 1].
    """
    real = _as_points("real_features", real_features)
    fake = _as_points("fake_features", fake_features, real.shape[1])
    k, batch_size = check_count("k", k), check_count("batch_size", batch_size)
    for name, x in (("real_features", real), ("fake_features", fake)):
        if len(x) < k + 1:
            raise ValueError(f"{name} has {len(x)} rows; the k-th nearest neighbour (k = {k}) needs at least "
                             f"k + 1 = {k + 1}")
    precision = _inside(fake, real, _knn_radii(real, k, batch_size), batch_size).double().mean()
    recall = _inside(real, fake, _knn_radii(fake, k, batch_size), batch_size).double().mean()
    return PrecisionRecall(float(precision), float(recall))


# ---------------------------------------------------------------------- label histogram
class LabelHistogram(NamedTuple):
    """Result of :func:`label_histogram`."""

    counts: torch.Tensor
    """(10,) int64: images classified as each digit."""
    kl_to_uniform: float
    """KL(p_hat || uniform) in nats, p_hat = counts / n: log 10 - H(p_hat), in [0, log 10]."""


def label_histogram(classifier, images, batch_size: int = 1000) -> LabelHistogram:
    """How often a classifier labels ``images`` as each digit, and the KL of that histogram to uniform.

    A generator that has collapsed onto a few digits puts its mass on few bins; KL(p_hat || U) =
    sum_k p_k log(10 p_k) (natural log, 0 log 0 = 0) is 0 for a flat histogram and log 10 = 2.303
    nats when every image gets one label (perfect 1s and 7s in equal numbers, nothing else: log 5 =
    1.609 nats). It measures neither the quality of the images (blurry blobs the classifier spreads
    evenly over the digits score near 0) nor the variety within a digit. The real test set itself is not exactly uniform
    (between 892 and 1135 images per digit): score it the same way for the reference.

    Parameters
    ----------
    classifier : nn.Module
        Images (batch, 1, 28, 28) -> 10 logits, e.g. a trained :class:`helpers.nets.MNISTClassifier`.
    images : Tensor (n, 1, 28, 28) or (n, 784)
        Grey levels in [0, 1] (refused otherwise, with the fix named).

    Returns
    -------
    LabelHistogram
        ``(counts, kl_to_uniform)``.
    """
    labels = predict(classifier, images, batch_size)
    counts = torch.bincount(labels, minlength=10)
    if len(counts) != 10:
        raise ValueError(f"the classifier must return 10 logits (digits), it predicted label {int(labels.max())}")
    p = counts.double() / counts.sum()
    kl = float((p[p > 0] * torch.log(10 * p[p > 0])).sum())
    return LabelHistogram(counts, max(kl, 0.0))
