"""Variational autoencoders: likelihoods, the VAE, the ELBO, KL and IWAE, the training step (networks: helpers.nets).

Notation: the notes write the latent variable as ``h``; this module calls it
``z``, as the VAE literature does (Kingma & Welling 2014). ``x`` is the data.

The model and the variational family are

    p(z) = N(0, I),    p(x | z) = likelihood(decoder(z)),
    q(z | x) = N(mu(x), diag exp(logvar(x))),      (mu, logvar) = encoder(x)

and training maximises the evidence lower bound (ELBO)

    L(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))  <=  log p(x).

Conventions (as everywhere in the course): natural logarithms, so every number
is in nats per image; the reconstruction term is summed over pixels, the KL over
latent dimensions, and both are averaged over the batch. The expectation is
estimated with one reparameterized sample z = mu + exp(logvar / 2) * eps,
eps ~ N(0, I); the KL is exact (:func:`kl_normal_std`). ``train_vae(objective="iwae", k=...)``
trains on the importance-weighted bound L_k instead (Burda et al. 2016), and for 2-D latent
spaces :func:`quadrature_log_marginal` computes log p(x) itself by integrating over z (adaptive
quadrature), and with beta != 1 the tempered marginal that bounds the beta-objective.

Every random draw takes a ``torch.Generator`` (or a seed in :func:`train_vae`),
so the same seed gives bitwise identical results on the CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as checkpoint_io
from ._validate import check_choice, check_count, check_real

# the networks, also importable from here (`as`: an explicit re-export)
from .nets import IMAGE_SHAPE as IMAGE_SHAPE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, _check_tensor
from .train import build_settings, fit, screened_step

_LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------- networks
# The encoders and decoders live in helpers.nets (imported above) and stay importable from here.


# ---------------------------------------------------------------------- likelihoods
class BernoulliLikelihood(nn.Module):
    """p(x | z) = prod_i Bernoulli(x_i; sigmoid(logit_i)), for binary data only.

    ``log_prob(x, logits)`` = -sum_i BCE-with-logits(logit_i, x_i), computed with
    ``F.binary_cross_entropy_with_logits`` (stable for large logits).
    """

    def check_data(self, x):
        bad = (x != 0) & (x != 1)
        if bad.any():
            example = x[bad].flatten()[0].item()
            raise ValueError(
                f"the Bernoulli likelihood needs binary data (every pixel 0 or 1), but {int(bad.sum())} values "
                f"are not, e.g. {example:.4g}. Binarize first (helpers.data.load_mnist(..., binarize='sample' or "
                "'threshold'), or train_vae(..., dynamic_binarization=True) on grey levels), or use a Gaussian "
                "likelihood (likelihood='gaussian') for continuous data.")

    def log_prob(self, x, logits):
        """log p(x | z) in nats per sample: ``x`` and ``logits`` (batch, ...) -> (batch,)."""
        n = logits.shape[0]
        return -F.binary_cross_entropy_with_logits(logits.reshape(n, -1), x.reshape(n, -1), reduction="none").sum(1)

    def mean(self, logits):
        """E[x | z] = sigmoid(logits), the pixel probabilities."""
        return torch.sigmoid(logits)

    def sample(self, logits, generator=None):
        return torch.bernoulli(torch.sigmoid(logits), generator=generator)


class GaussianLikelihood(nn.Module):
    """p(x | z) = prod_i N(x_i; mean_i, sigma^2), for continuous data.

    The decoder output is the mean (no squashing). ``sigma`` is one number
    shared by all pixels: fixed (default, ``learn_sigma=False``; with sigma = 1
    the loss is half the squared error plus a constant) or learned by gradient
    ascent on the ELBO together with the networks (``learn_sigma=True``, stored
    as ``log_sigma``). As a density it can exceed 1, so its log p(x | z) can be
    positive and is not comparable with Bernoulli numbers.
    """

    def __init__(self, sigma: float = 1.0, learn_sigma: bool = False):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.learn_sigma = learn_sigma
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def extra_repr(self):
        return f"sigma={self.log_sigma.exp().item():.4g}, learn_sigma={self.learn_sigma}"

    def check_data(self, x):
        pass  # any finite values (checked by the encoder)

    def log_prob(self, x, mean):
        """log p(x | z) in nats per sample: ``x`` and ``mean`` (batch, ...) -> (batch,)."""
        n = mean.shape[0]
        r = (x.reshape(n, -1) - mean.reshape(n, -1)) * torch.exp(-self.log_sigma)
        return (-0.5 * r.square() - self.log_sigma - 0.5 * _LOG_2PI).sum(1)

    def mean(self, mean):
        return mean

    def sample(self, mean, generator=None):
        eps = _randn(mean.shape, generator, mean)
        return mean + self.log_sigma.exp() * eps


def _make_likelihood(likelihood):
    if isinstance(likelihood, nn.Module):
        return likelihood
    if likelihood in (None, "bernoulli"):
        return BernoulliLikelihood()
    if likelihood == "gaussian":
        return GaussianLikelihood()
    raise ValueError(f"likelihood must be 'bernoulli', 'gaussian' or a likelihood module, got {likelihood!r}")


def _randn(shape, generator, like):
    """Standard normal noise of ``shape`` with the dtype and device of ``like``."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


