"""Probabilistic PCA in closed form (Tipping & Bishop 1999), the optimum a linear-Gaussian VAE reaches.

The model, for data x in R^D and a latent z in R^q (q < D):

    z ~ N(0, I_q),    x | z ~ N(W z + mu, sigma^2 I_D),    so    x ~ N(mu, C),  C = W W^T + sigma^2 I_D.

Its maximum-likelihood parameters follow from the eigen-decomposition of the
sample covariance S = (1/n) sum_n (x_n - mean)(x_n - mean)^T (the 1/n of maximum
likelihood), eigenvalues lambda_1 >= ... >= lambda_D with eigenvectors u_i:

    mu_ML = mean,    sigma^2_ML = (1/(D - q)) sum_{i > q} lambda_i   (the mean discarded eigenvalue),
    W_ML = U_q (Lambda_q - sigma^2_ML I)^{1/2} R                     (R any q x q rotation; here R = I),

and the maximum log-likelihood per data point is
-1/2 [D log 2 pi + sum_{i <= q} log lambda_i + (D - q) log sigma^2_ML + D]: the model
covariance C keeps the top q eigenvalues of S and replaces the others by their mean.
The posterior is Gaussian with an input-independent covariance,

    z | x ~ N(M^{-1} W^T (x - mu), sigma^2 M^{-1}),    M = W^T W + sigma^2 I_q,

which is why a VAE whose encoder is linear with a constant variance can represent it
exactly (:class:`helpers.nets.LinearEncoder`). Everything is computed in float64.

* :func:`fit_ppca`: the closed-form fit, a :class:`PPCA`;
* :func:`ppca_log_likelihood`: log N(x; mu, W W^T + sigma^2 I) per data point, nats;
* :func:`ppca_posterior`: the exact posterior q(z | x) = p(z | x);
* :func:`principal_angles`: angles between two subspaces (compare a learned W with U_q).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._validate import check_count

__all__ = ["PPCA", "fit_ppca", "ppca_log_likelihood", "ppca_posterior", "principal_angles"]

_LOG_2PI = math.log(2 * math.pi)


class PPCA(NamedTuple):
    """A probabilistic PCA model; :func:`fit_ppca` returns the maximum-likelihood one.

    Attributes
    ----------
    mean : Tensor, shape (D,)
    W : Tensor, shape (D, q)
        Loadings (the decoder's weight matrix).
    sigma2 : float
        Isotropic noise variance, > 0.
    eigenvalues : Tensor, shape (D,)
        Of the sample covariance, descending (from :func:`fit_ppca`; empty if built by hand).
    eigenvectors : Tensor, shape (D, D)
        Matching columns u_i, each signed so that its largest entry (the first of ties) is positive.
    """

    mean: torch.Tensor
    W: torch.Tensor
    sigma2: float
    eigenvalues: torch.Tensor = torch.empty(0, dtype=torch.float64)
    eigenvectors: torch.Tensor = torch.empty(0, 0, dtype=torch.float64)

    @property
    def covariance(self) -> torch.Tensor:
        """C = W W^T + sigma^2 I, shape (D, D)."""
        return self.W @ self.W.T + self.sigma2 * torch.eye(self.W.shape[0], dtype=self.W.dtype)


def _check_data(x, name="x"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, D), got {type(x).__name__}")
    if x.dim() != 2:
        hint = "; flatten lattices or images with x.reshape(len(x), -1)" if x.dim() > 2 else ""
        raise ValueError(f"{name} must have shape (n, D), got {tuple(x.shape)}{hint}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds {int((~torch.isfinite(x)).sum())} NaN or infinite values; clean the data first")
    return x


def _check_model(model, D):
    if not isinstance(model, PPCA):
        raise TypeError(f"model must be a helpers.ppca.PPCA (from fit_ppca), got {type(model).__name__}")
    if model.W.dim() != 2 or model.W.shape[0] != D or model.mean.shape != (D,):
        raise ValueError(f"the model is for {model.W.shape[0]}-dimensional data (W {tuple(model.W.shape)}, mean "
                         f"{tuple(model.mean.shape)}), the data have D = {D}")
    if not model.sigma2 > 0:
        raise ValueError(f"sigma2 must be positive, got {model.sigma2!r}")
    return model.mean.to(torch.float64), model.W.to(torch.float64), float(model.sigma2)


def fit_ppca(x, q: int) -> PPCA:
    """Maximum-likelihood probabilistic PCA of the rows of ``x``, in closed form.

    Parameters
    ----------
    x : Tensor, shape (n, D)
        Data, one row per point (n >= 2), real values.
    q : int
        Latent dimension, 1 <= q < D.

    Returns
    -------
    PPCA
        ``mean`` (D,), ``W`` = U_q (Lambda_q - sigma^2 I)^{1/2} (D, q), ``sigma2`` = the mean of
        the D - q smallest eigenvalues of the sample covariance (1/n normalisation), and
        that covariance's ``eigenvalues`` (descending) and ``eigenvectors``. float64.

    Raises
    ------
    ValueError
        Bad shapes, q out of range, or data that lie in a q-dimensional affine subspace
        (then sigma^2_ML = 0 and the likelihood is unbounded: use a smaller q).
    """
    x = _check_data(x)
    n, D = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 data points for a covariance, got {n}")
    if D < 2:
        raise ValueError(f"probabilistic PCA needs D >= 2 dimensions (q < D), got D = {D}")
    q = check_count("q", q)
    if q >= D:
        raise ValueError(f"q must be smaller than the data dimension D = {D}, got q = {q}")
    mean = x.mean(0)
    xc = x - mean
    S = xc.T @ xc / n
    eigenvalues, eigenvectors = torch.linalg.eigh(S)                 # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0.0), eigenvectors.flip(1)
    biggest = eigenvectors.abs().argmax(0)
    signs = torch.sign(eigenvectors[biggest, torch.arange(D)])
    eigenvectors = eigenvectors * torch.where(signs == 0, 1.0, signs)
    sigma2 = eigenvalues[q:].mean().item()
    if not sigma2 > 1e-12 * max(eigenvalues[0].item(), 1e-300):
        raise ValueError(f"the data lie (numerically) in a {q}-dimensional affine subspace: the {D - q} discarded "
                         f"eigenvalues are all ~0, so sigma^2_ML = {sigma2:.3g} and the likelihood is unbounded; "
                         "use a smaller q")
    W = eigenvectors[:, :q] * (eigenvalues[:q] - sigma2).clamp_min(0.0).sqrt()
    return PPCA(mean, W, sigma2, eigenvalues, eigenvectors)


def ppca_log_likelihood(model: PPCA, x) -> torch.Tensor:
    """log N(x_n; mu, W W^T + sigma^2 I) of each row, nats per data point.

    Parameters
    ----------
    model : PPCA
        Any W (D, q) and sigma2 > 0 (not only the maximum-likelihood ones).
    x : Tensor, shape (n, D)

    Returns
    -------
    Tensor, shape (n,), float64.
    """
    x = _check_data(x)
    mean, W, sigma2 = _check_model(model, x.shape[1])
    D = x.shape[1]
    chol = torch.linalg.cholesky(W @ W.T + sigma2 * torch.eye(D, dtype=torch.float64))
    r = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)          # (D, n): C^{-1/2} (x - mu)
    log_det = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (D * _LOG_2PI + log_det + (r**2).sum(0))


def ppca_posterior(model: PPCA, x):
    """The exact posterior p(z | x) = N(M^{-1} W^T (x - mu), sigma^2 M^{-1}), M = W^T W + sigma^2 I.

    Parameters
    ----------
    model : PPCA
    x : Tensor, shape (n, D)

    Returns
    -------
    (mean, covariance)
        ``mean`` (n, q), ``covariance`` (q, q), the same for every x. float64.
    """
    x = _check_data(x)
    mean, W, sigma2 = _check_model(model, x.shape[1])
    M = W.T @ W + sigma2 * torch.eye(W.shape[1], dtype=torch.float64)
    return torch.linalg.solve(M, W.T @ (x - mean).T).T, sigma2 * torch.linalg.inv(M)


def principal_angles(A, B) -> torch.Tensor:
    """Principal angles between the column spaces of ``A`` (D, p) and ``B`` (D, r), radians, ascending.

    theta_1 <= ... <= theta_k, k = min(p, r): cos theta_i are the singular values of
    Q_A^T Q_B (orthonormal bases from QR). Small angles are taken from the sines
    (singular values of the part of Q_B outside span A), which stay accurate where
    arccos of a cosine near 1 would not (Bjorck & Golub 1973). All zero: the smaller
    space lies inside the larger; pi/2: orthogonal directions.

    Parameters
    ----------
    A, B : Tensor, shapes (D, p) and (D, r)
        Full column rank, the same D (a vector (D,) is taken as one column).

    Returns
    -------
    Tensor, shape (min(p, r),), float64.
    """
    A, B = (_check_data(M if not isinstance(M, torch.Tensor) or M.dim() != 1 else M[:, None], name)
            for M, name in ((A, "A"), (B, "B")))
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must have the same number of rows (the dimension D), got {A.shape[0]} "
                         f"and {B.shape[0]}")
    if A.shape[1] < B.shape[1]:
        A, B = B, A
    qa, ra = torch.linalg.qr(A)
    qb, rb = torch.linalg.qr(B)
    for name, r, M in (("A", ra, A), ("B", rb, B)):
        if torch.diagonal(r).abs().min() <= 1e-12 * max(M.abs().max().item(), 1e-300):
            raise ValueError(f"the columns of {name} are linearly dependent; pass a full-rank basis")
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0)                  # descending
    sin = torch.linalg.svdvals(qb - qa @ (qa.T @ qb)).clamp(0.0, 1.0).flip(0)   # ascending
    return torch.where(cos**2 > 0.5, torch.arcsin(sin), torch.arccos(cos))
