"""MNIST encoders and decoders; later generators, discriminators, denoisers.

The networks of every model family live here, not in the family's module: a
VAE (:mod:`helpers.vae`), and in the coming weeks a GAN's generator and
discriminator or a diffusion model's denoiser, build on the same layers
without importing each other. Data flows one way: this module imports only
torch; the model modules import it.

What is here now (z is the latent code, written ``h`` in the notes):

* :class:`MLPEncoder`: flat images x (batch, 784) -> ``(mu, logvar)``, each
  (batch, latent_dim); images (batch, 1, 28, 28) are flattened first.
* :class:`MLPDecoder`: z (batch, latent_dim) -> (batch, 784).
* :class:`ConvEncoder`: images x (batch, 1, 28, 28) -> ``(mu, logvar)``, each
  (batch, latent_dim).
* :class:`ConvDecoder`: z (batch, latent_dim) -> (batch, 1, 28, 28).
* :class:`MLP`: a plain fully connected network (batch, in_dim) -> (batch,
  out_dim), for low-dimensional toy data (a 1-D or 2-D GAN's generator and
  discriminator, a 2-D energy or score network).
* :class:`SpinGenerator`: a GAN generator of +-1 lattices, z (batch,
  latent_dim) -> (batch, L * L) exact spins (straight-through sign of tanh)
  or tanh values, around any network (e.g. :class:`MLP`).
* :class:`LinearEncoder` and :class:`LinearDecoder`: the linear-Gaussian VAE
  (mu = x A^T + c with a learned, input-independent logvar; z -> z W^T + b),
  whose optimum is probabilistic PCA (:mod:`helpers.ppca`). For lattices (the
  Ising model) use these or the MLP networks with ``input_dim = L * L``; an
  (batch, L, L) batch is flattened row by row.
* :class:`MNISTClassifier`: images (batch, 1, 28, 28) -> digit logits (batch, 10), with
  ``features(x)`` (batch, feature_dim), the penultimate layer the sample-quality metrics use.
* :class:`DCGANGenerator`: z (batch, latent_dim) -> images (batch, 1, 28, 28) in (0, 1);
  :class:`DCGANDiscriminator`: images -> logits (batch, 1).
* :class:`TimeMLP`: (x (batch, d), t (batch,)) -> (batch, d), an :class:`MLP` on x and Fourier
  features of t (:func:`time_features`), the noise predictor of a low-dimensional diffusion model;
  :class:`Denoiser`: a small U-Net, (x_t (batch, 1, 28, 28), t (batch,)) -> (batch, 1, 28, 28), for
  MNIST diffusion (:mod:`helpers.diffusion`).

Encoders return the mean and the log-variance (natural log) of a diagonal
Gaussian q(z | x). Decoders return unnormalised parameters, never
probabilities: logits for a Bernoulli likelihood (apply ``torch.sigmoid`` for
pixel probabilities) or means for a Gaussian one; the likelihood that reads
them lives with the model (:class:`helpers.vae.BernoulliLikelihood`).
Encoders check their input (``check_input``: a float tensor of the right
shape, no NaN or inf) and say what to change; decoders take any (batch,
latent_dim) tensor. Parameters are created in a fixed order, so a model built
after ``torch.manual_seed(s)`` has the same initial weights every time.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

#: MNIST image shape (channels, height, width) expected by the convolutional encoder.
IMAGE_SHAPE = (1, 28, 28)


# ---------------------------------------------------------------------- input checks
def _check_tensor(x, who: str) -> None:
    """Raise ``TypeError`` unless ``x`` is a tensor, ``ValueError`` unless it is
    floating point and finite; ``who`` names the caller in the message."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} needs a torch.Tensor, got {type(x).__name__} (convert with torch.as_tensor)")
    if not x.is_floating_point():
        raise ValueError(f"{who} needs floating-point data, got dtype {x.dtype}; "
                         "for uint8 images use x.float() / 255 (or helpers.data.load_mnist)")
    if not torch.isfinite(x).all():
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(f"{who} got {n_nan} NaN and {n_inf} infinite values; clean the data first")