# ---------------------------------------------------------------------- the model
class VAE(nn.Module):
    """Variational autoencoder: ``encoder(x) -> (mu, logvar)``, ``decoder(z) ->``
    likelihood parameter, and a likelihood with ``log_prob(x, out)``.

    Parameters
    ----------
    encoder : nn.Module
        Maps x (batch, ...) to ``(mu, logvar)``, each (batch, latent_dim); has an
        attribute ``latent_dim`` and, optionally, ``check_input(x)``.
    decoder : nn.Module
        Maps z (batch, latent_dim) to the likelihood's parameter (batch, ...).
    likelihood : {"bernoulli", "gaussian"} or module
        ``"bernoulli"`` (default, binary data, decoder outputs logits) or
        ``"gaussian"`` (continuous data, fixed sigma = 1, decoder outputs means),
        or a :class:`BernoulliLikelihood` / :class:`GaussianLikelihood` instance.

    See :func:`mlp_vae` and :func:`conv_vae` for the two MNIST architectures.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood="bernoulli"):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = _make_likelihood(likelihood)

    @property
    def latent_dim(self) -> int:
        return self.encoder.latent_dim

    def check_input(self, x, *, data_check: bool = True):
        """Raise ``TypeError``/``ValueError`` for a non-tensor, a shape the encoder
        cannot take, NaN/inf values, or (``data_check``) data the likelihood
        does not model (non-binary data with the Bernoulli likelihood)."""
        if hasattr(self.encoder, "check_input"):
            self.encoder.check_input(x)
        else:
            _check_tensor(x, "VAE.encode")
        if data_check:
            self.likelihood.check_data(x)

    def encode(self, x):
        """q(z | x): ``x`` (batch, ...) -> ``(mu, logvar)``, each (batch, latent_dim)."""
        self.check_input(x)
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu, logvar, generator: torch.Generator | None = None):
        """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I): a sample of q(z | x)
        that is differentiable in ``mu`` and ``logvar``."""
        return mu + torch.exp(0.5 * logvar) * _randn(mu.shape, generator, mu)

    def decode(self, z):
        """``z`` (batch, latent_dim) -> the likelihood's parameter (Bernoulli logits or Gaussian means)."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"decode expects latents of shape (batch, {self.latent_dim}), got {shape}")
        return self.decoder(z)

    def decode_mean(self, z):
        """E[x | z]: pixel probabilities (Bernoulli) or means (Gaussian), same shape as the decoder output."""
        return self.likelihood.mean(self.decode(z))

    def sample(self, n: int, generator: torch.Generator | None = None, mean: bool = True):
        """``n`` images from the model: z ~ N(0, I), then E[x | z] (``mean=True``,
        the usual smooth pictures) or a draw x ~ p(x | z) (``mean=False``)."""
        like = next(self.parameters())
        with torch.no_grad():
            out = self.decode(_randn((n, self.latent_dim), generator, like))
            return self.likelihood.mean(out) if mean else self.likelihood.sample(out, generator)

    def forward(self, x, generator: torch.Generator | None = None):
        """Returns ``(decoder output, mu, logvar)`` for one reparameterized sample."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, generator)), mu, logvar


def _built_with_seed(seed, build):
    """Build a module with the global RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mlp_vae(latent_dim: int = 2, hidden: int = 512, likelihood="bernoulli", seed: int = 0) -> VAE:
    """MLP VAE for flat MNIST: 784 -> hidden -> 2 * latent_dim; latent_dim -> hidden -> 784.
    ``seed`` fixes the initial weights."""
    return _built_with_seed(seed, lambda: VAE(MLPEncoder(784, hidden, latent_dim),
                                              MLPDecoder(latent_dim, hidden, 784), likelihood))


def conv_vae(latent_dim: int = 2, likelihood="bernoulli", seed: int = 0, hidden: int = 16) -> VAE:
    """Convolutional VAE for (batch, 1, 28, 28) images (:class:`ConvEncoder`, :class:`ConvDecoder`).
    ``hidden`` is the width of the encoder's dense layer; ``seed`` fixes the initial weights."""
    return _built_with_seed(seed, lambda: VAE(ConvEncoder(latent_dim, hidden), ConvDecoder(latent_dim), likelihood))


# ---------------------------------------------------------------------- ELBO, KL, IWAE
def kl_normal_std(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, per sample:

        KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)   >= 0,

    zero exactly when mu = 0 and logvar = 0. ``mu``, ``logvar`` (batch, d) -> (batch,).
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar need the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


class ELBO(NamedTuple):
    """The ELBO and its two terms in nats, each a mean over the batch (or per sample)."""
    elbo: torch.Tensor            #: reconstruction - kl
    reconstruction: torch.Tensor  #: E_q log p(x | z), summed over pixels (one-sample estimate)
    kl: torch.Tensor              #: KL(q(z | x) || p(z)), summed over latent dimensions (exact)

    @property
    def loss(self):
        """-elbo, the quantity to minimise."""
        return -self.elbo


def elbo_terms(model: VAE, x, generator=None):
    """The ELBO's two terms per image, nats: ``(reconstruction, kl)``, each of shape (batch,).

    reconstruction = log p(x | z) at one reparameterized z ~ q(z | x) (summed over pixels);
    kl = KL(q(z | x) || p(z)) in closed form (summed over latent dimensions). No input checks
    (see :func:`elbo`); gradients flow to encoder and decoder.
    """
    mu, logvar = (_full(t) for t in model.encoder(x))       # float32 even under bfloat16 autocast
    z = model.reparameterize(mu, logvar, generator)
    rec = model.likelihood.log_prob(x, _full(model.decoder(z)))
    return rec, kl_normal_std(mu, logvar)


def _full(t):
    """``t`` in float32 if autocast left it in a 16-bit type, else unchanged (a no-op in float32/float64)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def elbo(model: VAE, x, generator: torch.Generator | None = None, *, reduction: str = "mean") -> ELBO:
    """The ELBO of ``x`` with one reparameterized sample per image.

    Parameters
    ----------
    model : VAE
    x : Tensor (batch, ...)
        Data the encoder accepts (binary for the Bernoulli likelihood).
    generator : torch.Generator, optional
        Source of the noise eps.
    reduction : {"mean", "none"}
        ``"mean"``: scalars averaged over the batch; ``"none"``: tensors (batch,).

    Returns
    -------
    ELBO(elbo, reconstruction, kl) in nats per image; ``elbo = reconstruction - kl``.
    The training loss is ``-elbo`` (``ELBO.loss``).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    model.check_input(x)
    rec, kl = elbo_terms(model, x, generator)
    if reduction == "mean":
        rec, kl = rec.mean(), kl.mean()
    return ELBO(rec - kl, rec, kl)


def log_importance_weights(model: VAE, x, z, mu=None, logvar=None):
    """log w = log p(x | z) + log p(z) - log q(z | x) for importance samples ``z``.

    Parameters
    ----------
    x : Tensor (n, ...)
    z : Tensor (m, n, latent_dim)
        ``m`` samples for each of the ``n`` images.
    mu, logvar : Tensor (n, latent_dim), optional
        The encoder's output for ``x`` (computed when omitted).

    Returns
    -------
    Tensor (m, n) in nats.
    """
    if mu is None or logvar is None:
        mu, logvar = model.encode(x)
    m, n, d = z.shape
    log_q = -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)
    log_prior = -0.5 * (z.square() + _LOG_2PI).sum(-1)
    x_rep = x.unsqueeze(0).expand(m, *x.shape).reshape(m * n, *x.shape[1:])
    log_px_z = model.likelihood.log_prob(x_rep, model.decoder(z.reshape(m * n, d))).reshape(m, n)
    return log_px_z + log_prior - log_q


