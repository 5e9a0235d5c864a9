"""Figures for the course, with matplotlib only. Plotting never trains.

Every function draws into ``ax`` when given, else into a new figure, and returns
``(fig, ax)`` (``(fig, axes)`` when there are several panels); end a notebook
line with ``;`` or assign the result to avoid printing the tuple.

Decoders. Functions that decode latents (:func:`plot_latent_space`,
:func:`plot_interpolation`, :func:`helpers.widgets.latent_explorer`) accept

* a model with a ``decode_mean(z)`` method, such as :class:`helpers.vae.VAE`:
  the images drawn are E[x | z] (pixel probabilities for a Bernoulli VAE); or
* any callable mapping latents (k, d) to **images** (k, 784), (k, 28, 28) or
  (k, 1, 28, 28) with values in [0, 1]. A callable that returns logits (such
  as a bare ``ConvDecoder``) needs ``logits=True``, which applies the sigmoid.

Images (anywhere): tensors or arrays of shape (k, H*W) with a square H = W,
(k, H, W) or (k, 1, H, W).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._validate import check_count


# ---------------------------------------------------------------------- helpers
def as_images(images) -> np.ndarray:
    """``images`` as a float array (k, H, W); flat rows must have a square length."""
    a = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, float)
    if a.ndim == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise ValueError(f"flat images need a square number of pixels, got {a.shape[1]} per image")
        return a.reshape(len(a), side, side)
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 3:
        return a
    raise ValueError(f"images must have shape (k, H*W), (k, H, W) or (k, 1, H, W), got {a.shape}")


def image_function(decoder, logits: bool = False):
    """Turn a model or callable (see the module docstring) into ``f(z) -> images (k, H, W)``."""
    if hasattr(decoder, "decode_mean"):
        fn = decoder.decode_mean
    elif callable(decoder):
        fn = decoder
    else:
        raise TypeError(f"decoder must be a VAE (with decode_mean) or a callable, got {type(decoder).__name__}")

    def decode(z):
        with torch.no_grad():
            out = fn(z)
            return as_images(torch.sigmoid(out) if logits else out)
    return decode


def _model_dtype(decoder):
    if isinstance(decoder, torch.nn.Module):
        p = next(decoder.parameters(), None)
        if p is not None:
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def mosaic(images, nrow: int | None = None, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
    """One array with the images in a grid, ``nrow`` images per row (default
    about square), separated by ``pad`` pixels of ``pad_value``."""
    a = as_images(images)
    k, h, w = a.shape
    nrow = nrow or math.ceil(math.sqrt(k))
    rows = math.ceil(k / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, dtype=float)
    for i, img in enumerate(a):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return out


def _axes(ax, figsize):
    if ax is None:
        return plt.subplots(figsize=figsize)
    return ax.figure, ax


# ---------------------------------------------------------------------- image grids
def image_grid(images, nrow: int | None = None, ax=None, title: str | None = None, cmap: str = "gray",
               vmin: float = 0.0, vmax: float = 1.0, pad: int = 1):
    """Show images in a grid (``nrow`` per row) as one picture, without axis ticks.

    Returns ``(fig, ax)``; the grid is ``ax.images[0]`` (see :func:`mosaic`).
    """
    grid = mosaic(images, nrow, pad, pad_value=0.5 * (vmin + vmax))
    inches = np.clip(np.array(grid.shape[::-1]) / 40, 1.5, 12)  # about 0.7 inch per 28-pixel image
    fig, ax = _axes(ax, (inches[0], inches[1] + 0.4))
    ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig, ax


def plot_reconstructions(x, x_rec, n: int = 10, title: str = "Inputs and their reconstructions"):
    """The first ``n`` inputs (top row) above their reconstructions (bottom row).

    ``x_rec`` is computed by the caller, e.g. ``model.decode_mean(model.encode(x)[0])``
    (the decoded posterior mean). Returns ``(fig, axes)`` with two axes.
    """
    a, b = as_images(x)[:n], as_images(x_rec)[:n]
    if len(a) != len(b):
        raise ValueError(f"x and x_rec hold {len(a)} and {len(b)} images")
    fig, axes = plt.subplots(2, 1, figsize=(min(1.0 * len(a) + 0.5, 14), 3.4))
    image_grid(a, nrow=len(a), ax=axes[0], title="input x")
    image_grid(b, nrow=len(b), ax=axes[1], title=r"reconstruction $\hat{x}$")
    fig.suptitle(title)
    fig.tight_layout()
    return fig, axes


# ---------------------------------------------------------------------- latent space
def latent_grid(n: int = 30, scale: float = 2.0, grid: str = "linear"):
    """Coordinates of an ``n x n`` grid over a 2-D latent space.

    ``grid="linear"``: ``n`` evenly spaced values on [-scale, scale].
    ``grid="normal"``: the quantiles of the prior N(0, 1) at probabilities
    (i + 1/2) / n, i = 0..n-1 (never 0 or 1), so every cell holds the same prior
    mass; ``scale`` is not used.

    Returns
    -------
    values : Tensor (n,), increasing
    z : Tensor (n*n, 2), row-major as drawn: row r (top to bottom) has z_2 =
        values[n-1-r], column c has z_1 = values[c].
    """
    n = check_count("n", n)
    if grid == "linear":
        i = torch.arange(n, dtype=torch.float64)
        values = (scale * (2 * i - (n - 1)) / max(n - 1, 1)).float()  # symmetric: the middle value is exactly 0
    elif grid == "normal":
        p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        values = torch.distributions.Normal(0.0, 1.0).icdf(p).float()
    else:
        raise ValueError(f"grid must be 'linear' or 'normal', got {grid!r}")
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return values, torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)


def plot_latent_space(decoder, n: int = 30, scale: float = 2.0, grid: str = "linear", ax=None, *,
                      logits: bool = False, cmap: str = "gray", n_ticks: int = 7):
    """The decoded images E[x | z] on an ``n x n`` grid over a 2-D latent space.

    Parameters
    ----------
    decoder : VAE or callable
        See the module docstring (a VAE, or a callable returning images; ``logits=True``
        for one returning logits). The latent space must be 2-D.
    n, scale, grid
        See :func:`latent_grid`: "linear" spans [-scale, scale]; "normal" uses
        inverse-normal-CDF quantiles.

    Returns ``(fig, ax)``; the tick labels give z_1 (horizontal) and z_2 (vertical).
    """
    values, z = latent_grid(n, scale, grid)
    dtype, device = _model_dtype(getattr(decoder, "decoder", decoder))
    images = image_function(decoder, logits)(z.to(dtype=dtype, device=device))
    size = images.shape[1]
    fig, ax = _axes(ax, (8, 8))
    ax.imshow(mosaic(images, nrow=n, pad=0), cmap=cmap, vmin=0, vmax=1)
    idx = np.unique(np.linspace(0, n - 1, min(n, n_ticks)).round().astype(int))
    centers = idx * size + (size - 1) / 2
    ax.set_xticks(centers, [f"{values[i]:.2g}" for i in idx])
    ax.set_yticks(centers, [f"{values[n - 1 - i]:.2g}" for i in idx])
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    where = (f"evenly spaced on [-{scale:g}, {scale:g}]" if grid == "linear"
             else "at quantiles of N(0, 1)")
    ax.set_title(f"Decoded E[x | z] on a {n} x {n} latent grid, {where}")
    return fig, ax


def _encode_means(encoder_or_model, x, batch_size):
    fn = encoder_or_model.encode if hasattr(encoder_or_model, "encode") else encoder_or_model
    if not callable(fn):
        raise TypeError("encoder_or_model must be a VAE (with encode) or a callable returning (mu, logvar) or mu")
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            r = fn(x[i:i + batch_size])
            out.append(r[0] if isinstance(r, (tuple, list)) else r)
    return torch.cat(out).detach().cpu().numpy()


def plot_label_clusters(encoder_or_model, x, labels, ax=None, *, dims=(0, 1), batch_size: int = 1000,
                        s: float = 3.0, cmap: str = "tab10"):
    """Scatter of the latent means mu(x) coloured by digit label, with a colorbar.

    ``encoder_or_model``: a VAE (its ``encode``) or a callable returning
    ``(mu, logvar)`` or ``mu``. ``dims`` picks the two latent coordinates shown.
    Returns ``(fig, ax)``; the points are ``ax.collections[0]``.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} images but {len(labels)} labels")
    mu = _encode_means(encoder_or_model, x, batch_size)
    if mu.ndim != 2 or mu.shape[1] <= max(dims):
        raise ValueError(f"latent means of shape {mu.shape} have no dimensions {dims}")
    fig, ax = _axes(ax, (7, 6))
    classes = np.unique(labels)
    lo, hi = classes.min() - 0.5, classes.max() + 0.5
    points = ax.scatter(mu[:, dims[0]], mu[:, dims[1]], c=labels, s=s, cmap=cmap, vmin=lo, vmax=hi)
    bar = fig.colorbar(points, ax=ax, ticks=classes)
    bar.set_label("digit label")
    ax.set_xlabel(f"$\\mu_{dims[0] + 1}$")
    ax.set_ylabel(f"$\\mu_{dims[1] + 1}$")
    ax.set_title(f"Latent means of {len(x)} images, coloured by label")
    return fig, ax


