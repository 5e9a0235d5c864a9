"""helpers.widgets: sliders redraw the decoded image; the static panel exists with or without ipywidgets."""
import matplotlib

matplotlib.use("Agg")  # before pyplot is imported; ruff's E402 allows this call between imports

import numpy as np
import pytest
import torch

from helpers import widgets
from helpers.vae import mlp_vae


def fake_decoder(z):
    out = torch.zeros(len(z), 28, 28)
    out[:, 0, 0], out[:, 0, 1] = torch.sigmoid(z[:, 0]), torch.sigmoid(z[:, 1])
    return out


def test_moving_a_slider_changes_the_image():
    ex = widgets.latent_explorer(fake_decoder, dims=2, range=(-3, 3))
    assert len(ex.sliders) == 2 and ex.widget is not None
    assert ex.image.shape == (28, 28) and ex.image[0, 0] == pytest.approx(0.5)
    png = ex._image_widget.value
    ex.sliders[0].value = 2.0
    assert ex.z[0] == 2.0
    assert ex.image[0, 0] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert ex.image[0, 1] == pytest.approx(0.5)
    assert ex._image_widget.value != png  # the live picture was redrawn
    ex.set_latent([-1.0, 1.0])
    assert ex.sliders[1].value == 1.0 and ex.image[0, 1] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())


def test_explorer_with_a_vae_keeps_other_coordinates_at_zero():
    model = mlp_vae(latent_dim=4, hidden=16)
    ex = widgets.latent_explorer(model, dims=2)
    assert ex.z.shape == (4,) and len(ex.sliders) == 2
    before = ex.image.copy()
    ex.sliders[1].value = -2.5
    expected = model.decode_mean(torch.tensor([[0.0, -2.5, 0.0, 0.0]])).detach().view(28, 28).numpy()
    assert np.allclose(ex.image, expected, atol=1e-6) and not np.allclose(ex.image, before)
    with pytest.raises(ValueError, match="dims"):
        widgets.latent_explorer(model, dims=5)


def test_static_panel_one_row_per_axis():
    ex = widgets.latent_explorer(fake_decoder, dims=2, range=(-2, 2), traversal_steps=5)
    fig = ex.static_figure
    assert len(fig.axes) == 2
    row = fig.axes[0].images[0].get_array()
    assert row.shape == (30, 5 * 29 + 1)
    firsts = [row[1, 1 + c * 29] for c in range(5)]  # pixel (0, 0) of each image: sigmoid(z_1)
    assert np.allclose(firsts, torch.sigmoid(torch.linspace(-2, 2, 5)).numpy(), atol=1e-6)
    assert ex.static_png[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_ipywidgets_only_the_static_view(monkeypatch, capsys):
    monkeypatch.setattr(widgets, "_ipywidgets", lambda: None)
    ex = widgets.latent_explorer(fake_decoder, dims=2)
    assert ex.sliders == [] and ex.widget is None
    assert len(ex.static_figure.axes) == 2
    ex.set_latent([1.5])
    assert ex.image[0, 0] == pytest.approx(torch.sigmoid(torch.tensor(1.5)).item())
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    ex._ipython_display_()
    assert "ipywidgets is not installed" in capsys.readouterr().out
    assert len(shown) == 1 and shown[0].data == ex.static_png