def sample_log_weights(model: VAE, x, k: int, generator: torch.Generator | None = None):
    """``k`` reparameterized importance samples per image and their log-weights, nats, differentiable:

        z_i = mu(x) + exp(logvar(x) / 2) * eps_i,    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x),

    with eps_i ~ N(0, I) drawn as one (k, n, latent_dim) block from ``generator``. ``x`` (n, ...) -> (k, n).
    ``logsumexp(log_w, 0) - log k`` is the IWAE estimate of L_k for each image (the training objective
    of ``train_vae(objective="iwae")``); for k = 1 it is the ELBO with a one-sample estimate of the KL.
    No input checks (see :func:`iwae_log_likelihood`).
    """
    mu, logvar = (_full(t) for t in model.encoder(x))
    z = mu + torch.exp(0.5 * logvar) * _randn((k, *mu.shape), generator, mu)
    return log_importance_weights(model, x, z, mu, logvar)


@torch.no_grad()
def iwae_log_likelihood(model: VAE, x, k: int, batch_k: int = 32, generator: torch.Generator | None = None,
                        batch_size: int = 64, checkpoint=None):
    """Importance-weighted estimate of log p(x) in nats per image (Burda et al. 2016):

        log p(x) ~ log (1/k) sum_{i=1..k} p(x, z_i) / q(z_i | x),   z_i ~ q(z | x).

    Its expectation is the IWAE bound L_k: L_1 is the ELBO, L_k <= L_{k+1} <= log p(x),
    and L_k -> log p(x) as k grows.

    Memory stays bounded for large k: the k samples are drawn in chunks of
    ``batch_k`` and the images go through the decoder ``batch_size`` at a time
    (about ``batch_k * batch_size`` decoder evaluations at once); chunks are
    combined with a running log-sum-exp. The noise is drawn one importance
    sample at a time (an (n, latent_dim) block each), so the result does not
    depend on ``batch_k`` or ``batch_size``.

    ``checkpoint`` (a path, e.g. from ``helpers.config.checkpoint_path`` in lecturer mode)
    caches the result: a file made for the same model weights, images, k and generator
    state is loaded instead of recomputing (weights-only loading; ``generator`` is then
    left untouched).

    Returns
    -------
    Tensor (n,): the estimate for each image of ``x``.
    """
    k, batch_k, batch_size = check_count("k", k), check_count("batch_k", batch_k), check_count("batch_size", batch_size)
    model.check_input(x)
    if checkpoint is not None:
        fingerprint = checkpoint_io.module_fingerprint(model, x=x, k=k, generator=generator)
        out = checkpoint_io.cached(
            checkpoint, fingerprint, _IWAE_FORMAT,
            lambda: {"log_px": iwae_log_likelihood(model, x, k, batch_k, generator, batch_size).cpu()},
            what="IWAE estimate", redo="computing it")
        return out["log_px"].to(x.device)
    total = None
    for _, images, log_w in _log_weight_blocks(model, x, k, batch_k, generator, batch_size):
        if total is None:
            total = torch.full((x.shape[0],), -math.inf, dtype=log_w.dtype, device=log_w.device)
        total[images] = torch.logaddexp(total[images], torch.logsumexp(log_w, 0))
    return total - math.log(k)


def _log_weight_blocks(model, x, k, batch_k, generator, batch_size):
    """The importance draws of :func:`iwae_log_likelihood` and :func:`iwae_log_weights`, block by block:
    yields ``(samples, images, log_w)``, two slices and the (m, batch) log-weights of those samples and
    images. One (n, latent_dim) noise block per sample, ``batch_k`` samples at a time, so the same
    generator state gives the same draws in both functions."""
    n = x.shape[0]
    mus, logvars = zip(*(model.encoder(x[i:i + batch_size]) for i in range(0, n, batch_size)))
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    for start in range(0, k, batch_k):
        m = min(batch_k, k - start)
        eps = torch.stack([_randn(mu.shape, generator, mu) for _ in range(m)])  # (m, n, d)
        z = mu + torch.exp(0.5 * logvar) * eps
        for i in range(0, n, batch_size):
            images = slice(i, i + batch_size)
            yield slice(start, start + m), images, log_importance_weights(model, x[images], z[:, images],
                                                                          mu[images], logvar[images])


@torch.no_grad()
def iwae_log_weights(model: VAE, x, k: int, batch_k: int = 32, generator: torch.Generator | None = None,
                     batch_size: int = 64, checkpoint=None):
    """All ``k`` log importance weights per image, log w_i = log p(x, z_i) - log q(z_i | x) with z_i ~ q(z | x), nats.

    The draws of :func:`iwae_log_likelihood` (one (n, latent_dim) noise block per importance sample, in
    chunks of ``batch_k`` samples and ``batch_size`` images), so with the same generator state
    ``logsumexp(log_w, 0) - log k`` is its estimate. One set of k weights gives an estimate of L_j for
    every j <= k: split it into k // j disjoint blocks of j and average their log-mean-weights.
    ``checkpoint`` caches the weights as in :func:`iwae_log_likelihood`.

    Returns
    -------
    Tensor (k, n), in the model's dtype.
    """
    k, batch_k, batch_size = check_count("k", k), check_count("batch_k", batch_k), check_count("batch_size", batch_size)
    model.check_input(x)
    if checkpoint is not None:
        fingerprint = checkpoint_io.module_fingerprint(model, x=x, k=k, generator=generator, all_weights=True)
        out = checkpoint_io.cached(
            checkpoint, fingerprint, _IWAE_FORMAT,
            lambda: {"log_w": iwae_log_weights(model, x, k, batch_k, generator, batch_size).cpu()},
            what="IWAE log-weights", redo="computing them")
        return out["log_w"].to(x.device)
    out = None
    for samples, images, log_w in _log_weight_blocks(model, x, k, batch_k, generator, batch_size):
        if out is None:
            out = torch.empty(k, x.shape[0], dtype=log_w.dtype, device=log_w.device)
        out[samples, images] = log_w
    return out


