"""Interactive explorers for JupyterLab (ipywidgets), each with a static fallback.

A kernel cannot tell whether a widget frontend will render its output:
JupyterLab does, but nbval, an HTML export (nbconvert) or GitHub's notebook
viewer show only static outputs. So the explorer **always** shows a static
matplotlib panel beneath the live widget (a PNG image, which every renderer
keeps). Without ipywidgets installed it shows the static panel alone, with a
note saying how to get the sliders.

Like any widget, an explorer appears when it is the last expression of a cell
or when passed to ``IPython.display.display``; creating it displays nothing.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib.figure import Figure

from .plotting import _model_dtype, image_function, image_grid


def _ipywidgets():
    """The ipywidgets module, or None when it is not installed."""
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def _png(image: np.ndarray, zoom: int) -> bytes:
    import matplotlib.image

    buf = io.BytesIO()
    big = np.kron(np.clip(image, 0, 1), np.ones((zoom, zoom)))  # nearest-neighbour upscaling
    matplotlib.image.imsave(buf, big, cmap="gray", vmin=0, vmax=1, format="png")
    return buf.getvalue()


class LatentExplorer:
    """Sliders over latent coordinates and the decoded image; see :func:`latent_explorer`.

    Attributes
    ----------
    sliders : list of ipywidgets.FloatSlider
        One per explored coordinate (empty without ipywidgets).
    z : ndarray (latent_dim,)
        The current latent vector (unexplored coordinates stay 0).
    image : ndarray (H, W)
        The current decoded image E[x | z], updated whenever a slider moves.
    widget : ipywidgets.Widget or None
        The live part (sliders and image).
    static_figure : matplotlib.figure.Figure
        The static panel: row i shows the images decoded along coordinate i.
    """

    def __init__(self, decode, latent_dim, dims, lo, hi, step, traversal_steps, zoom):
        self._decode, self._zoom = decode, zoom
        self.z = np.zeros(latent_dim)
        self.image = self._decode_z(self.z)
        self.static_figure = self._static_panel(latent_dim, dims, lo, hi, traversal_steps)
        buf = io.BytesIO()
        self.static_figure.savefig(buf, format="png", dpi=80)
        self.static_png = buf.getvalue()
        self.sliders, self.widget, self._image_widget = [], None, None
        w = _ipywidgets()
        if w is not None:
            self.sliders = [w.FloatSlider(value=0.0, min=lo, max=hi, step=step, description=f"z{i + 1}",
                                          continuous_update=True) for i in range(dims)]
            self._image_widget = w.Image(value=_png(self.image, zoom), format="png")
            for s in self.sliders:
                s.observe(self._on_change, names="value")
            self.widget = w.HBox([w.VBox(self.sliders), self._image_widget])

    def _decode_z(self, z):
        return self._decode(torch.as_tensor(z[None]))[0]

    def _on_change(self, _change=None):
        for i, s in enumerate(self.sliders):
            self.z[i] = s.value
        self._redraw()

    def _redraw(self):
        self.image = self._decode_z(self.z)
        if self._image_widget is not None:
            self._image_widget.value = _png(self.image, self._zoom)

    def set_latent(self, values):
        """Set the first ``len(values)`` coordinates (moving the sliders, if any) and redraw."""
        values = np.asarray(values, dtype=float).reshape(-1)
        if self.sliders:
            for s, v in zip(self.sliders, values):
                s.value = float(v)  # each assignment redraws through the observer
        else:
            self.z[:len(values)] = values
            self._redraw()

    def _static_panel(self, latent_dim, dims, lo, hi, steps):
        values = np.linspace(lo, hi, steps)
        fig = Figure(figsize=(0.55 * steps + 0.5, 0.75 * dims + 0.4))
        axes = fig.subplots(dims, 1, squeeze=False)[:, 0]
        for i, ax in enumerate(axes):
            z = np.zeros((steps, latent_dim))
            z[:, i] = values
            image_grid(self._decode(torch.as_tensor(z)), nrow=steps, ax=ax)
            ax.set_ylabel(f"$z_{i + 1}$", rotation=0, labelpad=12, va="center")
        axes[-1].set_xlabel(f"each coordinate from {lo:g} to {hi:g} (others 0)")
        fig.suptitle("Decoded images along each latent axis (static view)", fontsize=10)
        fig.tight_layout()
        return fig

    def _ipython_display_(self):
        from IPython.display import Image, display

        if self.widget is not None:
            display(self.widget)
        else:
            print("ipywidgets is not installed, so there are no sliders (pip install ipywidgets); "
                  "static view only.")
        display(Image(data=self.static_png, format="png"))


def latent_explorer(decoder, dims: int = 2, range=(-3.0, 3.0), *, step: float = 0.05, logits: bool = False,
                    latent_dim: int | None = None, traversal_steps: int = 9, zoom: int = 8) -> LatentExplorer:
    """Sliders for ``dims`` latent coordinates that redraw the decoded image live.

    Parameters
    ----------
    decoder : VAE or callable
        A model with ``decode_mean`` (:class:`helpers.vae.VAE`), or a callable
        mapping latents (k, latent_dim) to images; ``logits=True`` when it
        returns logits (see :mod:`helpers.plotting`).
    dims : int
        How many latent coordinates get a slider (the first ``dims``; the others stay 0).
    range : (float, float)
        Slider limits (the prior N(0, 1) puts 99.7% of its mass within (-3, 3)).
    latent_dim : int, optional
        Size of the latent space; default ``decoder.latent_dim`` when it exists, else ``dims``.
    traversal_steps : int
        Images per row of the static panel.
    zoom : int
        Upscaling of the live image (pixels per image pixel).

    Returns
    -------
    LatentExplorer
        Displays the sliders, the live image and the static panel when shown.
        ``explorer.sliders[i].value = v`` (or ``explorer.set_latent([...])``)
        changes ``explorer.image``.
    """
    lo, hi = (float(v) for v in range)
    if not lo < hi:
        raise ValueError(f"range must be (low, high) with low < high, got {range!r}")
    latent_dim = latent_dim or getattr(decoder, "latent_dim", None) or dims
    if not 1 <= dims <= latent_dim:
        raise ValueError(f"dims must lie in 1..{latent_dim} (the latent size), got {dims}")
    dtype, device = _model_dtype(getattr(decoder, "decoder", decoder))
    to_images = image_function(decoder, logits)

    def decode(z):
        return to_images(z.to(dtype=dtype, device=device))

    return LatentExplorer(decode, latent_dim, dims, lo, hi, step, traversal_steps, zoom)
