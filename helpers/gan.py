"""Generative adversarial networks: the losses, the alternating training step, sampling, and the exact 1-D theory.

A generator G maps latent noise z ~ N(0, I) (``generator.latent_dim`` values per sample) to
data space; a discriminator D maps data to one **logit** per sample, D(x) = sigmoid(logit(x)),
the probability that x is real. Goodfellow et al. (2014) play the minimax game

    min_G max_D V(D, G),    V(D, G) = E_{x ~ p_data} log D(x) + E_{z ~ N(0, I)} log(1 - D(G(z))),

whose inner maximum is D*(x) = p_data(x) / (p_data(x) + p_g(x)) with
V(D*, G) = -log 4 + 2 JSD(p_data || p_g) (:func:`optimal_discriminator`, :func:`game_value`,
:func:`jensen_shannon` compute these by quadrature for 1-D densities on a grid).

Three losses (``GANSettings.loss``); with logits l, log D = -softplus(-l) and log(1 - D) = -softplus(l):

* ``"saturating"``: D minimises -V (binary cross-entropy), G minimises E log(1 - D(G(z))), the
  game as written. When D wins (D(G(z)) ~ 0) its gradient vanishes.
* ``"non_saturating"`` (default): same D; G minimises -E log D(G(z)) instead, which has the same
  fixed point and a large gradient exactly where the saturating one vanishes.
* ``"wgan_gp"`` (Gulrajani et al. 2017): D is a critic with real-valued outputs; it minimises
  E c(G(z)) - E c(x) + gp_weight E (||grad c(x_hat)|| - 1)^2 at interpolates
  x_hat = e x + (1 - e) G(z), e ~ U(0, 1) per sample; G minimises -E c(G(z)).

Training (:func:`train_gan`) is :func:`helpers.train.fit` with :func:`training_step` as the step:
per minibatch, ``d_steps`` discriminator updates (:func:`discriminator_step`), then one generator
update (:func:`generator_step`), each with its own Adam optimiser. Every random draw comes from
one seeded ``torch.Generator``, so the same seed and initial weights give bitwise identical runs
on the CPU. Networks live in :mod:`helpers.nets` (e.g. ``nets.MLP`` for toy data).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as checkpoint_io
from ._validate import check_choice, check_count, check_generator, check_real
from .nets import MLP, _check_tensor
from .train import History, build_settings, fit, screened_step

__all__ = ["GANSettings", "LOSSES", "latent_dim_of", "latent_noise", "sample", "discriminator_loss",
           "generator_loss", "gradient_penalty", "discriminator_step", "generator_step", "training_step",
           "train_gan", "optimal_discriminator", "game_value", "jensen_shannon"]

#: The losses :func:`train_gan` knows (see the module docstring).
LOSSES = ("non_saturating", "saturating", "wgan_gp")
_CHECKPOINT_FORMAT = "helpers.gan checkpoint 1"


@dataclass(frozen=True)
class GANSettings:
    """Everything :func:`train_gan` needs besides the networks and the data; validated when built.

    Its fields are the checkpoint fingerprint and ``history.settings``. See :func:`train_gan`.
    """

    n_epochs: int
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    loss: str = "non_saturating"
    d_steps: int = 1
    gp_weight: float = 10.0

    def __post_init__(self):
        check_count("n_epochs", self.n_epochs)
        check_count("batch_size", self.batch_size)
        check_count("seed", self.seed, 0)
        check_real("lr_g", self.lr_g, 0, low_ok=False)
        check_real("lr_d", self.lr_d, 0, low_ok=False)
        check_real("beta1", self.beta1, 0, 1, high_ok=False)
        check_real("beta2", self.beta2, 0, 1, high_ok=False)
        check_choice("loss", self.loss, LOSSES)
        check_count("d_steps", self.d_steps)
        check_real("gp_weight", self.gp_weight, 0)
        if self.loss != "wgan_gp" and self.gp_weight != 10.0:
            raise ValueError(f"gp_weight={self.gp_weight} only acts with loss='wgan_gp' (got loss={self.loss!r}); "
                             "leave it at its default")


# ---------------------------------------------------------------------- noise and sampling
def latent_dim_of(generator: nn.Module) -> int:
    """The generator's latent size: ``generator.latent_dim``, or ``in_dim`` for a :class:`helpers.nets.MLP`.

    Raises ``TypeError`` for a generator that has neither, naming the fix.
    """
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
    dim = getattr(generator, "latent_dim", None)
    if dim is None and isinstance(generator, MLP):
        dim = generator.in_dim
    if dim is None:
        raise TypeError(f"the generator ({type(generator).__name__}) has no attribute latent_dim, so the size of "
                        "z ~ N(0, I) is unknown; set generator.latent_dim = k (the number of inputs it takes)")
    return check_count("generator.latent_dim", dim)


def _device_of(module: nn.Module):
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def latent_noise(generator: nn.Module, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(0, I) of shape (n, latent_dim) on the generator's device, drawn from ``rng``."""
    n, d = check_count("n", n), latent_dim_of(generator)
    rng = check_generator(rng)
    device = _device_of(generator)
    if rng is None:
        return torch.randn(n, d, device=device)
    return torch.randn(n, d, generator=rng, device=rng.device).to(device)