# ---------------------------------------------------------------------- exact log p(x) in 1 or 2 dimensions
def _log_likelihood_matrix(likelihood, x, out):
    """log p(x_n | z_g) for every image n and grid point g: ``x`` (N, P), decoder output ``out`` (G, P) -> (N, G).

    Written as matrix products (sums over pixels of x_i * out_gi), so that N x G pairs cost one matmul.
    """
    if isinstance(likelihood, BernoulliLikelihood):      # sum_i x_i l_i - softplus(l_i)
        return x @ out.T - torch.nn.functional.softplus(out).sum(1)
    if isinstance(likelihood, GaussianLikelihood):       # -|x - m|^2 / (2 s^2) - P log s - P/2 log 2 pi
        log_sigma = likelihood.log_sigma.to(out.dtype)
        sq = x.square().sum(1, keepdim=True) - 2 * x @ out.T + out.square().sum(1)
        return -0.5 * torch.exp(-2 * log_sigma) * sq - x.shape[1] * (log_sigma + 0.5 * _LOG_2PI)
    raise TypeError(f"quadrature_log_marginal knows the Bernoulli and Gaussian likelihoods, got "
                    f"{type(likelihood).__name__}")


def _cell_log_terms(model, xf, z, log_cell, grid_batch):
    """Chunks of (log p(x_n | z_g) (N, G_chunk), log of p(z_g) times the cell volume (G_chunk,)), decoding
    ``grid_batch`` grid points ``z`` (G, d) at once."""
    like = next(model.parameters())
    for i in range(0, len(z), grid_batch):
        zc = z[i:i + grid_batch]
        out = model.decoder(zc.to(like.device, like.dtype))
        log_lik = _log_likelihood_matrix(model.likelihood, xf, out.reshape(len(out), -1).to(xf.dtype))
        yield log_lik.cpu(), -0.5 * (zc.square().sum(1) + zc.shape[1] * _LOG_2PI) + log_cell


def _dilate(mask):
    """Grow a boolean grid of cells (n,) or (n, n) by one cell in every direction (3 or 3 x 3 neighbourhood)."""
    m = mask.double()[None, None]
    pool = torch.nn.functional.max_pool1d if mask.dim() == 1 else torch.nn.functional.max_pool2d
    return pool(m, 3, stride=1, padding=1)[0, 0] > 0


def _cells_to_refine(t, shape, threshold, roughness):
    """Cells (flat, bool) where, for some image, the log integrand ``t`` (N, cells) is within ``threshold``
    of that image's largest cell *and* differs by more than ``roughness`` from a neighbouring cell."""
    grid = t.reshape(len(t), *shape)
    rough = torch.zeros_like(grid, dtype=torch.bool)
    for axis in range(1, grid.dim()):
        step = grid.diff(dim=axis).abs() > roughness                  # between cell i and i + 1 along the axis
        pad = [0, 0] * (grid.dim() - 1 - axis)
        rough |= torch.nn.functional.pad(step, pad + [1, 0]) | torch.nn.functional.pad(step, pad + [0, 1])
    big = grid >= grid.flatten(1).max(1).values.reshape(-1, *[1] * len(shape)) - threshold
    return (rough & big).any(0).flatten()