def plot_interpolation(decoder, z0, z1, steps: int = 10, ax=None, *, logits: bool = False):
    """Decoded images along the straight line from ``z0`` to ``z1`` (each (d,)) in latent space.

    Returns ``(fig, ax)``; the row of images is ``ax.images[0]``.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    dtype, device = _model_dtype(getattr(decoder, "decoder", decoder))
    z0, z1 = (torch.as_tensor(v, dtype=dtype, device=device).reshape(-1) for v in (z0, z1))
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 need the same length, got {z0.numel()} and {z1.numel()}")
    t = torch.linspace(0, 1, steps, dtype=dtype, device=device)[:, None]
    images = image_function(decoder, logits)((1 - t) * z0 + t * z1)
    fig, ax = image_grid(images, nrow=steps, ax=ax, title=f"Linear interpolation in latent space, {steps} steps")
    ax.set_xlabel(r"$z = (1 - t)\,z_0 + t\,z_1$,  t from 0 (left) to 1 (right)")
    return fig, ax


# ---------------------------------------------------------------------- training curves
def plot_training_curves(history: dict, keys=None, ax=None, ylabel: str = "nats per image"):
    """Curves of ``history[key]`` against the epoch (``history["epoch"]`` or 1, 2, ...).

    ``keys`` default: ``train_elbo`` and ``test_elbo`` where present (the
    history of :func:`helpers.vae.train_vae`). Returns ``(fig, ax)``.
    """
    keys = list(keys) if keys is not None else [k for k in ("train_elbo", "test_elbo") if k in history]
    missing = [k for k in keys if k not in history]
    if missing or not keys:
        raise ValueError(f"keys {missing or keys} not in the history; it has {sorted(history)}")
    n = len(history[keys[0]])
    epochs = history.get("epoch", list(range(1, n + 1)))
    fig, ax = _axes(ax, (6, 4))
    for k in keys:
        label = k.replace("_", " ").replace("elbo", "ELBO")
        ax.plot(epochs[:len(history[k])], history[k], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title("Training curves")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig, ax


# ---------------------------------------------------------------------- schematic
def draw_autoencoder_schematic(path=None, dpi: int = 150):
    """Draw the (variational) autoencoder schematic: input x, encoder, latent code
    z (h in the notes), decoder, reconstruction x-hat; save it to ``path`` when given.

    Returns the figure.
    """
    from matplotlib.patches import FancyArrowPatch, Polygon, Rectangle

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4)
    ax.axis("off")
    blue, orange, green = "#c6dbef", "#fdd0a2", "#c7e9c0"

    def box(x0, y0, w, h, color, label, sub=None):
        ax.add_patch(Rectangle((x0, y0), w, h, fc=color, ec="black", lw=1.2))
        ax.text(x0 + w / 2, y0 + h / 2, label, ha="center", va="center", fontsize=15)
        if sub:
            ax.text(x0 + w / 2, y0 - 0.2, sub, ha="center", va="top", fontsize=9)

    def trapezoid(x0, x1, h0, h1, color, label, sub):
        ax.add_patch(Polygon([(x0, 2 - h0 / 2), (x1, 2 - h1 / 2), (x1, 2 + h1 / 2), (x0, 2 + h0 / 2)],
                             closed=True, fc=color, ec="black", lw=1.2))
        ax.text((x0 + x1) / 2, 2, label, ha="center", va="center", fontsize=11)
        ax.text((x0 + x1) / 2, 2 - max(h0, h1) / 2 - 0.2, sub, ha="center", va="top", fontsize=9)

    def arrow(x0, x1):
        ax.add_patch(FancyArrowPatch((x0, 2), (x1, 2), arrowstyle="-|>", mutation_scale=14, lw=1.2))

    box(0.2, 0.6, 0.8, 2.8, blue, "$x$", "input (784 pixels)")
    arrow(1.0, 1.4)
    trapezoid(1.4, 3.8, 2.8, 1.0, orange, "encoder", r"$q(z\,|\,x)$: $\mu(x)$, $\log\sigma^2(x)$")
    arrow(3.8, 4.3)
    box(4.3, 1.5, 1.4, 1.0, green, "$z$", "latent code\n($h$ in the notes)\n" r"$z = \mu + \sigma \odot \varepsilon$")
    arrow(5.7, 6.2)
    trapezoid(6.2, 8.6, 1.0, 2.8, orange, "decoder", r"$p(x\,|\,z)$")
    arrow(8.6, 9.0)
    box(9.0, 0.6, 0.8, 2.8, blue, r"$\hat{x}$", "reconstruction")
    ax.set_title(r"Variational autoencoder: encode $x$ to a low-dimensional code $z$, decode it to $\hat{x}$",
                 fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def draw_rbm_graph(path=None, n_visible: int = 6, n_hidden: int = 4, dpi: int = 150):
    """Draw the bipartite graph of a Bernoulli RBM: visible units x_i with biases a_i
    in the bottom row, hidden units h_j with biases b_j in the top row, one edge (a
    coupling W_ij) for every visible-hidden pair and none within a layer; save it to
    ``path`` when given.

    The units are ``matplotlib.patches.Circle`` patches (``n_visible + n_hidden``),
    the edges ``Line2D`` objects in ``ax.lines`` (``n_visible * n_hidden``); one
    edge is highlighted and labelled with the generic coupling W_ij.

    Returns the figure.
    """
    from matplotlib.patches import Circle

    if n_visible < 2 or n_hidden < 1:
        raise ValueError(f"need n_visible >= 2 and n_hidden >= 1, got {n_visible} and {n_hidden}")
    width = max(n_visible, n_hidden)
    x_vis = np.arange(n_visible) - (n_visible - 1) / 2
    x_hid = np.arange(n_hidden) - (n_hidden - 1) / 2
    y_vis, y_hid, radius = 0.0, 2.4, 0.32
    blue, green, red = "#c6dbef", "#c7e9c0", "#c0392b"
    i_ex, j_ex = 1, max(n_hidden - 2, 0)                  # the highlighted edge: x_2 - h_(N-1)
    left = -width / 2 - 0.55                                  # right edge of the row labels
    xlim, ylim = (left - 1.5, width / 2 + 0.5), (y_vis - 1.6, y_hid + 0.85)

    fig, ax = plt.subplots(figsize=(0.8 * (xlim[1] - xlim[0]), 0.8 * (ylim[1] - ylim[0]) + 0.5))
    for i, xv in enumerate(x_vis):
        for j, xh in enumerate(x_hid):
            example = (i, j) == (i_ex, j_ex)
            ax.plot([xv, xh], [y_vis, y_hid], color=red if example else "0.6", lw=2.6 if example else 0.9,
                    zorder=2 if example else 1)
    xl, yl = x_vis[i_ex] + 0.3 * (x_hid[j_ex] - x_vis[i_ex]), y_vis + 0.3 * (y_hid - y_vis)
    ax.text(xl - 0.1, yl, r"$W_{ij}$", color=red, fontsize=15, ha="right", va="center",
            bbox=dict(fc="white", ec="none", pad=0.5), zorder=2)
    for xs, y, color, unit, bias, dy in ((x_vis, y_vis, blue, "x", "a", -1), (x_hid, y_hid, green, "h", "b", 1)):
        for k, xc in enumerate(xs):
            ax.add_patch(Circle((xc, y), radius, fc=color, ec="black", lw=1.2, zorder=3))
            ax.text(xc, y, f"${unit}_{{{k + 1}}}$", ha="center", va="center", fontsize=14, zorder=4)
            ax.text(xc, y + dy * (radius + 0.1), f"${bias}_{{{k + 1}}}$", ha="center",
                    va="top" if dy < 0 else "bottom", fontsize=12, color="0.2")
    ax.text(left, y_hid, "hidden units $h_j$\nbiases $b_j$", ha="right", va="center", fontsize=11)
    ax.text(left, y_vis, "visible units $x_i$\nbiases $a_i$", ha="right", va="center", fontsize=11)
    ax.text((xlim[0] + xlim[1]) / 2, y_vis - 0.95,
            rf"a coupling $W_{{ij}}$ on every edge $x_i$ - $h_j$ (red: $W_{{{i_ex + 1}{j_ex + 1}}}$)" "\n"
            rf"{n_visible} $\times$ {n_hidden} edges, none within a layer", ha="center", va="top", fontsize=11)
    ax.set_title(r"$E(x, h) = -a\cdot x - b\cdot h - x^\top W h$", fontsize=14)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    return fig


if __name__ == "__main__":  # regenerate the committed figure: python -m helpers.plotting
    import matplotlib

    from .config import REPO_ROOT

    matplotlib.use("Agg")
    for name, draw in (("autoencoder_schematic", draw_autoencoder_schematic), ("rbm_bipartite_graph", draw_rbm_graph)):
        out = REPO_ROOT / "figures" / f"{name}.png"
        draw(out, dpi=120)
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
