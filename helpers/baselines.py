"""The simplest generative model of binary images, as the floor every model must beat.

Independent Bernoulli pixels: p(x) = prod_i p_i^{x_i} (1 - p_i)^{1 - x_i}, with
each p_i the fraction of training images in which pixel i is on. Its
log-likelihood is exact (no bound, no estimate), in nats per image. A generative
model that has learned nothing about how pixels go together, such as a VAE whose
posterior collapsed onto the prior, scores about this much.
"""
from __future__ import annotations

import torch


def independent_pixels(x_train, x_test, pseudo_count: float = 1.0):
    """Fit independent Bernoulli pixels on ``x_train``; return the exact log p(x) of ``x_test``.

    Parameters
    ----------
    x_train : Tensor (n, ...)
        Binary images, or grey levels in [0, 1] taken as on-probabilities (what dynamic
        binarization trains on): p_i is the pixel's mean, smoothed as
        (sum_n x_ni + pseudo_count) / (n + 2 pseudo_count) so that no p_i is 0 or 1.
    x_test : Tensor (m, ...)
        Binary images (every value 0 or 1), same number of pixels per image.
    pseudo_count : float
        Positive; 1 is Laplace's rule of succession.

    Returns
    -------
    Tensor (m,): log p(x) of each test image in nats (natural log), float64.
    """
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"{name} must be a float tensor of images (n, ...), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x_train[0].numel() != x_test[0].numel():
        raise ValueError(f"x_train has {x_train[0].numel()} pixels per image, x_test {x_test[0].numel()}")
    if torch.isnan(x_train).any() or x_train.min() < 0 or x_train.max() > 1:
        raise ValueError("x_train must hold values in [0, 1] (binary images or grey levels)")
    if not ((x_test == 0) | (x_test == 1)).all():
        raise ValueError("x_test must be binary (every pixel 0 or 1): a Bernoulli model has no likelihood for "
                         "grey levels; binarize it first (helpers.data.load_mnist(..., binarize='sample'))")
    if not pseudo_count > 0:
        raise ValueError(f"pseudo_count must be positive, got {pseudo_count}")
    xt = x_train.flatten(1).double()
    p = (xt.sum(0) + pseudo_count) / (len(xt) + 2 * pseudo_count)
    x = x_test.flatten(1).double()
    return x @ torch.log(p) + (1 - x) @ torch.log1p(-p)