@torch.no_grad()
def quadrature_log_marginal(model: VAE, x, betas=1.0, *, half_width: float = 10.0, spacing: float = 0.1,
                            refine: int = 4, threshold: float = 12.0, roughness: float = 0.25,
                            grid_batch: int = 4096, dtype=torch.float32, checkpoint=None):
    """log p(x) = log int p(z) p(x | z) dz by quadrature, for a VAE with a 1- or 2-D latent space.

    More generally, for each beta > 0, the *tempered* log marginal

        F_beta(x) = beta log int p(z) p(x | z)^(1/beta) dz,      F_1(x) = log p(x),

    the largest value the beta-objective E_q log p(x | z) - beta KL(q || p) takes over all
    distributions q (Gibbs' variational principle; the maximiser is q* proportional to p(z) p(x | z)^(1/beta)).
    F_beta decreases in beta (a power mean), so F_beta >= log p(x) for beta < 1.

    The rule: the box [-half_width, half_width]^d is cut into cells of side about ``spacing`` (the
    prior's mass outside, about 2 d Phi(-half_width), is dropped), each integrated by the midpoint
    rule. Where the integrand changes fast the cells are split: every cell whose log integrand, for
    some image and some beta, is within ``threshold`` nats of that image's largest cell and differs by
    more than ``roughness`` nats from a neighbouring cell, and the cells around it, are split into
    ``refine``^d sub-cells. A cell left coarse either holds less than exp(-threshold) of the largest
    one or lies where the integrand is flat on the scale of a cell. The decoder runs once per grid
    point, whatever the number of images.

    Accuracy: on a uniform grid (``refine=1``) the midpoint rule converges faster than any power of
    the spacing h once h is below the posterior's width and the box holds its mass (Poisson summation:
    the local errors (h^2 / 24) f'' of the cells cancel over the whole line). Where refined and coarse
    cells meet they no longer cancel, and the adaptive rule is accurate to about h^2 / 24 times the
    relative curvature of the integrand there: about 1e-4 to 1e-3 nats at ``spacing=0.1`` (measured
    against uniform grids in the tests). Check a result by refinement (smaller ``spacing``, larger
    ``refine`` and ``half_width``: the values must not move by more than the accuracy you need).

    Parameters
    ----------
    model : VAE
        Latent dimension 1 or 2; Bernoulli or Gaussian likelihood.
    x : Tensor (n, ...)
        Images the encoder accepts (binary for the Bernoulli likelihood).
    betas : float or sequence of floats
        The beta > 0 of F_beta; 1 gives log p(x).
    half_width : float
        Half-width of the box in each coordinate (prior standard deviations).
    spacing : float
        Side of the coarse cells.
    refine : int >= 1
        Sub-cells per side of a refined cell (1: no refinement).
    threshold : float
        Nats below an image's largest cell (of the tempered log integrand) down to which cells may be refined.
    roughness : float
        Nats the log integrand must change by between neighbouring cells for them to be refined.
    grid_batch : int
        Grid points decoded at once.
    dtype : torch.dtype
        Precision of log p(x | z), a sum over pixels (float32: about 1e-5 nats); the sums over cells
        are in float64.
    checkpoint : path, optional
        Caches the result (e.g. ``helpers.config.checkpoint_path(name)`` in lecturer mode): a file made
        for the same model weights, images, betas and rule is loaded instead of integrating again.

    Returns
    -------
    Tensor (n,) for a single beta, (len(betas), n) for a sequence; nats per image, float64, on the CPU.
    Memory: n x (2 half_width / spacing)^d numbers of ``dtype``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"quadrature_log_marginal needs a helpers.vae.VAE (e.g. mlp_vae(...)), "
                        f"got {type(model).__name__}")
    model.check_input(x)
    d = model.latent_dim
    if d not in (1, 2):
        raise ValueError(f"quadrature_log_marginal integrates over a 1- or 2-D latent space, this model has {d} "
                         "latent dimensions (use iwae_log_likelihood(model, x, k), a stochastic lower bound that "
                         "tightens as k grows)")
    single = not isinstance(betas, (list, tuple))
    beta_list = [check_real("beta", b, 0, low_ok=False) for b in ([betas] if single else betas)]
    if not beta_list:
        raise ValueError("betas must hold at least one beta > 0")
    half_width = check_real("half_width", half_width, 0, low_ok=False)
    spacing = check_real("spacing", spacing, 0, 2 * half_width, low_ok=False)
    refine, grid_batch = check_count("refine", refine), check_count("grid_batch", grid_batch)
    threshold, roughness = check_real("threshold", threshold, 0), check_real("roughness", roughness, 0)
    if checkpoint is not None:
        rule = dict(half_width=half_width, spacing=spacing, refine=refine, threshold=threshold, roughness=roughness)
        fingerprint = checkpoint_io.module_fingerprint(model, x=x, betas=beta_list, dtype=str(dtype), **rule)
        out = checkpoint_io.cached(
            checkpoint, fingerprint, _QUADRATURE_FORMAT,
            lambda: {"log_marginal": quadrature_log_marginal(model, x, beta_list, grid_batch=grid_batch, **rule,
                                                             dtype=dtype)},
            what="quadrature result", redo="integrating")["log_marginal"]
        return out[0] if single else out
    n_cells = math.ceil(2 * half_width / spacing)
    h = 2 * half_width / n_cells
    axis = -half_width + h * (torch.arange(n_cells, dtype=torch.float64) + 0.5)         # cell centres
    z = axis[:, None] if d == 1 else torch.cartesian_prod(axis, axis)
    xf = x.reshape(len(x), -1).to(next(model.parameters()).device, dtype)
    log_lik, log_wp = (torch.cat(t, -1) for t in zip(*_cell_log_terms(model, xf, z, d * math.log(h), grid_batch)))
    fine = torch.zeros(len(z), dtype=torch.bool)
    if refine > 1:
        for beta in beta_list:                       # the tempered log integrand of each image in each cell
            fine |= _cells_to_refine(log_lik.double() / beta + log_wp, (n_cells,) * d, threshold, roughness)
        fine = _dilate(fine.reshape((n_cells,) * d)).flatten()
    coarse_ll, coarse_lw = log_lik[:, ~fine].double(), log_wp[~fine]
    total = torch.stack([torch.logsumexp(coarse_ll / beta + coarse_lw, 1) for beta in beta_list])
    del log_lik, coarse_ll
    if fine.any():
        offsets = (h / refine) * (torch.arange(refine, dtype=torch.float64) + 0.5) - h / 2
        sub = offsets[:, None] if d == 1 else torch.cartesian_prod(offsets, offsets)
        z_fine = (z[fine][:, None, :] + sub[None]).reshape(-1, d)
        for ll, lw in _cell_log_terms(model, xf, z_fine, d * math.log(h / refine), grid_batch):
            ll = ll.double()
            total = torch.logaddexp(total, torch.stack([torch.logsumexp(ll / beta + lw, 1) for beta in beta_list]))
    out = torch.tensor(beta_list, dtype=torch.float64)[:, None] * total
    return out[0] if single else out


# ---------------------------------------------------------------------- is the latent space used?
class LatentHealth(NamedTuple):
    """What separates a VAE that uses its latent space from one whose posterior collapsed.

    See :func:`latent_health`; every field is a float (``active_units`` an int)."""
    kl: float            #: mean KL(q(z | x) || p(z)) over the images, nats per image (0 when collapsed)
    active_units: int    #: latent dimensions u with Var_x(mu_u(x)) > 0.01 (Burda et al. 2016)
    knn_accuracy: float  #: k-NN classifier on codes z ~ q(z | x), held-out half of the images
    chance: float        #: accuracy of always guessing the most common label of that half
    grid_spread: float   #: per-pixel std of E[x | z] across a quantile grid of the prior, mean over pixels


@torch.no_grad()
def latent_health(model: VAE, x, labels, *, k: int = 10, n_grid: int = 10, batch_size: int = 1000,
                  seed: int = 0) -> LatentHealth:
    """Measure how much a trained VAE's latent space carries about its inputs.

    Parameters
    ----------
    model : VAE
    x : Tensor (n, ...)
        Images the encoder accepts (binary for the Bernoulli likelihood), n >= 2 * k.
    labels : Tensor (n,)
        Integer class labels, used only by the k-NN classifier.
    k : int
        Neighbours of the classifier (:func:`helpers.metrics.knn_accuracy`): the even-indexed
        images are its reference points, the odd-indexed ones are classified. It classifies one
        code z ~ q(z | x) per image (noise from ``seed``), not the mean mu(x): a k-NN vote
        ignores scale, so means that differ by 1e-3 while q(z | x) ~ p(z) would still look
        separated, whereas codes drawn from a collapsed posterior carry no label information.
    n_grid : int
        The decoder is evaluated on an ``n_grid x n_grid`` grid at the quantiles
        Phi^-1((i + 1/2) / n_grid) of the prior in the first two latent dimensions (the other
        dimensions at 0; a 1-D latent uses ``n_grid**2`` quantiles).

    Returns
    -------
    LatentHealth(kl, active_units, knn_accuracy, chance, grid_spread). A collapsed posterior,
    q(z | x) = p(z) for every x, gives kl = 0, no active unit, k-NN at chance (the codes are
    drawn from the same distribution whatever the image) and grid_spread = 0 (the decoder
    ignores z).
    """
    from .metrics import knn_accuracy

    model.check_input(x)
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(x),) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({len(x)},)")
    if len(x) < 2 * k:
        raise ValueError(f"latent_health needs at least 2 * k = {2 * k} images, got {len(x)}")
    mus, logvars = zip(*(model.encoder(x[i:i + batch_size]) for i in range(0, len(x), batch_size)))
    mu, logvar = torch.cat(mus).double().cpu(), torch.cat(logvars).double().cpu()
    kl = kl_normal_std(mu, logvar)
    active = int((mu.var(0) > 0.01).sum())
    z_codes = model.reparameterize(mu, logvar, torch.Generator().manual_seed(seed))
    y = labels.cpu()
    accuracy = knn_accuracy(z_codes[0::2], y[0::2], z_codes[1::2], y[1::2], k=k)
    chance = torch.bincount(y[1::2]).max().item() / len(y[1::2])
    def quantiles(m):
        return torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(m) + 0.5) / m)

    if model.latent_dim == 1:
        z = quantiles(n_grid**2)[:, None]
    else:
        z = torch.zeros(n_grid**2, model.latent_dim)
        z[:, :2] = torch.cartesian_prod(quantiles(n_grid), quantiles(n_grid))
    like = next(model.parameters())
    images = model.decode_mean(z.to(dtype=like.dtype, device=like.device)).flatten(1).double()
    return LatentHealth(kl.mean().item(), active, accuracy, chance, images.std(0).mean().item())


@torch.no_grad()
def aggregate_posterior_kl(mu, logvar, n_samples: int = 2000, generator: torch.Generator | None = None,
                           batch_size: int = 500):
    """KL(q(z) || N(0, I)) of the aggregate posterior q(z) = (1/N) sum_n N(z; mu_n, diag exp(logvar_n)).

    q(z) is the distribution of codes the decoder sees when images are drawn from the N
    given ones. The estimate is Monte Carlo over z ~ q (pick n uniformly, then z ~ q(z | x_n)),
    with the integrand log q(z) - log p(z) computed exactly (a log-sum-exp over all N
    components), so it is unbiased; its standard error is the sample std over sqrt(n_samples).

    Two facts to check it by: with p Gaussian, KL(q || p) = KL(q || g) + KL(g || p) for the
    Gaussian g with q's mean and covariance, so the moment-matched KL(g || p) is a *lower*
    bound; and the average KL term of the ELBO splits as (1/N) sum_n KL(q(z | x_n) || p) =
    I(n; z) + KL(q || p) with the mutual information I(n; z) in [0, log N].

    Parameters
    ----------
    mu, logvar : Tensor (N, d)
        The encoder's output for N images.
    n_samples : int
        Monte Carlo samples of z.

    Returns
    -------
    (estimate, standard_error), floats in nats.
    """
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar need the same shape (N, d), got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    n_samples = check_count("n_samples", n_samples, 2)
    mu, logvar = mu.double().cpu(), logvar.double().cpu()
    n, d = mu.shape
    pick = torch.randint(n, (n_samples,), generator=generator)
    eps = torch.randn(n_samples, d, generator=generator, dtype=torch.float64)
    z = mu[pick] + torch.exp(0.5 * logvar[pick]) * eps
    inv_var = torch.exp(-logvar)
    log_norm = -0.5 * (logvar.sum(1) + d * _LOG_2PI)                      # (N,)
    terms = []
    for i in range(0, n_samples, batch_size):
        zb = z[i:i + batch_size, None, :]                                 # (b, 1, d)
        log_comp = log_norm - 0.5 * (((zb - mu) ** 2) * inv_var).sum(-1)  # (b, N)
        log_q = torch.logsumexp(log_comp, 1) - math.log(n)
        log_p = -0.5 * (zb[:, 0].square().sum(1) + d * _LOG_2PI)
        terms.append(log_q - log_p)
    terms = torch.cat(terms)
    return terms.mean().item(), (terms.std() / math.sqrt(n_samples)).item()


#: Bounds a VAE that uses its latent space passes and a collapsed one fails (see :func:`collapse_checks`).
#: kl in nats; elbo_gain in nats per image; knn_over_chance: a chance-level classifier on 5,000
#: test codes has a standard error of about 0.004, so 0.15 above chance is over 30 of them;
#: grid_spread: a pixel std across the grid (measured 0.004-0.017 for collapsed models).
COLLAPSE_BOUNDS = {"kl": 2.0, "elbo_gain": 20.0, "knn_over_chance": 0.15, "grid_spread": 0.03}


def collapse_checks(health: LatentHealth, test_elbo: float, independent_pixels: float) -> list:
    """The checks that a picture of a latent space claims, as numbers against bounds.

    Parameters
    ----------
    health : LatentHealth
        From :func:`latent_health`.
    test_elbo : float
        The model's mean test ELBO, nats per image.
    independent_pixels : float
        The exact mean test log-likelihood of independent Bernoulli pixels on the same images
        (:func:`helpers.baselines.independent_pixels`), nats per image: what a model that
        ignores its latent space can reach.

    Returns
    -------
    list of (claim, value, bound, passed), one per check in :data:`COLLAPSE_BOUNDS`:
    KL well above 0 (nats), test ELBO above the independent-pixel model by a margin (nats),
    k-NN accuracy on codes drawn from the posteriors above chance by a margin, decoded grid cells that
    differ (pixel std). A collapsed model fails every one of them.
    """
    b = COLLAPSE_BOUNDS
    rows = [("KL(q(z|x) || p(z)), nats per image", health.kl, b["kl"]),
            ("test ELBO - independent pixels, nats per image", test_elbo - independent_pixels, b["elbo_gain"]),
            ("k-NN accuracy on z ~ q(z|x) - chance", health.knn_accuracy - health.chance, b["knn_over_chance"]),
            ("std of decoded pixels across the latent grid", health.grid_spread, b["grid_spread"])]
    return [(claim, value, bound, value > bound) for claim, value, bound in rows]


# ---------------------------------------------------------------------- training
@dataclass(frozen=True)
class VAESettings:
    """Everything :func:`train_vae` needs besides the model and the data; validated when built.

    Its fields are the checkpoint fingerprint and ``history.settings``: a new setting is
    declared here, once. See :func:`train_vae` for their meaning.
    """

    n_epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    dynamic_binarization: bool = False
    beta: float = 1.0
    kl_warmup: int = 0
    precision: str = "float32"
    objective: str = "elbo"
    k: int = 1

    def __post_init__(self):
        check_count("n_epochs", self.n_epochs)
        check_count("batch_size", self.batch_size)
        check_count("seed", self.seed, 0)
        check_real("lr", self.lr, 0, low_ok=False)
        check_real("beta", self.beta, 0)
        check_count("kl_warmup", self.kl_warmup, 0)
        check_choice("precision", self.precision, ("float32", "bfloat16"))
        check_choice("objective", self.objective, ("elbo", "iwae"))
        check_count("k", self.k)
        if self.objective == "elbo" and self.k != 1:
            raise ValueError(f"k={self.k} importance samples need objective='iwae'; the ELBO uses one sample (k=1)")
        if self.objective == "iwae" and (self.beta != 1 or self.kl_warmup != 0):
            raise ValueError("objective='iwae' trains on the bound L_k itself: leave beta=1 and kl_warmup=0 "
                             "(they weight the KL term of the ELBO objective)")
        if not isinstance(self.dynamic_binarization, bool):
            raise ValueError(f"dynamic_binarization must be True or False, got {self.dynamic_binarization!r}")


_CHECKPOINT_FORMAT = "helpers.vae checkpoint 2"
_IWAE_FORMAT = "helpers.vae IWAE estimate 1"
_QUADRATURE_FORMAT = "helpers.vae adaptive quadrature 1"


def _is_binary(x):
    return bool(((x == 0) | (x == 1)).all())


@torch.no_grad()
def _evaluate(model, x, seed, batch_size=1000):
    """Mean ELBO terms on ``x`` with a fixed noise seed (so epochs are compared on the same noise)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    rec = kl = 0.0
    for i in range(0, len(x), batch_size):
        r, k = elbo_terms(model, x[i:i + batch_size], gen)
        rec, kl = rec + r.sum().item(), kl + k.sum().item()
    return rec / len(x), kl / len(x)