@torch.no_grad()
def sample(generator: nn.Module, n: int, generator_rng: torch.Generator | None = None,
           batch_size: int = 4096) -> torch.Tensor:
    """``n`` samples G(z), z ~ N(0, I), without gradients.

    All of z (n, latent_dim) is drawn at once from ``generator_rng``, then pushed through the
    generator ``batch_size`` rows at a time, so the result does not depend on ``batch_size``.
    The generator runs in its current mode (:func:`train_gan` leaves it in eval mode).

    Returns
    -------
    Tensor (n, ...) on the generator's device: whatever the generator outputs per row.
    """
    batch_size = check_count("batch_size", batch_size)
    z = latent_noise(generator, n, generator_rng)
    return torch.cat([generator(z[i:i + batch_size]) for i in range(0, len(z), batch_size)])


# ---------------------------------------------------------------------- the losses
def gradient_penalty(critic: nn.Module, x_real: torch.Tensor, x_fake: torch.Tensor,
                     rng: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP's penalty E (||grad_x c(x_hat)||_2 - 1)^2 at x_hat = e x_real + (1 - e) x_fake (a 0-d tensor).

    ``e ~ U(0, 1)``, one per sample (drawn from ``rng``); the norm is over all of a sample's
    values. Differentiable in the critic's parameters (``create_graph=True``). ``x_real`` and
    ``x_fake`` have the same shape (batch, ...).
    """
    if x_real.shape != x_fake.shape:
        raise ValueError(f"x_real {tuple(x_real.shape)} and x_fake {tuple(x_fake.shape)} need the same shape")
    shape = (len(x_real),) + (1,) * (x_real.dim() - 1)
    where = rng.device if rng is not None else x_real.device
    e = torch.rand(shape, generator=rng, device=where, dtype=x_real.dtype).to(x_real.device)
    x_hat = (e * x_real + (1 - e) * x_fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def discriminator_loss(real_out: torch.Tensor, fake_out: torch.Tensor, loss: str = "non_saturating") -> torch.Tensor:
    """The discriminator's loss on one batch (0-d tensor, mean over the batch) from its outputs.

    ``real_out``, ``fake_out`` (batch, 1): logits for the two GAN losses, where the loss is the binary
    cross-entropy -E log D(x) - E log(1 - D(G(z))) = E softplus(-l_real) + E softplus(l_fake), i.e. -V;
    critic values for ``"wgan_gp"``, where it is E c(G(z)) - E c(x) (add the penalty separately,
    :func:`gradient_penalty`).
    """
    check_choice("loss", loss, LOSSES)
    if loss == "wgan_gp":
        return fake_out.mean() - real_out.mean()
    return F.softplus(-real_out).mean() + F.softplus(fake_out).mean()


def generator_loss(fake_out: torch.Tensor, loss: str = "non_saturating") -> torch.Tensor:
    """The generator's loss on one batch (0-d tensor) from the discriminator's outputs on G(z), (batch, 1).

    ``"saturating"``: E log(1 - D(G(z))) = -E softplus(l); ``"non_saturating"``: -E log D(G(z))
    = E softplus(-l); ``"wgan_gp"``: -E c(G(z)).
    """
    check_choice("loss", loss, LOSSES)
    if loss == "saturating":
        return -F.softplus(fake_out).mean()
    if loss == "non_saturating":
        return F.softplus(-fake_out).mean()
    return -fake_out.mean()


def _summary(out: torch.Tensor, loss: str) -> float:
    """Mean D(x) as a probability (GAN losses) or mean critic value (WGAN)."""
    return (out if loss == "wgan_gp" else torch.sigmoid(out)).mean().item()


# ---------------------------------------------------------------------- the steps
def discriminator_step(generator: nn.Module, discriminator: nn.Module, optimizer: torch.optim.Optimizer,
                       x_real: torch.Tensor, rng: torch.Generator | None = None, *, loss: str = "non_saturating",
                       gp_weight: float = 10.0) -> dict:
    """One update of the discriminator on the real batch ``x_real`` (batch, ...) and as many fakes G(z).

    The fakes are drawn without gradients (the generator does not change); z, and for
    ``"wgan_gp"`` the interpolation weights, come from ``rng``. The step is
    :func:`helpers.train.screened_step` (no update on a NaN/inf loss or gradient: ``FloatingPointError``).

    Returns
    -------
    dict of floats (before the update): ``loss_d`` (with the penalty for WGAN-GP), ``d_real``,
    ``d_fake`` (mean D as a probability, or mean critic value), and ``gradient_penalty`` for WGAN-GP.
    """
    discriminator.train()
    with torch.no_grad():
        x_fake = generator(latent_noise(generator, len(x_real), rng))
    real_out, fake_out = discriminator(x_real), discriminator(x_fake)
    total = discriminator_loss(real_out, fake_out, loss)
    terms = {}
    if loss == "wgan_gp":
        gp = gradient_penalty(discriminator, x_real, x_fake, rng)
        total = total + gp_weight * gp
        terms["gradient_penalty"] = gp.item()
    screened_step(total, optimizer, list(discriminator.parameters()))
    return {"loss_d": total.item(), "d_real": _summary(real_out, loss), "d_fake": _summary(fake_out, loss), **terms}


def generator_step(generator: nn.Module, discriminator: nn.Module, optimizer: torch.optim.Optimizer, n: int,
                   rng: torch.Generator | None = None, *, loss: str = "non_saturating") -> dict:
    """One update of the generator on ``n`` fresh z ~ N(0, I) against the current discriminator.

    The discriminator's parameters get no gradients (``requires_grad`` off during the step and
    restored afterwards). Returns ``{"loss_g": ...}`` (before the update); screened like
    :func:`discriminator_step`.
    """
    generator.train()
    params = [p for p in discriminator.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        total = generator_loss(discriminator(generator(latent_noise(generator, n, rng))), loss)
        screened_step(total, optimizer, list(generator.parameters()))
    finally:
        for p in params:
            p.requires_grad_(True)
    return {"loss_g": total.item()}


def training_step(generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer,
                  opt_d: torch.optim.Optimizer, real_batches, rng: torch.Generator | None = None, *,
                  loss: str = "non_saturating", gp_weight: float = 10.0) -> dict:
    """One round of the game: a :func:`discriminator_step` on each real batch of ``real_batches``
    (a list of ``d_steps`` tensors (batch, ...)), then one :func:`generator_step` on as many z as the
    first batch has rows.

    Returns the means over the discriminator steps of their terms (``loss_d``, ``d_real``,
    ``d_fake``, and ``gradient_penalty`` for WGAN-GP) and the generator's ``loss_g``.
    """
    check_choice("loss", loss, LOSSES)
    if not real_batches:
        raise ValueError("real_batches must hold at least one batch (one per discriminator step)")
    sums: dict = {}
    for xb in real_batches:
        for key, value in discriminator_step(generator, discriminator, opt_d, xb, rng, loss=loss,
                                             gp_weight=gp_weight).items():
            sums[key] = sums.get(key, 0.0) + value
    terms = {key: value / len(real_batches) for key, value in sums.items()}
    terms.update(generator_step(generator, discriminator, opt_g, len(real_batches[0]), rng, loss=loss))
    return terms


# ---------------------------------------------------------------------- training
def _check_networks(generator, discriminator, x_train):
    """Clear errors for data or networks that do not fit together (before any training)."""
    if not isinstance(discriminator, nn.Module):
        raise TypeError(f"discriminator must be a torch.nn.Module, got {type(discriminator).__name__}")
    latent_dim_of(generator)
    _check_tensor(x_train, "train_gan's x_train")
    if x_train.dim() < 2 or len(x_train) < 1:
        raise ValueError(f"x_train must be a batch (n, ...) with n >= 1, got shape {tuple(x_train.shape)}; "
                         "use x[:, None] for n scalars")
    probe = x_train[:2].to(_device_of(discriminator))
    modes = generator.training, discriminator.training
    generator.eval(), discriminator.eval()          # the probes must not touch batch-norm statistics
    try:
        with torch.no_grad():
            try:
                out = discriminator(probe)
            except (ValueError, RuntimeError) as err:
                raise ValueError(f"the discriminator cannot take the data: x_train has rows of shape "
                                 f"{tuple(x_train.shape[1:])} ({err})") from None
            fake = generator(torch.zeros(2, latent_dim_of(generator), device=_device_of(generator)))
    finally:
        generator.train(modes[0]), discriminator.train(modes[1])
    if tuple(out.shape) != (len(probe), 1):
        raise ValueError(f"the discriminator must return one logit per sample, shape (batch, 1); on a batch of "
                         f"{len(probe)} it returned {tuple(out.shape)}")
    if tuple(fake.shape[1:]) != tuple(x_train.shape[1:]):
        raise ValueError(f"the generator makes samples of shape {tuple(fake.shape[1:])} but the rows of x_train "
                         f"have shape {tuple(x_train.shape[1:])}; they must match")


def train_gan(generator: nn.Module, discriminator: nn.Module, x_train: torch.Tensor, *, progress: bool = True,
              checkpoint=None, evaluate=None, **settings) -> History:
    """Train a GAN with two Adam optimisers and alternating steps; returns the history per epoch.

    The loop is :func:`helpers.train.fit`; each minibatch of ``x_train`` is one :func:`training_step`:
    ``d_steps`` discriminator updates, the first on the minibatch and the others on minibatches
    drawn uniformly with replacement from ``x_train`` (as WGAN-GP samples a fresh real batch per
    critic step), then one generator update. An epoch is thus ``ceil(n / batch_size)`` generator updates.

    Parameters
    ----------
    generator : nn.Module
        z (batch, latent_dim) -> samples (batch, ...) shaped like the rows of ``x_train``; its latent
        size is ``generator.latent_dim`` (a :class:`helpers.nets.MLP`: its ``in_dim``).
    discriminator : nn.Module
        Samples (batch, ...) -> logits (batch, 1); critic values for ``loss="wgan_gp"``.
    x_train : Tensor (n, ...)
        Finite floating-point data, moved to the generator's device.
    progress : bool
        The tqdm bar of :func:`helpers.train.fit`.
    checkpoint : path, optional
        The cache (:mod:`helpers.checkpoint`): a stored run with the same fingerprint (the settings,
        both networks' architecture and initial weights, the data's digest) is loaded instead of
        trained (weights only); otherwise both networks' weights are saved after training.
    evaluate : callable ``epoch -> dict``, optional
        Called after each epoch (not timed); its floats join the history (e.g. an exact JSD).
        It may switch the networks to eval mode: each step switches them back to train mode.
    **settings
        The fields of :class:`GANSettings`: ``n_epochs``; ``batch_size`` (64); ``lr_g``, ``lr_d``
        (2e-4 each), ``beta1``, ``beta2`` (0.5, 0.999): Adam for the generator and the discriminator
        (the DCGAN recipe of Radford et al. 2016); ``seed`` (one ``torch.Generator`` for the batch
        order, z and the interpolation weights); ``loss`` ("non_saturating", "saturating", "wgan_gp");
        ``d_steps`` (discriminator updates per generator update); ``gp_weight`` (lambda of WGAN-GP, 10).

    Returns
    -------
    helpers.train.History: ``epoch``, ``time`` (seconds), ``loss_d``, ``loss_g`` (nats for the GAN
    losses; critic units for WGAN-GP), ``d_real``, ``d_fake`` (mean D(x) and D(G(z)) as probabilities,
    or mean critic values), ``gradient_penalty`` for WGAN-GP: means over the epoch, taken while the
    networks were changing; plus ``evaluate``'s keys. Both networks end in eval mode.

    Raises
    ------
    TypeError, ValueError
        Unknown settings, a generator without latent_dim, data the discriminator cannot take,
        outputs of the wrong shape, non-finite data.
    FloatingPointError
        A loss or gradient became NaN/inf (the message names the epoch and batch).
    """
    s = build_settings(GANSettings, settings)
    _check_networks(generator, discriminator, x_train)
    device = _device_of(generator)
    x_train = x_train.to(device)
    n = len(x_train)
    rng = torch.Generator(device=device).manual_seed(s.seed)
    opt_g = torch.optim.Adam(generator.parameters(), lr=s.lr_g, betas=(s.beta1, s.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=s.lr_d, betas=(s.beta1, s.beta2))

    def step(idx):
        batches = [x_train[idx]]
        for _ in range(s.d_steps - 1):
            batches.append(x_train[torch.randint(n, (len(idx),), generator=rng, device=rng.device).to(device)])
        return training_step(generator, discriminator, opt_g, opt_d, batches, rng, loss=s.loss,
                             gp_weight=s.gp_weight)

    def state():
        return {**{f"generator.{k}": v.detach().cpu() for k, v in generator.state_dict().items()},
                **{f"discriminator.{k}": v.detach().cpu() for k, v in discriminator.state_dict().items()}}

    def restore(stored):
        for prefix, module in (("generator.", generator), ("discriminator.", discriminator)):
            module.load_state_dict({k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)})

    fingerprint = None
    if checkpoint is not None:
        fingerprint = checkpoint_io.fingerprint(s, generator=generator, discriminator=discriminator, x_train=x_train)
    lr = min(s.lr_g, s.lr_d)
    history = fit(step, n, n_epochs=s.n_epochs, batch_size=s.batch_size, generator=rng, evaluate=evaluate,
                  progress=progress, desc=f"training GAN ({s.loss})", show=("loss_d", "loss_g"), device=device,
                  hint=f"Try smaller learning rates (e.g. lr_g=lr_d={lr / 4:g}) and rebuild both networks: their "
                       "weights are no longer usable.",
                  settings=dataclasses.asdict(s), checkpoint=checkpoint, fingerprint=fingerprint,
                  kind=_CHECKPOINT_FORMAT, state=state, restore=restore)
    generator.eval()
    discriminator.eval()
    return history


# ---------------------------------------------------------------------- exact theory on a 1-D grid
def _grid_densities(x, *densities, names):
    """Validate a grid x (m,) and densities on it (m,): float, finite, non-negative, integrating to ~1."""
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or len(x) < 3 or not bool((x.diff() > 0).all()):
        raise ValueError("x must be a 1-D tensor of at least 3 increasing grid points")
    out = []
    for name, p in zip(names, densities):
        if not isinstance(p, torch.Tensor) or p.shape != x.shape:
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"{name} must be a tensor of densities on the grid, shape {tuple(x.shape)}, got {shape}")
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
            raise ValueError(f"{name} must be finite and non-negative on the grid")
        mass = torch.trapezoid(p, x).item()
        if abs(mass - 1) > 1e-3:
            raise ValueError(f"{name} integrates to {mass:.6f} on the grid, not 1; widen or refine the grid "
                             "(it must hold all of the mass) or normalise the density")
        out.append(p.to(x.dtype))
    return out


def optimal_discriminator(p_data: torch.Tensor, p_g: torch.Tensor) -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)), point by point; 1/2 where both densities vanish.

    ``p_data``, ``p_g``: non-negative tensors of the same shape (densities or probabilities at the
    same points). Returns a tensor of that shape with values in [0, 1].
    """
    if not isinstance(p_data, torch.Tensor) or not isinstance(p_g, torch.Tensor) or p_data.shape != p_g.shape:
        raise ValueError("p_data and p_g must be tensors of the same shape")
    if bool((p_data < 0).any()) or bool((p_g < 0).any()) or not bool(torch.isfinite(p_data + p_g).all()):
        raise ValueError("p_data and p_g must be finite and non-negative")
    total = p_data + p_g
    return torch.where(total > 0, p_data / total.clamp_min(torch.finfo(total.dtype).tiny), 0.5)


