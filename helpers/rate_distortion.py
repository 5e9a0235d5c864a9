"""Rate and distortion of a VAE, the beta-objective, active units and free bits.

Alemi et al. (2018, "Fixing a broken ELBO") split the negative ELBO of an image x into two
non-negative parts, both in nats per image:

    rate        R(x) = KL(q(z | x) || p(z))          exact, closed form, summed over latent dimensions
    distortion  D(x) = -E_q(z|x) log p(x | z)         one reparameterized sample z ~ q(z | x)

so that -ELBO(x) = D(x) + R(x). The beta-VAE (Higgins et al. 2017) trains on -(D + beta R); beta = 1
is the ELBO. For a diagonal Gaussian q the rate is a sum over latent dimensions,
R = sum_j KL_j (:func:`kl_per_dimension`), which says which dimensions carry information; a dimension
whose posterior is the prior for every image costs 0 nats and carries nothing (posterior collapse).

What is here:

* :func:`rate_distortion`: R, D, KL per dimension and the posterior moments of a data set (batched,
  no gradients, seeded noise), as a :class:`RateDistortion` with the ELBO, the beta-objective and
  Burda et al.'s (2016) activity statistic of each unit;
* :func:`free_bits_loss` and :func:`free_bits_step`: the free-bits objective of Kingma et al. (2016),
  whose KL of each latent dimension (averaged over the minibatch) is clamped below at ``free_bits``
  nats; the step is a step function for :func:`helpers.train.fit`, and :func:`train_free_bits` the
  trainer built on it (with the course's checkpoint cache);
* the exact tempered marginal F_beta(x) = beta log E_p(z)[p(x | z)^(1/beta)] of a 1- or 2-D VAE, the
  largest value the beta-objective can take for any q, is :func:`helpers.vae.quadrature_log_marginal`
  (beta = 1: log p(x)), the one quadrature of the course.

Notation: the notes write the latent variable as ``h``; here it is ``z`` as in :mod:`helpers.vae`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import checkpoint as checkpoint_io
from ._validate import check_count, check_generator, check_real
from .train import build_settings, fit, screened_step
from .vae import VAE, BernoulliLikelihood

__all__ = ["RateDistortion", "kl_per_dimension", "rate_distortion", "free_bits_loss", "free_bits_step",
           "FreeBitsSettings", "train_free_bits"]

_CHECKPOINT_FORMAT = "helpers.rate_distortion free-bits checkpoint 1"


def _check_vae(model, who):
    if not isinstance(model, VAE):
        raise TypeError(f"{who} needs a helpers.vae.VAE (e.g. helpers.vae.mlp_vae(...)), got {type(model).__name__}")


# ---------------------------------------------------------------------- bookkeeping
def kl_per_dimension(mu, logvar):
    """KL(N(mu_j, exp(logvar_j)) || N(0, 1)) of each latent dimension, nats:

        KL_j = 1/2 (mu_j^2 + exp(logvar_j) - 1 - logvar_j)  >= 0,

    so that ``kl_per_dimension(mu, logvar).sum(-1)`` is :func:`helpers.vae.kl_normal_std`.
    ``mu``, ``logvar`` (batch, d) -> (batch, d).
    """
    if not isinstance(mu, torch.Tensor) or not isinstance(logvar, torch.Tensor) or mu.shape != logvar.shape \
            or mu.dim() != 2:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (mu, logvar)]
        raise ValueError(f"mu and logvar must be tensors of the same shape (batch, latent_dim), got {shapes[0]} "
                         f"and {shapes[1]}")
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


class RateDistortion(NamedTuple):
    """Per-image rate, distortion and posterior of a data set (from :func:`rate_distortion`), nats.

    Every field has one row per image; ``rate == kl_per_dim.sum(1)``.
    """
    rate: torch.Tensor        #: (n,) R(x) = KL(q(z | x) || p(z)), exact
    distortion: torch.Tensor  #: (n,) D(x) = -log p(x | z) at one reparameterized z ~ q(z | x)
    kl_per_dim: torch.Tensor  #: (n, d) KL of each latent dimension
    mu: torch.Tensor          #: (n, d) posterior means
    logvar: torch.Tensor      #: (n, d) posterior log-variances

    @property
    def elbo(self):
        """(n,) the ELBO, -(D + R), nats per image."""
        return -(self.distortion + self.rate)

    def objective(self, beta: float):
        """(n,) the beta-VAE objective -(D + beta R), nats per image; ``beta = 1`` is the ELBO."""
        beta = check_real("beta", beta, 0)
        return -(self.distortion + beta * self.rate)

    @property
    def activity(self):
        """(d,) Burda et al.'s (2016) activity A_u = Var_x(mu_u(x)) (variance over the images, divided by n)."""
        return self.mu.var(0, unbiased=False)

    def active_units(self, threshold: float = 0.01) -> int:
        """Number of latent dimensions with activity A_u > ``threshold`` (Burda et al. use 0.01)."""
        threshold = check_real("threshold", threshold, 0)
        return int((self.activity > threshold).sum())