def training_step(model: VAE, optimizer: torch.optim.Optimizer, x, generator=None, kl_weight: float = 1.0,
                  precision: str = "float32", objective: str = "elbo", k: int = 1) -> dict:
    """One gradient step on the VAE loss ``kl_weight * KL - reconstruction`` (batch means, nats).

    ``x`` (batch, ...) is one minibatch; ``kl_weight = 1`` is the ELBO. Returns the batch means
    ``train_elbo``, ``reconstruction`` and ``kl`` (nats per image, before the step); raises
    ``FloatingPointError`` for a non-finite loss or gradient, before the weights change.
    ``precision="bfloat16"`` runs the networks under bfloat16 autocast (weights, loss and
    optimiser stay float32).

    ``objective="iwae"`` maximises the importance-weighted bound instead (Burda et al. 2016): the loss is
    ``-mean(logsumexp_i log w_i - log k)`` over ``k`` reparameterized samples per image
    (:func:`sample_log_weights`), and the step returns ``train_iwae`` (that bound) and ``train_elbo``
    (the mean of the k log-weights, an unbiased estimate of the ELBO); ``kl_weight`` must be 1.
    """
    check_choice("objective", objective, ("elbo", "iwae"))
    model.train()
    if objective == "iwae":
        if kl_weight != 1:
            raise ValueError(f"objective='iwae' has no KL weight (got kl_weight={kl_weight}); use objective='elbo'")
        with _autocast(x, precision):
            log_w = sample_log_weights(model, x, check_count("k", k), generator)     # (k, batch)
        bound = torch.logsumexp(log_w, 0) - math.log(k)                              # L_k estimate per image
        loss = -bound.mean()
    else:
        with _autocast(x, precision):
            rec, kl = elbo_terms(model, x, generator)
        loss = kl_weight * kl.mean() - rec.mean()
    screened_step(loss, optimizer, model.parameters())
    if objective == "iwae":
        return {"train_iwae": bound.detach().mean().item(), "train_elbo": log_w.detach().mean().item()}
    rec, kl = rec.detach().mean().item(), kl.detach().mean().item()
    return {"train_elbo": rec - kl, "reconstruction": rec, "kl": kl}


