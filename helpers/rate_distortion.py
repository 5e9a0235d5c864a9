"""Rate and distortion of a VAE, the beta-objective, active units, free bits, and exact log p(x) in 2-D.

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
* :func:`quadrature_log_marginal`: for a VAE with a 1- or 2-D latent space, log p(x) (and its
  tempered version beta log E_p(z)[p(x | z)^(1/beta)], the largest value the beta-objective can take
  for any q) by a deterministic quadrature on an adaptively refined grid: no stochastic bound, no estimator.

Notation: the notes write the latent variable as ``h``; here it is ``z`` as in :mod:`helpers.vae`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import checkpoint as checkpoint_io
from ._validate import check_count, check_generator, check_real
from .train import build_settings, fit, screened_step
from .vae import VAE, BernoulliLikelihood, GaussianLikelihood

__all__ = ["RateDistortion", "kl_per_dimension", "rate_distortion", "free_bits_loss", "free_bits_step",
           "FreeBitsSettings", "train_free_bits", "quadrature_log_marginal"]

_LOG_2PI = math.log(2 * math.pi)
_CHECKPOINT_FORMAT = "helpers.rate_distortion free-bits checkpoint 1"
_QUADRATURE_FORMAT = "helpers.rate_distortion quadrature 1"


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
    point, whatever the number of images. For a smooth integrand whose peak spans a few cells the
    midpoint rule converges very fast; check it by refinement (smaller ``spacing``, larger ``refine``
    and ``half_width``: the values must not move).

    Parameters
    ----------
    model : helpers.vae.VAE
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
    _check_vae(model, "quadrature_log_marginal")
    model.check_input(x)
    d = model.latent_dim
    if d not in (1, 2):
        raise ValueError(f"quadrature_log_marginal integrates over a 1- or 2-D latent space, this model has {d} "
                         "latent dimensions (use helpers.vae.iwae_log_likelihood, a stochastic lower bound)")
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