@torch.no_grad()
def rate_distortion(model: VAE, x, *, seed: int = 0, batch_size: int = 1000) -> RateDistortion:
    """Rate, distortion and KL per latent dimension of every image of ``x``.

    Parameters
    ----------
    model : helpers.vae.VAE
    x : Tensor (n, ...)
        Images the encoder accepts (binary for the Bernoulli likelihood).
    seed : int
        Seeds the noise eps of the reparameterized samples z = mu + sigma * eps (a CPU
        ``torch.Generator``, drawn batch after batch), so that two calls, or two models, are
        compared on the same noise. With ``batch_size >= n`` the noise is exactly that of
        ``helpers.vae.elbo(model, x, torch.Generator().manual_seed(seed))``.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    RateDistortion(rate (n,), distortion (n,), kl_per_dim (n, d), mu (n, d), logvar (n, d)), on the
    CPU, in nats per image; ``rate + distortion`` is -ELBO, image by image.
    """
    _check_vae(model, "rate_distortion")
    seed, batch_size = check_count("seed", seed, 0), check_count("batch_size", batch_size)
    model.check_input(x)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        mu, logvar = model.encoder(xb)
        z = model.reparameterize(mu, logvar, gen)
        rec = model.likelihood.log_prob(xb, model.decoder(z))
        kl_j = kl_per_dimension(mu, logvar)
        parts.append((kl_j.sum(-1), -rec, kl_j, mu, logvar))
    rate, distortion, kl_j, mu, logvar = (torch.cat(p).cpu() for p in zip(*parts))
    return RateDistortion(rate, distortion, kl_j, mu, logvar)


# ---------------------------------------------------------------------- free bits
def free_bits_loss(reconstruction, kl_per_dim, free_bits: float, beta: float = 1.0):
    """The free-bits training loss of a minibatch (Kingma et al. 2016, the IAF paper), nats per image:

        loss = -mean_x reconstruction(x) + beta * sum_j max(free_bits, mean_x KL_j(x)),

    each latent dimension j its own group: the KL of a dimension, averaged over the minibatch, is
    clamped below at ``free_bits`` nats, so a dimension that costs less than that costs nothing and
    gets no gradient towards the prior. Since max(lambda, KL_j) >= KL_j, minus this loss is at most
    the ELBO for ``beta >= 1``: still a lower bound on log p(x). ``free_bits = 0`` is the
    beta-VAE loss beta * KL - reconstruction.

    Parameters
    ----------
    reconstruction : Tensor (batch,)
        log p(x | z) per image (nats).
    kl_per_dim : Tensor (batch, d)
        :func:`kl_per_dimension` of the batch.
    free_bits : float >= 0
        lambda, nats per latent dimension.
    beta : float >= 0
        Weight of the (clamped) KL term.

    Returns
    -------
    Tensor (): the loss to minimise (differentiable).
    """
    free_bits, beta = check_real("free_bits", free_bits, 0), check_real("beta", beta, 0)
    if not isinstance(kl_per_dim, torch.Tensor) or kl_per_dim.dim() != 2:
        raise ValueError("kl_per_dim must be a tensor of shape (batch, latent_dim), got "
                         f"{tuple(kl_per_dim.shape) if isinstance(kl_per_dim, torch.Tensor) else type(kl_per_dim)}")
    if not isinstance(reconstruction, torch.Tensor) or reconstruction.shape != kl_per_dim.shape[:1]:
        raise ValueError(f"reconstruction must be a tensor of shape ({kl_per_dim.shape[0]},), one value per image")
    return beta * kl_per_dim.mean(0).clamp(min=free_bits).sum() - reconstruction.mean()


def free_bits_step(model: VAE, optimizer: torch.optim.Optimizer, x, generator=None, *, free_bits: float,
                   beta: float = 1.0) -> dict:
    """One gradient step on :func:`free_bits_loss` for the minibatch ``x`` (batch, ...).

    A step function for :func:`helpers.train.fit` (wrap it in a closure that picks the batch).
    Returns the batch means, nats per image, before the step: ``train_elbo``, ``reconstruction``,
    ``kl`` and ``free_bits_objective`` (minus the loss, <= ``train_elbo`` when ``beta >= 1``).
    Raises ``FloatingPointError`` for a non-finite loss or gradient, before the weights change.
    """
    model.train()
    mu, logvar = model.encoder(x)
    rec = model.likelihood.log_prob(x, model.decoder(model.reparameterize(mu, logvar, check_generator(generator))))
    kl_j = kl_per_dimension(mu, logvar)
    loss = free_bits_loss(rec, kl_j, free_bits, beta)
    screened_step(loss, optimizer, model.parameters())
    rec, kl = rec.detach().mean().item(), kl_j.detach().sum(1).mean().item()
    return {"train_elbo": rec - kl, "reconstruction": rec, "kl": kl, "free_bits_objective": -loss.item()}