def _autocast(x, precision):
    """bfloat16 autocast on ``x``'s device for ``precision="bfloat16"``, else nothing."""
    if precision == "bfloat16":
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare_data(model, x_train, x_test, settings):
    """Validate the data for ``settings`` (binary, or grey levels with dynamic binarization)."""
    if not settings.dynamic_binarization:
        model.check_input(x_train)
        if x_test is not None:
            model.check_input(x_test)
        return x_train, x_test
    if not isinstance(model.likelihood, BernoulliLikelihood):
        raise ValueError("dynamic_binarization=True needs the Bernoulli likelihood")
    model.check_input(x_train, data_check=False)
    if x_train.min() < 0 or x_train.max() > 1:
        raise ValueError("dynamic_binarization needs x_train intensities in [0, 1]")
    if x_test is not None:
        model.check_input(x_test, data_check=False)
        if not _is_binary(x_test):
            if x_test.min() < 0 or x_test.max() > 1:
                raise ValueError("dynamic_binarization needs x_test intensities in [0, 1] (or binary data)")
            x_test = torch.bernoulli(x_test, generator=torch.Generator(x_test.device).manual_seed(settings.seed))
    return x_train, x_test


def train_vae(model: VAE, x_train, x_test=None, *, progress: bool = True, checkpoint=None, **settings) -> dict:
    """Train ``model`` by maximising the ELBO (or the IWAE bound, ``objective="iwae"``) with Adam; returns the
    history per epoch.

    The data are preloaded tensors; each epoch visits them in a new random order
    (shuffled index batches, no DataLoader, no per-sample transforms).

    The loop is :func:`helpers.train.fit`; each minibatch is one :func:`training_step`.

    Parameters
    ----------
    model : VAE
        Trained in place, starting from its current weights.
    x_train, x_test : Tensor (n, ...)
        Shapes the encoder accepts, moved to the model's device. With the
        Bernoulli likelihood they must be binary, unless ``dynamic_binarization``.
    **settings
        The fields of :class:`VAESettings` (validated there):
    n_epochs, batch_size, lr : int, int, float
        Passes over ``x_train``, images per step (the last batch may be smaller),
        Adam's learning rate.
    seed : int
        Seeds the shuffling, the reparameterization noise and the dynamic
        binarization (one ``torch.Generator``), and the fixed noise of the test
        ELBO. The same seed and initial weights give bitwise identical training
        on the CPU.
    beta : float
        Weight of the KL term in the loss, ``beta * KL - reconstruction`` (the beta-VAE
        of Higgins et al. 2017). 1 (default) is the ELBO; any other value trains on an
        objective that is no longer a bound on log p(x), and a large beta drives the
        posterior onto the prior (collapse). The history always reports the ELBO.
    kl_warmup : int
        KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): over the first ``kl_warmup``
        steps the KL weight rises linearly from 0 to ``beta``, so that the encoder learns to
        carry information before the KL term pulls the posterior towards the prior. 0 (default)
        trains on the ELBO from the first step.
    precision : {"float32", "bfloat16"}
        Opt-in mixed precision: ``"bfloat16"`` runs the networks' forward and backward passes
        under ``torch.autocast`` in bfloat16 (convolutional inputs channels-last), while the
        weights, the optimiser, the loss terms and every reported number (the test ELBO of the
        history, everything evaluated afterwards) stay float32. Fast where the CPU has bfloat16
        matrix instructions (AVX512-BF16, AMX) or on a GPU; elsewhere it may be slower.
        ``bench/bench_loop.py --precision`` measures both.
    objective : {"elbo", "iwae"}
        ``"elbo"`` (default) maximises the ELBO (weighted by ``beta``, ``kl_warmup``);
        ``"iwae"`` maximises the importance-weighted bound L_k with ``k`` samples per image
        (Burda et al. 2016; :func:`training_step`), a tighter bound on log p(x); the decoder runs k
        times per image, so a step costs about (1 + k) / 2 times an ELBO step when encoder and decoder
        cost the same. ``beta`` and ``kl_warmup``
        stay at their defaults with it.
    k : int
        Importance samples per image for ``objective="iwae"`` (1, the default, otherwise; with
        k = 1 the IWAE objective is the ELBO, its KL estimated by the same sample).
    progress : bool
        Show a tqdm progress bar (one tick per batch).
    checkpoint : path, optional
        After training, save the weights (``state_dict``), the history and a
        fingerprint of the configuration (architecture, initial weights, data
        shapes and hashes, seed, epochs, lr, batch size, binarization) with
        ``torch.save``. When the file exists with the same fingerprint, load it
        with ``torch.load(weights_only=True)`` instead of training; a different
        fingerprint, an unreadable file or one holding pickled objects other
        than tensors and plain containers prints why and trains again
        (overwriting it). Code in the file is never executed.
    dynamic_binarization : bool
        ``x_train`` holds grey levels in [0, 1] and every batch is re-binarized
        with fresh Bernoulli draws (each pixel ~ Bernoulli(intensity)) from the
        seeded generator. A grey-level ``x_test`` is binarized once, with
        ``torch.Generator().manual_seed(seed)``. Bernoulli likelihood only.

    Returns
    -------
    helpers.train.History (a dict of lists, one entry per epoch): ``epoch``, ``train_elbo``,
    ``reconstruction``, ``kl`` (means over the epoch's batches, in nats per image,
    taken while the model was changing; with ``objective="iwae"``: ``train_iwae`` and
    ``train_elbo`` instead), ``time`` (seconds of the epoch's updates, the
    test evaluation excluded), and with ``x_test``: ``test_elbo``, ``test_reconstruction``,
    ``test_kl`` (after the epoch). ``history.settings`` holds the settings.

    Raises
    ------
    FloatingPointError
        The loss or a gradient became NaN/inf; the message names the epoch and
        batch and suggests a smaller learning rate.
    """
    settings = build_settings(VAESettings, settings)
    device = next(model.parameters()).device
    x_train, x_test = _prepare_data(model, x_train, x_test, settings)
    x_train = x_train.to(device)
    x_test = None if x_test is None else x_test.to(device)
    if settings.precision == "bfloat16" and x_train.dim() == 4:   # convolutions run faster channels-last
        model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)

    s = settings
    gen = torch.Generator(device=device).manual_seed(s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    steps_done = 0

    def step(idx):
        nonlocal steps_done
        xb = x_train[idx]
        if s.dynamic_binarization:
            xb = torch.bernoulli(xb, generator=gen)
        weight = s.beta if steps_done >= s.kl_warmup else s.beta * steps_done / s.kl_warmup
        steps_done += 1
        if s.objective == "iwae":
            return training_step(model, opt, xb, gen, precision=s.precision, objective="iwae", k=s.k)
        return training_step(model, opt, xb, gen, kl_weight=weight, precision=s.precision)

    def evaluate(epoch):
        if x_test is None:
            return {}
        model.eval()
        rec, kl = _evaluate(model, x_test, s.seed)
        return {"test_elbo": rec - kl, "test_reconstruction": rec, "test_kl": kl}

    fingerprint = None
    if checkpoint is not None:
        fingerprint = checkpoint_io.module_fingerprint(
            model, x_train=x_train, x_test="none" if x_test is None else x_test, **dataclasses.asdict(s))
    history = fit(step, len(x_train), n_epochs=s.n_epochs, batch_size=s.batch_size, generator=gen, evaluate=evaluate,
                  progress=progress, desc="training VAE", show=("train_elbo", "test_elbo"), device=device,
                  hint=f"Try a smaller learning rate (lr={s.lr:g} now, e.g. lr={s.lr / 10:g}) and rebuild the model: "
                       "its weights are no longer usable.",
                  settings=dataclasses.asdict(s), checkpoint=checkpoint, fingerprint=fingerprint,
                  kind=_CHECKPOINT_FORMAT, state=model.state_dict, restore=model.load_state_dict)
    model.eval()
    return history
