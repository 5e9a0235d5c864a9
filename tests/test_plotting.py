"""helpers.plotting: each figure holds the expected images, points and coordinates (Agg backend)."""
import matplotlib

matplotlib.use("Agg")  # before pyplot is imported; ruff's E402 allows this call between imports

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch.distributions import Normal

from helpers import plotting
from helpers.vae import conv_vae, mlp_vae


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def digits(k, seed=0):
    return torch.rand(k, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def fake_decoder(z):
    """Image whose pixel (0, 0) is sigmoid(z_1) and pixel (0, 1) is sigmoid(z_2): coordinates can be read back."""
    out = torch.zeros(len(z), 28, 28)
    out[:, 0, 0], out[:, 0, 1] = torch.sigmoid(z[:, 0]), torch.sigmoid(z[:, 1])
    return out


def tiles(grid, n_rows, n_cols, size=28, pad=0):
    """Cut a mosaic back into its images."""
    return np.stack([grid[pad + r * (size + pad):pad + r * (size + pad) + size,
                          pad + c * (size + pad):pad + c * (size + pad) + size]
                     for r in range(n_rows) for c in range(n_cols)])


def test_as_images_shapes():
    for shape in [(3, 784), (3, 28, 28), (3, 1, 28, 28)]:
        assert plotting.as_images(torch.zeros(shape)).shape == (3, 28, 28)
    with pytest.raises(ValueError, match="square"):
        plotting.as_images(torch.zeros(3, 780))
    with pytest.raises(ValueError, match="shape"):
        plotting.as_images(torch.zeros(3, 3, 28, 28))


def test_image_grid_places_every_image():
    x = digits(7)
    fig, ax = plotting.image_grid(x, nrow=3, title="seven")
    grid = ax.images[0].get_array()
    assert grid.shape == (3 * 29 + 1, 3 * 29 + 1)  # 3 rows of 3 (last row partly empty), 1-pixel padding
    assert np.allclose(tiles(grid, 3, 3, pad=1)[:7], x[:, 0].numpy())
    assert ax.get_title() == "seven" and fig is ax.figure


def test_plot_reconstructions_two_rows_of_n():
    x, x_rec = digits(12), digits(12, seed=1)
    fig, axes = plotting.plot_reconstructions(x, x_rec, n=5)
    assert len(axes) == 2
    top, bottom = (a.images[0].get_array() for a in axes)
    assert np.allclose(tiles(top, 1, 5, pad=1), x[:5, 0].numpy())
    assert np.allclose(tiles(bottom, 1, 5, pad=1), x_rec[:5, 0].numpy())


@pytest.mark.parametrize("n", [1, 4, 7])
def test_latent_grid_linear_and_normal_coordinates(n):
    values, z = plotting.latent_grid(n, scale=2.5, grid="linear")
    expected = np.linspace(-2.5, 2.5, n) if n > 1 else np.zeros(1)
    assert np.allclose(values, expected, atol=1e-6)
    if n % 2:
        assert values[n // 2] == 0  # no "6e-08" tick label in the middle
    values, z = plotting.latent_grid(n, grid="normal")
    p = (np.arange(n) + 0.5) / n
    assert np.allclose(Normal(0.0, 1.0).cdf(values).numpy(), p, atol=1e-6)  # quantiles of the prior
    assert np.isfinite(values.numpy()).all() and np.allclose(values, -values.flip(0), atol=1e-6)
    assert z.shape == (n * n, 2)
    # row-major, top row has the largest z_2, left column the smallest z_1
    assert torch.equal(z[0], torch.stack([values[0], values[-1]]))
    assert torch.equal(z[-1], torch.stack([values[-1], values[0]]))


@pytest.mark.parametrize("grid", ["linear", "normal"])
def test_plot_latent_space_decodes_the_grid(grid):
    n = 5
    fig, ax = plotting.plot_latent_space(fake_decoder, n=n, scale=1.5, grid=grid)
    img = ax.images[0].get_array()
    assert img.shape == (n * 28, n * 28)
    values, z = plotting.latent_grid(n, 1.5, grid)
    cells = tiles(img, n, n)
    assert np.allclose(cells[:, 0, 0], torch.sigmoid(z[:, 0]).numpy(), atol=1e-6)
    assert np.allclose(cells[:, 0, 1], torch.sigmoid(z[:, 1]).numpy(), atol=1e-6)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == f"{values[0]:.2g}" and labels[-1] == f"{values[-1]:.2g}"
    assert ax.get_xlabel() == "$z_1$" and ax.get_ylabel() == "$z_2$"


def test_plot_latent_space_with_a_vae_and_logits():
    model = mlp_vae(hidden=16)
    fig, ax = plotting.plot_latent_space(model, n=3)
    z = plotting.latent_grid(3)[1]
    expected = model.decode_mean(z).detach().view(9, 28, 28).numpy()
    assert np.allclose(tiles(ax.images[0].get_array(), 3, 3), expected, atol=1e-6)
    fig2, ax2 = plotting.plot_latent_space(model.decoder, n=3, logits=True)  # a bare decoder returns logits
    assert np.allclose(ax2.images[0].get_array(), ax.images[0].get_array())
    with pytest.raises(ValueError, match="grid"):
        plotting.plot_latent_space(model, n=3, grid="log")


def test_plot_label_clusters_one_point_per_image():
    model = conv_vae()
    x = (digits(40) > 0.5).float()
    labels = torch.arange(40) % 10
    fig, ax = plotting.plot_label_clusters(model, x, labels)
    points = ax.collections[0]
    mu = model.encode(x)[0].detach().numpy()
    assert np.allclose(points.get_offsets(), mu, atol=1e-6)
    assert np.array_equal(points.get_array(), labels.numpy())
    assert len(fig.axes) == 2  # the scatter and its colorbar
    fig, ax = plotting.plot_label_clusters(lambda v: model.encode(v)[0], x, labels, batch_size=7)
    assert np.allclose(ax.collections[0].get_offsets(), mu, atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        plotting.plot_label_clusters(model, x, labels[:5])


def test_plot_interpolation_row_of_steps():
    fig, ax = plotting.plot_interpolation(fake_decoder, [-2.0, 1.0], [2.0, -1.0], steps=6)
    row = tiles(ax.images[0].get_array(), 1, 6, pad=1)
    t = np.linspace(0, 1, 6)
    assert np.allclose(row[:, 0, 0], torch.sigmoid(torch.tensor(-2 + 4 * t)).numpy(), atol=1e-6)
    assert np.allclose(row[:, 0, 1], torch.sigmoid(torch.tensor(1 - 2 * t)).numpy(), atol=1e-6)


def test_plot_training_curves_one_line_per_key():
    hist = {"epoch": [1, 2, 3], "train_elbo": [-200.0, -150.0, -140.0], "test_elbo": [-190.0, -155.0, -150.0],
            "kl": [1.0, 2.0, 3.0]}
    fig, ax = plotting.plot_training_curves(hist)
    assert len(ax.lines) == 2
    assert np.allclose(ax.lines[1].get_ydata(), hist["test_elbo"])
    assert "nats" in ax.get_ylabel()
    fig, ax = plotting.plot_training_curves(hist, keys=["kl"])
    assert len(ax.lines) == 1
    with pytest.raises(ValueError, match="has"):
        plotting.plot_training_curves(hist, keys=["loss"])


def test_schematic_draws_and_saves(tmp_path):
    path = tmp_path / "schematic.png"
    fig = plotting.draw_autoencoder_schematic(path, dpi=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"$x$", "$z$", r"$\hat{x}$", "encoder", "decoder"} <= texts
    assert any("h$ in the notes" in t for t in texts)


@pytest.mark.parametrize("n_visible, n_hidden", [(6, 4), (3, 5)])
def test_rbm_graph_is_complete_bipartite_and_labelled(tmp_path, n_visible, n_hidden):
    from matplotlib.patches import Circle

    path = tmp_path / "rbm.png"
    fig = plotting.draw_rbm_graph(path, n_visible=n_visible, n_hidden=n_hidden, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    units = [p for p in ax.patches if isinstance(p, Circle)]
    assert len(units) == n_visible + n_hidden
    rows = {}
    for u in units:
        rows.setdefault(round(u.center[1], 9), set()).add(round(u.center[0], 9))
    assert sorted(len(r) for r in rows.values()) == sorted([n_visible, n_hidden])
    (y_low, low), (y_high, high) = sorted(rows.items())
    assert len(low) == n_visible                      # visible units in the bottom row
    # every edge joins a visible and a hidden unit, and every such pair has exactly one edge
    pairs = []
    for line in ax.lines:
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        assert (round(y0, 9), round(y1, 9)) == (y_low, y_high), "an edge within a layer"
        pairs.append((round(x0, 9), round(x1, 9)))
    assert len(pairs) == n_visible * n_hidden == len(set(pairs))
    assert set(pairs) == {(a, b) for a in low for b in high}
    texts = {t.get_text() for t in ax.texts}
    for k in range(1, n_visible + 1):
        assert {f"$x_{{{k}}}$", f"$a_{{{k}}}$"} <= texts
    for k in range(1, n_hidden + 1):
        assert {f"$h_{{{k}}}$", f"$b_{{{k}}}$"} <= texts
    assert r"$W_{ij}$" in texts
    assert "E(x, h)" in ax.get_title()


def test_rbm_graph_rejects_too_few_units():
    with pytest.raises(ValueError, match="n_visible >= 2"):
        plotting.draw_rbm_graph(n_visible=1)