def _shape_error(who: str, expected: str, x: torch.Tensor, hint: str = "") -> ValueError:
    """The ``ValueError`` for a batch of the wrong shape: expected, got, and an optional hint."""
    return ValueError(f"{who} expects a batch of shape {expected}, got {tuple(x.shape)}"
                      + (f"; {hint}" if hint else ""))


def _check_images(x, who: str) -> None:
    """Raise unless ``x`` is a finite float batch of MNIST images (batch, 1, 28, 28); the message
    says how to reshape flat (batch, 784) rows."""
    _check_tensor(x, who)
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        hint = ("reshape flat images with x.view(-1, 1, 28, 28) or load them with load_mnist(..., flat=False)"
                if x.dim() == 2 and x.shape[1] == 784 else "the network is built for 28 x 28 MNIST images")
        raise _shape_error(who, "(batch, 1, 28, 28)", x, hint)


# ---------------------------------------------------------------------- MLP
class MLPEncoder(nn.Module):
    """x (batch, input_dim) -> hidden (ReLU) -> (mu, logvar), each (batch, latent_dim).

    Also accepts images (batch, 1, 28, 28) when ``input_dim`` is 784 (they are flattened).

    Parameters
    ----------
    input_dim : int
        Pixels per image (784 for MNIST).
    hidden : int
        Width of the hidden layer.
    latent_dim : int
        Size of the latent code; the last layer has ``2 * latent_dim`` outputs,
        split into ``mu`` and ``logvar`` (natural-log variance).
    """

    def __init__(self, input_dim: int = 784, hidden: int = 512, latent_dim: int = 2):
        super().__init__()
        self.input_dim, self.hidden, self.latent_dim = input_dim, hidden, latent_dim
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))

    def check_input(self, x):
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float tensor
        (batch, input_dim), or (batch, ...) with ``input_dim`` values per sample."""
        _check_tensor(x, type(self).__name__)
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.input_dim:
            raise _shape_error(type(self).__name__, f"(batch, {self.input_dim})", x,
                               "use x[None] for a single image" if x.dim() == 1 else "")

    def forward(self, x):
        """``x`` (batch, input_dim) -> ``(mu, logvar)``, each (batch, latent_dim)."""
        self.check_input(x)
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """z (batch, latent_dim) -> hidden (ReLU) -> output (batch, output_dim).

    The output is the likelihood's parameter: Bernoulli logits or Gaussian means.

    Parameters
    ----------
    latent_dim : int
        Size of the latent code.
    hidden : int
        Width of the hidden layer.
    output_dim : int
        Pixels per image (784 for MNIST).
    """

    def __init__(self, latent_dim: int = 2, hidden: int = 512, output_dim: int = 784):
        super().__init__()
        self.latent_dim, self.hidden, self.output_dim = latent_dim, hidden, output_dim
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, output_dim))

    def forward(self, z):
        """``z`` (batch, latent_dim) -> logits (or means) (batch, output_dim)."""
        return self.net(z)


# ---------------------------------------------------------------------- convolutional
class ConvEncoder(nn.Module):
    """The classic convolutional encoder for 28 x 28 images (Keras' VAE example).

    (batch, 1, 28, 28) -> conv 32 (3x3, stride 2) -> 14x14 -> conv 64 (3x3,
    stride 2) -> 7x7 -> flatten -> dense ``hidden`` (16 in Keras' example) ->
    (mu, logvar), each (batch, latent_dim). ReLU after every hidden layer.

    Convolutions run in the channels-last memory layout, which oneDNN computes
    about 1.5x faster on CPUs; the mathematics is unchanged.

    Parameters
    ----------
    latent_dim : int
        Size of the latent code.
    hidden : int
        Width of the dense layer between the convolutions and ``(mu, logvar)``.
    """

    def __init__(self, latent_dim: int = 2, hidden: int = 16):
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, hidden
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),   # 28 -> 14
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # 14 -> 7
        )
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, hidden), nn.ReLU(),
                                   nn.Linear(hidden, 2 * latent_dim))
        self.conv.to(memory_format=torch.channels_last)

    def check_input(self, x):
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float tensor (batch, 1, 28, 28)."""
        _check_images(x, type(self).__name__)

    def forward(self, x):
        """``x`` (batch, 1, 28, 28) -> ``(mu, logvar)``, each (batch, latent_dim)."""
        self.check_input(x)
        h = self.conv(x.contiguous(memory_format=torch.channels_last))
        mu, logvar = self.dense(h.contiguous()).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: z -> dense 7*7*64 -> transposed conv 64
    (stride 2) -> 14x14 -> transposed conv 32 (stride 2) -> 28x28 -> transposed
    conv 1 (3x3, stride 1) -> output (batch, 1, 28, 28), the likelihood's
    parameter (Bernoulli logits or Gaussian means).

    Parameters
    ----------
    latent_dim : int
        Size of the latent code.
    """

    def __init__(self, latent_dim: int = 2):
        super().__init__()
        self.latent_dim = latent_dim
        self.dense = nn.Sequential(nn.Linear(latent_dim, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # 14 -> 28
            nn.ConvTranspose2d(32, 1, 3, stride=1, padding=1),                                # 28 -> 28
        )
        self.deconv.to(memory_format=torch.channels_last)

    def forward(self, z):
        """``z`` (batch, latent_dim) -> logits (or means) (batch, 1, 28, 28)."""
        h = self.dense(z).contiguous(memory_format=torch.channels_last)
        return self.deconv(h).contiguous()


class MLP(nn.Module):
    """A fully connected network (batch, in_dim) -> (batch, out_dim) for low-dimensional data.

    ``depth`` hidden layers of ``hidden`` units, each followed by the activation; the output
    layer is linear (logits, scores, energies or samples: the caller decides what it means).

    Parameters
    ----------
    in_dim, out_dim : int
        Input and output sizes (>= 1).
    hidden : int
        Units per hidden layer (>= 1).
    depth : int
        Number of hidden layers (>= 0; 0 gives an affine map).
    activation : {"relu", "leaky_relu", "tanh", "silu"}
        ``leaky_relu`` uses slope 0.2, the usual choice in GAN discriminators.
    """

    _ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "silu": nn.SiLU}

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, depth: int = 2, activation: str = "relu"):
        from ._validate import check_choice, check_count  # here: importing helpers.nets imports only torch

        super().__init__()
        self.in_dim, self.out_dim = check_count("in_dim", in_dim), check_count("out_dim", out_dim)
        check_count("hidden", hidden)
        check_count("depth", depth, 0)
        check_choice("activation", activation, tuple(self._ACTIVATIONS))
        layers, width = [], in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), self._ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def check_input(self, x):
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float tensor (batch, in_dim)."""
        _check_tensor(x, type(self).__name__)
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise _shape_error(type(self).__name__, f"(batch, {self.in_dim})", x,
                               "use x[:, None] for a batch of scalars" if x.dim() == 1 and self.in_dim == 1 else "")

    def forward(self, x):
        """``x`` (batch, in_dim) -> (batch, out_dim)."""
        self.check_input(x)
        return self.net(x)


class SpinGenerator(nn.Module):
    """A GAN generator of +-1 lattices: z (batch, latent_dim) -> spins (batch, L * L), rows in row-major order.

    A network maps the latent vector to one pre-activation ``a_i`` per site; the spins are
    ``t = tanh(a)`` made discrete in one of two ways:

    * ``binarize="straight_through"`` (default): the forward pass returns ``sign(t)``, exactly
      +-1 (``t = 0`` counts as +1), so the discriminator never sees a non-binary value; the
      backward pass uses the derivative of ``tanh`` as if the sign were not there (the
      straight-through estimator, Bengio, Leonard & Courville 2013): a biased gradient of
      the sample's loss, but one that points where a larger ``|a|`` would move it;
    * ``binarize="tanh"``: the forward pass returns ``t`` itself, in (-1, 1); the sign is
      taken only when sampling (``torch.where(x >= 0, 1, -1)``). The discriminator can then
      tell generated from real lattices by values that are not +-1 alone.

    Parameters
    ----------
    net : nn.Module
        (batch, latent_dim) -> (batch, L * L) pre-activations, e.g. ``helpers.nets.MLP``.
    latent_dim : int
        Size of z (>= 1); GAN trainers draw z ~ N(0, I) of this size.
    L : int
        Lattice side (>= 2); the output has L * L columns.
    binarize : {"straight_through", "tanh"}
    """

    def __init__(self, net: nn.Module, latent_dim: int, L: int, binarize: str = "straight_through"):
        from ._validate import check_choice, check_count  # here: importing helpers.nets imports only torch

        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module mapping (batch, latent_dim) to (batch, L * L), "
                            f"got {type(net).__name__}")
        self.net = net
        self.latent_dim, self.L = check_count("latent_dim", latent_dim), check_count("L", L, 2)
        self.binarize = check_choice("binarize", binarize, ("straight_through", "tanh"))

    def forward(self, z):
        """``z`` (batch, latent_dim) -> spins (batch, L * L): +-1 (straight-through) or in (-1, 1) (tanh)."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be a tensor of shape (batch, {self.latent_dim}), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        a = self.net(z)
        if a.shape != (z.shape[0], self.L * self.L):
            raise ValueError(f"net returned shape {tuple(a.shape)}, expected ({z.shape[0]}, {self.L * self.L}) "
                             f"(one pre-activation per site of the {self.L} x {self.L} lattice)")
        t = torch.tanh(a)
        if self.binarize == "tanh":
            return t
        spins = torch.where(t >= 0, 1.0, -1.0).to(t.dtype)
        return spins + (t - t.detach())       # value: exactly the spins (t - t is 0); gradient: that of tanh


# ---------------------------------------------------------------------- linear (the linear-Gaussian VAE)
class LinearEncoder(nn.Module):
    """x (batch, input_dim) -> (mu, logvar): mu = x A^T + c, logvar a learned vector, the same for every x.

    With :class:`LinearDecoder` and a Gaussian likelihood of learned variance this is the
    linear-Gaussian VAE, whose exact posterior N(M^{-1} W^T (x - mu), sigma^2 M^{-1}) has a
    covariance that does not depend on x (:func:`helpers.ppca.ppca_posterior`): a linear mean
    and a constant diagonal variance can represent it whenever W^T W is diagonal, which is
    where gradient ascent on the ELBO goes (Lucas et al. 2019). Any (batch, ...) input with
    ``input_dim`` values per sample is flattened (lattices (batch, L, L) row by row).

    Parameters
    ----------
    input_dim : int
        Values per sample (L * L for a lattice).
    latent_dim : int
        Size of the latent code.

    Attributes
    ----------
    linear : nn.Linear
        ``weight`` A (latent_dim, input_dim), ``bias`` c (latent_dim,).
    logvar : nn.Parameter, shape (latent_dim,)
        Natural-log variance of q(z | x), initialised at 0 (the prior's).
    """

    def __init__(self, input_dim: int, latent_dim: int = 1):
        from ._validate import check_count  # here, not at the top: importing helpers.nets imports only torch

        super().__init__()
        self.input_dim, self.latent_dim = check_count("input_dim", input_dim), check_count("latent_dim", latent_dim)
        self.linear = nn.Linear(input_dim, latent_dim)
        self.logvar = nn.Parameter(torch.zeros(latent_dim))

    def check_input(self, x):
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float tensor
        (batch, input_dim), or (batch, ...) with ``input_dim`` values per sample."""
        _check_tensor(x, type(self).__name__)
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.input_dim:
            raise _shape_error(type(self).__name__, f"(batch, {self.input_dim})", x,
                               "use x[None] for a single sample" if x.dim() == 1 else "")

    def forward(self, x):
        """``x`` (batch, input_dim) -> ``(mu, logvar)``, each (batch, latent_dim)."""
        self.check_input(x)
        mu = self.linear(x.flatten(1))
        return mu, self.logvar.expand_as(mu)


class LinearDecoder(nn.Module):
    """z (batch, latent_dim) -> z W^T + b, (batch, output_dim): the mean of a Gaussian p(x | z)
    (or Bernoulli logits). ``weight`` W (output_dim, latent_dim) is the loading matrix of
    probabilistic PCA, ``bias`` b (output_dim,) its mean.

    Parameters
    ----------
    latent_dim : int
    output_dim : int
        Values per sample (L * L for a lattice).
    """

    def __init__(self, latent_dim: int = 1, output_dim: int = 64):
        from ._validate import check_count  # here, not at the top: importing helpers.nets imports only torch

        super().__init__()
        self.latent_dim = check_count("latent_dim", latent_dim)
        self.output_dim = check_count("output_dim", output_dim)
        self.linear = nn.Linear(latent_dim, output_dim)

    @property
    def weight(self) -> torch.Tensor:
        """W, shape (output_dim, latent_dim)."""
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor:
        """b, shape (output_dim,)."""
        return self.linear.bias

    def forward(self, z):
        """``z`` (batch, latent_dim) -> (batch, output_dim)."""
        return self.linear(z)


# ---------------------------------------------------------------------- the course's MNIST classifier
class MNISTClassifier(nn.Module):
    """A small CNN for MNIST digits, whose penultimate layer is the feature space of the sample-quality metrics.

    (batch, 1, 28, 28) grey levels in [0, 1] -> three blocks of conv (3x3, padding 1) -> [batch norm] ->
    ReLU -> max-pool 2, with ``width``, ``2 * width`` and ``4 * width`` channels: 28 -> 14 -> 7 -> 3 ->
    flatten -> dense ``feature_dim`` (ReLU): the *features* -> dense 10: the *logits* of the ten digits
    (no softmax). The third block matters: with two blocks (16 and 32 channels, or 24 and 48) the same
    training stayed below 99% test accuracy in our trials, with three it passed 99% after two epochs.

    :meth:`features` returns the penultimate layer (batch, feature_dim), the space in which
    :func:`helpers.metrics.frechet_distance` and :func:`helpers.metrics.precision_recall` compare
    generated and real images. Trained by :func:`helpers.classifier.train_classifier`. Batch
    normalisation (default) makes a few epochs enough; in evaluation mode (``.eval()``, as the
    metrics use it) it applies fixed running statistics, so each image's features depend on that
    image alone.

    Parameters
    ----------
    width : int
        Channels of the first convolution (the second has twice as many), >= 1.
    feature_dim : int
        Size of the penultimate layer, >= 1.
    batch_norm : bool
        Batch normalisation after each convolution (default True).
    """

    def __init__(self, width: int = 16, feature_dim: int = 64, batch_norm: bool = True):
        from ._validate import check_count  # here: importing helpers.nets imports only torch

        super().__init__()
        self.width, self.feature_dim = check_count("width", width), check_count("feature_dim", feature_dim)
        self.batch_norm = bool(batch_norm)

        def norm(c):
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), norm(width), nn.ReLU(), nn.MaxPool2d(2),                # 28 -> 14
            nn.Conv2d(width, 2 * width, 3, padding=1), norm(2 * width), nn.ReLU(), nn.MaxPool2d(2),    # 14 -> 7
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), norm(4 * width), nn.ReLU(), nn.MaxPool2d(2),  # 7 -> 3
        )
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 3 * 3, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, 10)

    def check_input(self, x):
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float tensor (batch, 1, 28, 28)."""
        _check_images(x, type(self).__name__)

    def features(self, x):
        """``x`` (batch, 1, 28, 28) -> the penultimate layer (batch, feature_dim), non-negative (after ReLU)."""
        self.check_input(x)
        return self.dense(self.conv(x))

    def forward(self, x):
        """``x`` (batch, 1, 28, 28) -> logits (batch, 10)."""
        return self.head(self.features(x))


# ---------------------------------------------------------------------- DCGAN (Radford et al. 2016), small
class DCGANGenerator(nn.Module):
    """A small DCGAN generator: z (batch, latent_dim) -> images (batch, 1, 28, 28) in (0, 1).

    z -> dense ``2 * width * 7 * 7`` -> [batch norm] -> ReLU -> (2 width, 7, 7) -> transposed conv
    ``width`` (4x4, stride 2) -> 14x14 -> [batch norm] -> ReLU -> transposed conv 1 (4x4, stride 2)
    -> 28x28 -> sigmoid: grey levels, the range of MNIST from :func:`helpers.data.load_mnist`.

    Batch normalisation in the generator (not after its last layer) follows Radford et al. (2016).
    In training mode it normalises with the statistics of the batch, in evaluation mode
    (``.eval()``) with running averages; call ``.eval()`` before sampling for images that do not
    depend on the rest of the batch.

    Parameters
    ----------
    latent_dim : int
        Size of z, >= 1 (z ~ N(0, I)).
    width : int
        Channels of the 14x14 layer (the 7x7 layer has twice as many), >= 1.
    batch_norm : bool
        Batch normalisation after the hidden layers (default True).
    """

    def __init__(self, latent_dim: int = 32, width: int = 32, batch_norm: bool = True):
        from ._validate import check_count  # here: importing helpers.nets imports only torch

        super().__init__()
        self.latent_dim, self.width = check_count("latent_dim", latent_dim), check_count("width", width)
        self.batch_norm = bool(batch_norm)
        norm1 = nn.BatchNorm1d(2 * width * 49) if batch_norm else nn.Identity()
        norm2 = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.dense = nn.Sequential(nn.Linear(latent_dim, 2 * width * 49), norm1, nn.ReLU(),
                                   nn.Unflatten(1, (2 * width, 7, 7)))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), norm2, nn.ReLU(),   # 7 -> 14
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1), nn.Sigmoid(),               # 14 -> 28
        )

    def forward(self, z):
        """``z`` (batch, latent_dim) -> images (batch, 1, 28, 28), grey levels in (0, 1)."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{type(self).__name__} expects latents of shape (batch, {self.latent_dim}), got {shape}")
        return self.deconv(self.dense(z))