@dataclass(frozen=True)
class FreeBitsSettings:
    """Everything :func:`train_free_bits` needs besides the model and the data; validated when built.
    Its fields are the checkpoint fingerprint and ``history.settings``."""

    n_epochs: int
    free_bits: float
    beta: float = 1.0
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    dynamic_binarization: bool = False

    def __post_init__(self):
        check_count("n_epochs", self.n_epochs)
        check_count("batch_size", self.batch_size)
        check_count("seed", self.seed, 0)
        check_real("free_bits", self.free_bits, 0)
        check_real("beta", self.beta, 0)
        check_real("lr", self.lr, 0, low_ok=False)
        if not isinstance(self.dynamic_binarization, bool):
            raise ValueError(f"dynamic_binarization must be True or False, got {self.dynamic_binarization!r}")


def train_free_bits(model: VAE, x_train, x_test=None, *, progress: bool = True, checkpoint=None, **settings) -> dict:
    """Train ``model`` with Adam on the free-bits loss (:func:`free_bits_step` through :func:`helpers.train.fit`).

    Parameters
    ----------
    model : helpers.vae.VAE
        Trained in place.
    x_train : Tensor (n, ...)
        Binary images, or grey levels in [0, 1] with ``dynamic_binarization=True`` (every batch
        re-binarized with fresh Bernoulli draws from the seeded generator).
    x_test : Tensor (m, ...), optional
        Binary test images: after every epoch the history records ``test_elbo``, ``test_rate`` and
        ``test_distortion`` (:func:`rate_distortion` with ``seed``).
    **settings
        The fields of :class:`FreeBitsSettings`: ``n_epochs``, ``free_bits`` (lambda, nats per latent
        dimension), ``beta`` (1), ``batch_size`` (128), ``lr`` (1e-3), ``seed`` (0: shuffling, noise,
        binarization), ``dynamic_binarization`` (False).
    progress : bool
        A tqdm progress bar.
    checkpoint : path, optional
        The course's cache (e.g. ``helpers.config.checkpoint_path(name)``): a run with the same
        architecture, initial weights, data and settings is loaded instead of trained.

    Returns
    -------
    helpers.train.History with ``train_elbo``, ``reconstruction``, ``kl``, ``free_bits_objective``
    (epoch means, nats per image) and, with ``x_test``, the test numbers.
    """
    _check_vae(model, "train_free_bits")
    s = build_settings(FreeBitsSettings, settings)
    device = next(model.parameters()).device
    model.check_input(x_train, data_check=not s.dynamic_binarization)
    if s.dynamic_binarization:
        if not isinstance(model.likelihood, BernoulliLikelihood):
            raise ValueError("dynamic_binarization=True needs the Bernoulli likelihood")
        if x_train.min() < 0 or x_train.max() > 1:
            raise ValueError("dynamic_binarization needs x_train intensities in [0, 1]")
    if x_test is not None:
        model.check_input(x_test)
    x_train = x_train.to(device)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)

    def step(idx):
        xb = x_train[idx]
        if s.dynamic_binarization:
            xb = torch.bernoulli(xb, generator=gen)
        return free_bits_step(model, opt, xb, gen, free_bits=s.free_bits, beta=s.beta)

    def evaluate(epoch):
        if x_test is None:
            return {}
        model.eval()
        rd = rate_distortion(model, x_test.to(device), seed=s.seed)
        return {"test_elbo": rd.elbo.mean().item(), "test_rate": rd.rate.mean().item(),
                "test_distortion": rd.distortion.mean().item()}

    fingerprint = None
    if checkpoint is not None:
        fingerprint = checkpoint_io.module_fingerprint(
            model, x_train=x_train, x_test="none" if x_test is None else x_test, **dataclasses.asdict(s))
    history = fit(step, len(x_train), n_epochs=s.n_epochs, batch_size=s.batch_size, generator=gen, evaluate=evaluate,
                  progress=progress, desc="training VAE (free bits)", show=("train_elbo", "test_elbo"), device=device,
                  hint=f"Try a smaller learning rate (lr={s.lr:g} now) and rebuild the model.",
                  settings=dataclasses.asdict(s), checkpoint=checkpoint, fingerprint=fingerprint,
                  kind=_CHECKPOINT_FORMAT, state=model.state_dict, restore=model.load_state_dict)
    model.eval()
    return history