def game_value(d: torch.Tensor, p_data: torch.Tensor, p_g: torch.Tensor, x: torch.Tensor) -> float:
    """V(D, G) = int p_data log D dx + int p_g log(1 - D) dx by the trapezoidal rule on the grid ``x``, nats.

    ``d`` (m,): D(x) in [0, 1] at the grid points; ``p_data``, ``p_g`` (m,): the two densities there
    (each must integrate to 1 within 1e-3 on the grid). 0 log 0 = 0; -inf where D puts 0 on data mass.
    V <= V(D*, G) = -log 4 + 2 JSD for every D.
    """
    p_data, p_g = _grid_densities(x, p_data, p_g, names=("p_data", "p_g"))
    if not isinstance(d, torch.Tensor) or d.shape != x.shape or bool(((d < 0) | (d > 1) | d.isnan()).any()):
        raise ValueError(f"d must be a tensor of probabilities in [0, 1] on the grid, shape {tuple(x.shape)}")
    d = d.to(x.dtype)
    return torch.trapezoid(torch.xlogy(p_data, d) + torch.xlogy(p_g, 1 - d), x).item()


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor | None = None) -> float:
    """JSD(p || q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2, in nats (0 <= JSD <= log 2).

    With a grid ``x`` (m,): ``p``, ``q`` are densities at its points, integrated by the trapezoidal
    rule (each must integrate to 1 within 1e-3). Without: ``p``, ``q`` are probability vectors of one
    discrete distribution each (e.g. bin masses), summing to 1 within 1e-6; the JSD of binned
    distributions is <= that of the densities (data processing) and converges to it as bins shrink.
    """
    if x is not None:
        p, q = _grid_densities(x, p, q, names=("p", "q"))
        m = (p + q) / 2
        integrand = torch.xlogy(p, p) + torch.xlogy(q, q) - torch.xlogy(p + q, m)
        return 0.5 * torch.trapezoid(integrand, x).item()
    for name, v in (("p", p), ("q", q)):
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
            raise ValueError(f"{name} must be a 1-D tensor of non-negative probabilities")
        if abs(v.sum().item() - 1) > 1e-6:
            raise ValueError(f"{name} sums to {v.sum().item():.8f}, not 1; normalise it (or pass the grid x for "
                             "densities)")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same length, got {len(p)} and {len(q)}")
    m = (p + q) / 2
    return max(0.5 * (torch.xlogy(p, p) + torch.xlogy(q, q) - torch.xlogy(p + q, m)).sum().item(), 0.0)