class DCGANDiscriminator(nn.Module):
    """A small DCGAN discriminator: images (batch, 1, 28, 28) -> logits (batch, 1).

    conv ``width`` (4x4, stride 2, LeakyReLU 0.2) -> 14x14 -> conv ``2 * width`` (4x4, stride 2,
    LeakyReLU 0.2) -> 7x7 -> flatten -> dense 1. The output is a logit, log D / (1 - D) (apply
    ``torch.sigmoid`` for the probability D(x) that x is real), or the critic value of a WGAN.
    No batch normalisation, so each image's output depends on that image alone, as the
    gradient penalty of WGAN-GP assumes (Gulrajani et al. 2017).

    Parameters
    ----------
    width : int
        Channels of the first convolution (the second has twice as many), >= 1.
    """

    def __init__(self, width: int = 32):
        from ._validate import check_count  # here: importing helpers.nets imports only torch

        super().__init__()
        self.width = check_count("width", width)
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),              # 28 -> 14
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),      # 14 -> 7
            nn.Flatten(), nn.Linear(2 * width * 49, 1),
        )

    def check_input(self, x):
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float tensor (batch, 1, 28, 28)."""
        _check_images(x, type(self).__name__)

    def forward(self, x):
        """``x`` (batch, 1, 28, 28) -> logits (batch, 1)."""
        self.check_input(x)
        return self.net(x)


# ---------------------------------------------------------------------- diffusion denoisers (time-conditioned)
def _check_timesteps(t, n: int, n_steps: int, who: str) -> torch.Tensor:
    """``t`` as a float tensor (n,) of timesteps in [0, n_steps], or a clear error."""
    if not isinstance(t, torch.Tensor) or t.shape != (n,):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{who} needs one timestep per sample, a tensor of shape ({n},), got {got} "
                         "(e.g. torch.full((n,), t))")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{who} needs integer or real timesteps, got dtype {t.dtype}")
    if len(t) and (t.min() < 0 or t.max() > n_steps):
        raise ValueError(f"{who} was built for timesteps 0..{n_steps}, got values from {t.min().item():g} to "
                         f"{t.max().item():g}; build it with n_steps = the schedule's T")
    return t


def time_features(t: torch.Tensor, n_steps: int, n_frequencies: int) -> torch.Tensor:
    """Fourier features of the diffusion time: s = t / n_steps in [0, 1] -> (s, sin(pi 2^j s), cos(pi 2^j s)).

    ``t`` (batch,) integer or real timesteps -> (batch, 1 + 2 n_frequencies), j = 0..n_frequencies - 1: the
    slowest pair varies once over the whole schedule, the fastest resolves about n_steps / 2^n_frequencies
    steps, so nearby timesteps get nearby features (unlike a one-hot code) and the network can
    interpolate between them.
    """
    s = (t.to(torch.get_default_dtype() if not t.is_floating_point() else t.dtype) / n_steps)[:, None]
    phase = s * (math.pi * 2.0 ** torch.arange(n_frequencies, dtype=s.dtype, device=s.device))
    return torch.cat([s, torch.sin(phase), torch.cos(phase)], 1)


class TimeMLP(nn.Module):
    """A time-conditioned MLP for low-dimensional diffusion: (x (batch, dim), t (batch,)) -> (batch, dim).

    The input of an :class:`MLP` is x concatenated with :func:`time_features` of t; its output (linear)
    is the noise prediction eps_theta(x_t, t) of :mod:`helpers.diffusion` (or a score, a velocity: the
    caller decides). ``check_input`` refuses x of the wrong shape and t outside 0..n_steps.

    Parameters
    ----------
    dim : int
        Data dimension d (>= 1).
    n_steps : int
        The schedule's T: timesteps are scaled by it (t / T in [0, 1]).
    hidden, depth, activation
        Of the :class:`MLP` (defaults 64 units, 2 hidden layers, SiLU, smooth as a score should be).
    n_frequencies : int
        Sine/cosine pairs of the time features (>= 1).
    """

    def __init__(self, dim: int, n_steps: int, hidden: int = 64, depth: int = 2, n_frequencies: int = 6,
                 activation: str = "silu"):
        from ._validate import check_count  # here: importing helpers.nets imports only torch

        super().__init__()
        self.dim, self.n_steps = check_count("dim", dim), check_count("n_steps", n_steps)
        self.n_frequencies = check_count("n_frequencies", n_frequencies)
        self.mlp = MLP(dim + 1 + 2 * self.n_frequencies, dim, hidden, depth, activation)

    def check_input(self, x, t):
        """Raise ``TypeError``/``ValueError`` unless x is a finite float (batch, dim) tensor and t (batch,)
        holds timesteps in 0..n_steps."""
        _check_tensor(x, type(self).__name__)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise _shape_error(type(self).__name__, f"(batch, {self.dim})", x,
                               "use x[:, None] for a batch of scalars" if x.dim() == 1 and self.dim == 1 else "")
        _check_timesteps(t, x.shape[0], self.n_steps, type(self).__name__)

    def forward(self, x, t):
        """``x`` (batch, dim), ``t`` (batch,) -> (batch, dim)."""
        self.check_input(x, t)
        features = time_features(t.to(x.device), self.n_steps, self.n_frequencies).to(x.dtype)
        return self.mlp(torch.cat([x, features], 1))


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv 3x3 (+ a per-channel shift from the time embedding) -> GroupNorm -> SiLU ->
    conv 3x3, added to the input (through a 1x1 convolution when the channel count changes)."""

    def __init__(self, c_in: int, c_out: int, time_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(math.gcd(8, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(math.gcd(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h, emb):
        out = self.conv1(nn.functional.silu(self.norm1(h))) + self.time(emb)[:, :, None, None]
        return self.skip(h) + self.conv2(nn.functional.silu(self.norm2(out)))


class Denoiser(nn.Module):
    """A small U-Net for MNIST diffusion: (x_t (batch, 1, 28, 28) in about [-1, 1], t (batch,)) -> eps_hat, same shape.

    Two resolutions below the input (28 -> 14 -> 7, strided 3x3 convolutions down, nearest-neighbour
    upsampling up), one residual block per level on the way down and up, skip connections by
    concatenation (the U-Net of Ronneberger et al. 2015 as used by Ho et al. 2020, without attention and
    with one block per level). Channels ``width``, ``2 width``, ``2 width``; the time t enters every block
    as a per-channel shift, from :func:`time_features` through a two-layer MLP (``4 width`` units).
    The last convolution starts at zero, so the untrained network predicts eps_hat = 0 (loss 1 per pixel).
    GroupNorm (not batch norm): each image's output depends on that image alone, in training and sampling.

    Cost: about 85 million multiply-adds per image forward at width 32 (a quarter at width 16).

    Parameters
    ----------
    n_steps : int
        The schedule's T (timesteps are scaled by it).
    width : int
        Channels of the 28 x 28 level (>= 1).
    n_frequencies : int
        Sine/cosine pairs of the time features.
    """

    def __init__(self, n_steps: int, width: int = 32, n_frequencies: int = 8):
        from ._validate import check_count  # here: importing helpers.nets imports only torch

        super().__init__()
        self.n_steps, self.width = check_count("n_steps", n_steps), check_count("width", width)
        self.n_frequencies = check_count("n_frequencies", n_frequencies)
        c, e = width, 4 * width
        self.embed = nn.Sequential(nn.Linear(1 + 2 * self.n_frequencies, e), nn.SiLU(), nn.Linear(e, e))
        self.inp = nn.Conv2d(1, c, 3, padding=1)
        self.down1, self.pool1 = _ResBlock(c, c, e), nn.Conv2d(c, c, 3, stride=2, padding=1)              # 28 -> 14
        self.down2, self.pool2 = _ResBlock(c, 2 * c, e), nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)  # 14 -> 7
        self.mid = _ResBlock(2 * c, 2 * c, e)
        self.up2 = _ResBlock(4 * c, 2 * c, e)       # 7 -> 14, with the 14 x 14 skip
        self.up1 = _ResBlock(3 * c, c, e)           # 14 -> 28, with the 28 x 28 skip
        self.out = nn.Sequential(nn.GroupNorm(math.gcd(8, c), c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def check_input(self, x, t):
        """Raise unless x is a finite float batch (batch, 1, 28, 28) and t (batch,) holds timesteps in 0..n_steps."""
        _check_images(x, type(self).__name__)
        _check_timesteps(t, x.shape[0], self.n_steps, type(self).__name__)

    def forward(self, x, t):
        """``x`` (batch, 1, 28, 28), ``t`` (batch,) -> (batch, 1, 28, 28)."""
        self.check_input(x, t)
        emb = self.embed(time_features(t.to(x.device), self.n_steps, self.n_frequencies).to(x.dtype))
        h1 = self.down1(self.inp(x), emb)                                   # (c, 28, 28)
        h2 = self.down2(self.pool1(h1), emb)                                # (2c, 14, 14)
        h = self.mid(self.pool2(h2), emb)                                   # (2c, 7, 7)
        h = self.up2(torch.cat([nn.functional.interpolate(h, scale_factor=2), h2], 1), emb)
        h = self.up1(torch.cat([nn.functional.interpolate(h, scale_factor=2), h1], 1), emb)
        return self.out(h)
