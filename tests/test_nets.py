"""helpers.nets: shapes, input checks, parameter counts, and the forward passes
against the same layers written out with torch.nn.functional."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import nets, vae
from helpers.nets import IMAGE_SHAPE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("latent", [1, 2, 5])
def test_encoders_return_mu_and_logvar_of_the_latent_size(latent):
    g = torch.Generator().manual_seed(0)
    flat, images = torch.rand(3, 784, generator=g), torch.rand(3, *IMAGE_SHAPE, generator=g)
    for enc, x in [(MLPEncoder(784, 32, latent), flat), (MLPEncoder(784, 32, latent), images),
                   (ConvEncoder(latent, 8), images)]:
        out = enc(x)
        assert isinstance(out, tuple) and len(out) == 2
        assert out[0].shape == out[1].shape == (3, latent)
        assert enc.latent_dim == latent


def test_mlp_encoder_flattens_images():
    torch.manual_seed(0)
    enc, x = MLPEncoder(784, 16, 3), torch.rand(4, *IMAGE_SHAPE)
    for a, b in zip(enc(x), enc(x.reshape(4, 784))):
        assert torch.equal(a, b)


def test_decoders_return_logits_of_the_image_shape():
    torch.manual_seed(0)
    z = torch.randn(5, 3)
    mlp, conv = MLPDecoder(3, 16, 784), ConvDecoder(3)
    assert mlp(z).shape == (5, 784)
    assert conv(z).shape == (5, *IMAGE_SHAPE) and conv(z).is_contiguous()
    # logits, not probabilities: no sigmoid at the end, so a negative last bias gives negative outputs
    with torch.no_grad():
        mlp.net[-1].bias.fill_(-50.0)
        conv.deconv[-1].bias.fill_(-50.0)
    assert (mlp(z) < 0).all() and (conv(z) < 0).all()


# ---------------------------------------------------------------------- forward passes, written out
def test_mlp_forward_matches_the_layers_written_out():
    torch.manual_seed(1)
    enc, dec = MLPEncoder(784, 20, 3), MLPDecoder(3, 20, 784)
    x, z = torch.rand(6, 784, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    enc, dec = enc.double(), dec.double()
    (w1, b1), (w2, b2) = [(m.weight, m.bias) for m in (enc.net[0], enc.net[2])]
    out = torch.relu(x @ w1.T + b1) @ w2.T + b2
    mu, logvar = enc(x)
    torch.testing.assert_close(mu, out[:, :3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logvar, out[:, 3:], rtol=1e-12, atol=1e-12)
    (v1, c1), (v2, c2) = [(m.weight, m.bias) for m in (dec.net[0], dec.net[2])]
    torch.testing.assert_close(dec(z), torch.relu(z @ v1.T + c1) @ v2.T + c2, rtol=1e-12, atol=1e-12)


def test_conv_forward_matches_the_layers_written_out():
    """Contiguous float64 functional ops against the modules' channels-last path."""
    torch.manual_seed(2)
    enc, dec = ConvEncoder(4, 10).double(), ConvDecoder(4).double()
    x, z = torch.rand(3, *IMAGE_SHAPE, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    c1, c2, d1, d2 = enc.conv[0], enc.conv[2], enc.dense[1], enc.dense[3]
    h = torch.relu(F.conv2d(x, c1.weight.contiguous(), c1.bias, stride=2, padding=1))
    assert h.shape == (3, 32, 14, 14)
    h = torch.relu(F.conv2d(h, c2.weight.contiguous(), c2.bias, stride=2, padding=1))
    assert h.shape == (3, 64, 7, 7)
    out = torch.relu(h.reshape(3, -1) @ d1.weight.T + d1.bias) @ d2.weight.T + d2.bias
    mu, logvar = enc(x)
    torch.testing.assert_close(mu, out[:, :4], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logvar, out[:, 4:], rtol=1e-10, atol=1e-10)

    lin, t1, t2, t3 = dec.dense[0], dec.deconv[0], dec.deconv[2], dec.deconv[4]
    h = torch.relu(z @ lin.weight.T + lin.bias).reshape(3, 64, 7, 7)
    h = torch.relu(F.conv_transpose2d(h, t1.weight.contiguous(), t1.bias, stride=2, padding=1, output_padding=1))
    assert h.shape == (3, 64, 14, 14)
    h = torch.relu(F.conv_transpose2d(h, t2.weight.contiguous(), t2.bias, stride=2, padding=1, output_padding=1))
    assert h.shape == (3, 32, 28, 28)
    h = F.conv_transpose2d(h, t3.weight.contiguous(), t3.bias, stride=1, padding=1)
    torch.testing.assert_close(dec(z), h, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------- parameter counts
def test_parameter_counts_match_a_hand_count():
    # MLP, 784 -> 512 -> 2 * 2 and 2 -> 512 -> 784: weights plus biases of each Linear
    assert _n_params(MLPEncoder(784, 512, 2)) == (784 * 512 + 512) + (512 * 4 + 4) == 403_972
    assert _n_params(MLPDecoder(2, 512, 784)) == (2 * 512 + 512) + (512 * 784 + 784) == 403_728
    # conv, latent 2, hidden 16: a k x k conv from c_in to c_out has c_in * c_out * k * k + c_out parameters
    enc = (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 7 * 7 * 16 + 16) + (16 * 4 + 4)
    dec = (2 * 64 * 7 * 7 + 64 * 7 * 7) + (64 * 64 * 9 + 64) + (64 * 32 * 9 + 32) + (32 * 1 * 9 + 1)
    assert (enc, dec) == (69_076, 65_089)
    assert _n_params(ConvEncoder(2, 16)) == enc
    assert _n_params(ConvDecoder(2)) == dec
    assert _n_params(vae.conv_vae(latent_dim=2, hidden=16)) == enc + dec


# ---------------------------------------------------------------------- input checks
SHAPE_ERRORS = [
    (MLPEncoder(), torch.rand(784),
     "MLPEncoder expects a batch of shape (batch, 784), got (784,); use x[None] for a single image"),
    (MLPEncoder(), torch.rand(3, 100), "MLPEncoder expects a batch of shape (batch, 784), got (3, 100)"),
    (MLPEncoder(), torch.rand(2, 3, 28, 28), "MLPEncoder expects a batch of shape (batch, 784), got (2, 3, 28, 28)"),
    (MLPEncoder(100, 8, 2), torch.rand(3, 784), "MLPEncoder expects a batch of shape (batch, 100), got (3, 784)"),
    (ConvEncoder(), torch.rand(3, 784),
     "ConvEncoder expects a batch of shape (batch, 1, 28, 28), got (3, 784); reshape flat images with "
     "x.view(-1, 1, 28, 28) or load them with load_mnist(..., flat=False)"),
    (ConvEncoder(), torch.rand(3, 100),
     "ConvEncoder expects a batch of shape (batch, 1, 28, 28), got (3, 100); "
     "the network is built for 28 x 28 MNIST images"),
    (ConvEncoder(), torch.rand(3, 28, 28),
     "ConvEncoder expects a batch of shape (batch, 1, 28, 28), got (3, 28, 28); "
     "the network is built for 28 x 28 MNIST images"),
    (ConvEncoder(), torch.rand(1, 1, 32, 32),
     "ConvEncoder expects a batch of shape (batch, 1, 28, 28), got (1, 1, 32, 32); "
     "the network is built for 28 x 28 MNIST images"),
]


@pytest.mark.parametrize("enc, x, message", SHAPE_ERRORS)
def test_wrong_shapes_name_the_expected_shape_and_the_fix(enc, x, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        enc.check_input(x)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        enc(x)  # forward checks too


@pytest.mark.parametrize("enc", [MLPEncoder(), ConvEncoder()], ids=["mlp", "conv"])
def test_wrong_dtypes_and_values_are_named(enc):
    name = type(enc).__name__
    x = torch.rand(2, *IMAGE_SHAPE)
    for bad, dtype in [((x * 255).to(torch.uint8), "torch.uint8"), (x.round().long(), "torch.int64")]:
        with pytest.raises(ValueError, match=re.escape(f"{name} needs floating-point data, got dtype {dtype}; "
                                                       "for uint8 images use x.float() / 255")):
            enc(bad)
    with pytest.raises(TypeError, match=re.escape(f"{name} needs a torch.Tensor, got ndarray "
                                                  "(convert with torch.as_tensor)")):
        enc(x.numpy())
    bad = x.clone()
    bad[0, 0, 0, :3] = float("nan")
    bad[1, 0, 5, 5] = float("-inf")
    with pytest.raises(ValueError, match=re.escape(f"{name} got 3 NaN and 1 infinite values; clean the data first")):
        enc(bad)


def test_valid_inputs_pass_the_check():
    for enc, x in [(MLPEncoder(), torch.rand(2, 784)), (MLPEncoder(), torch.rand(2, *IMAGE_SHAPE)),
                   (ConvEncoder(), torch.rand(2, *IMAGE_SHAPE)),
                   (ConvEncoder(), torch.rand(2, *IMAGE_SHAPE, dtype=torch.float64))]:
        assert enc.check_input(x) is None


# ---------------------------------------------------------------------- module boundaries
def test_seeded_construction_is_deterministic():
    def build():
        torch.manual_seed(7)
        return [ConvEncoder(3, 12), ConvDecoder(3), MLPEncoder(784, 8, 3), MLPDecoder(3, 8, 784)]
    for a, b in zip(build(), build()):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vae_reexports_the_same_objects():
    for name in ("IMAGE_SHAPE", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "_check_tensor"):
        assert getattr(vae, name) is getattr(nets, name), name


def test_nets_does_not_import_the_model_modules():
    code = "import sys, helpers.nets; print(sorted(m for m in sys.modules if m.startswith('helpers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "['helpers', 'helpers.nets']"


def test_mlp_shapes_layers_and_errors():
    from helpers.nets import MLP

    torch.manual_seed(0)
    net = MLP(2, 3, hidden=5, depth=2, activation="tanh")
    x = torch.randn(7, 2)
    assert net(x).shape == (7, 3)
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 5), (5, 5), (5, 3)]
    # the forward pass is the composition it claims: tanh hidden layers, a linear output
    h = torch.tanh(linears[1](torch.tanh(linears[0](x))))
    assert torch.allclose(net(x), linears[2](h))
    affine = MLP(1, 1, depth=0)
    assert torch.allclose(affine(x[:, :1]), x[:, :1] * affine.net[0].weight[0, 0] + affine.net[0].bias[0])
    torch.manual_seed(0)
    again = MLP(2, 3, hidden=5, depth=2, activation="tanh")
    assert torch.equal(again(x), net(x))                        # same seed, same initial weights
    with pytest.raises(ValueError, match=r"x\[:, None\]"):
        MLP(1, 1)(torch.randn(4))
    with pytest.raises(ValueError, match="activation"):
        MLP(2, 1, activation="gelu")
    with pytest.raises(ValueError, match="depth"):
        MLP(2, 1, depth=-1)
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((2, 2), float("nan")))


# ---------------------------------------------------------------------- the classifier and the DCGAN networks
def test_classifier_shapes_features_and_forward_written_out():
    torch.manual_seed(3)
    clf = nets.MNISTClassifier(width=4, feature_dim=12).double().eval()
    x = torch.rand(5, *IMAGE_SHAPE, dtype=torch.float64)
    c1, c2, c3, d1 = clf.conv[0], clf.conv[4], clf.conv[8], clf.dense[1]
    s = (1 + 1e-5) ** -0.5               # fresh batch norm in eval mode: (x - 0) / sqrt(1 + eps), weight 1, bias 0
    h = F.max_pool2d(torch.relu(s * F.conv2d(x, c1.weight, c1.bias, padding=1)), 2)
    h = F.max_pool2d(torch.relu(s * F.conv2d(h, c2.weight, c2.bias, padding=1)), 2)
    h = F.max_pool2d(torch.relu(s * F.conv2d(h, c3.weight, c3.bias, padding=1)), 2)
    assert h.shape == (5, 16, 3, 3)
    feats = torch.relu(h.reshape(5, -1) @ d1.weight.T + d1.bias)
    torch.testing.assert_close(clf.features(x), feats, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clf(x), feats @ clf.head.weight.T + clf.head.bias, rtol=1e-12, atol=1e-12)
    assert clf(x).shape == (5, 10) and clf.features(x).shape == (5, 12)
    n_conv = (4 * 9 + 4) + (8 * 4 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 9 * 12 + 12) + (12 * 10 + 10)
    assert _n_params(clf) == n_conv + 2 * (4 + 8 + 16)          # batch norm: a scale and a shift per channel
    assert _n_params(nets.MNISTClassifier(4, 12, batch_norm=False)) == n_conv
    torch.testing.assert_close(clf.features(x[:2]), clf.features(x)[:2])  # eval mode: no batch statistics
    with pytest.raises(ValueError, match="x.view\\(-1, 1, 28, 28\\)"):
        clf(torch.rand(5, 784, dtype=torch.float64))


def test_dcgan_generator_makes_grey_level_images_and_checks_latents():
    torch.manual_seed(4)
    g = nets.DCGANGenerator(latent_dim=5, width=6).double().eval()
    z = torch.randn(7, 5, dtype=torch.float64)
    out = g(z)
    assert g.latent_dim == 5 and out.shape == (7, *IMAGE_SHAPE)
    assert ((out > 0) & (out < 1)).all()
    # written out, in eval mode: fresh batch norm (running mean 0, variance 1) divides by sqrt(1 + eps)
    lin, t1, t2 = g.dense[0], g.deconv[0], g.deconv[3]
    s = (1 + 1e-5) ** -0.5
    h = torch.relu((z @ lin.weight.T + lin.bias) * s).reshape(7, 12, 7, 7)
    h = torch.relu(F.conv_transpose2d(h, t1.weight, t1.bias, stride=2, padding=1) * s)
    torch.testing.assert_close(out, torch.sigmoid(F.conv_transpose2d(h, t2.weight, t2.bias, stride=2, padding=1)),
                               rtol=1e-12, atol=1e-12)
    plain = nets.DCGANGenerator(5, 6, batch_norm=False)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in plain.modules())
    with pytest.raises(ValueError, match="shape \\(batch, 5\\)"):
        g(torch.randn(7, 4, dtype=torch.float64))


def test_dcgan_discriminator_returns_one_logit_per_image():
    torch.manual_seed(5)
    d = nets.DCGANDiscriminator(width=3).double()
    x = torch.rand(4, *IMAGE_SHAPE, dtype=torch.float64)
    c1, c2, lin = d.net[0], d.net[2], d.net[5]
    h = F.leaky_relu(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1), 0.2)
    h = F.leaky_relu(F.conv2d(h, c2.weight, c2.bias, stride=2, padding=1), 0.2)
    assert h.shape == (4, 6, 7, 7)
    torch.testing.assert_close(d(x), h.reshape(4, -1) @ lin.weight.T + lin.bias, rtol=1e-12, atol=1e-12)
    assert d(x).shape == (4, 1)
    # each image's logit depends on that image alone (no batch statistics): WGAN-GP's assumption
    torch.testing.assert_close(d(x[:1]), d(x)[:1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="\\(batch, 1, 28, 28\\)"):
        d(torch.rand(4, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match="width must be"):
        nets.DCGANDiscriminator(width=0)


# ---------------------------------------------------------------------- diffusion denoisers
def test_time_mlp_is_an_mlp_on_x_and_fourier_features_of_t():
    import math

    torch.manual_seed(0)
    net = nets.TimeMLP(2, 100, hidden=16, depth=2, n_frequencies=3)
    x, t = torch.randn(5, 2), torch.tensor([1, 10, 50, 99, 100])
    # the features written out element by element
    rows = []
    for ti in t.tolist():
        s = ti / 100
        rows.append([s] + [math.sin(math.pi * 2 ** j * s) for j in range(3)]
                    + [math.cos(math.pi * 2 ** j * s) for j in range(3)])
    feats = torch.tensor(rows)
    assert torch.allclose(nets.time_features(t, 100, 3), feats, atol=1e-6)
    h = torch.cat([x, feats], 1)
    lin = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    for layer in lin[:-1]:
        h = F.silu(F.linear(h, layer.weight, layer.bias))
    assert torch.allclose(net(x, t), F.linear(h, lin[-1].weight, lin[-1].bias), atol=1e-6)
    assert not torch.allclose(net(x, t), net(x, t.flip(0)))          # it depends on t
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        net(torch.randn(5, 3), t)
    with pytest.raises(ValueError, match="one timestep per sample"):
        net(x, t[:3])
    with pytest.raises(ValueError, match="n_steps"):
        net(x, t + 1)                                                   # 101 > n_steps
    with pytest.raises(TypeError, match="dtype"):
        net(x, t > 50)
    with pytest.raises(ValueError, match="n_steps"):
        nets.TimeMLP(2, 0)


def _resblock_written_out(block, h, emb):
    g1, g2 = block.norm1.num_groups, block.norm2.num_groups
    out = F.conv2d(F.silu(F.group_norm(h, g1, block.norm1.weight, block.norm1.bias, block.norm1.eps)),
                   block.conv1.weight, block.conv1.bias, padding=1)
    out = out + F.linear(emb, block.time.weight, block.time.bias)[:, :, None, None]
    out = F.conv2d(F.silu(F.group_norm(out, g2, block.norm2.weight, block.norm2.bias, block.norm2.eps)),
                   block.conv2.weight, block.conv2.bias, padding=1)
    skip = h if isinstance(block.skip, torch.nn.Identity) else F.conv2d(h, block.skip.weight, block.skip.bias)
    return skip + out


def test_denoiser_shapes_blocks_written_out_and_per_image_outputs():
    torch.manual_seed(0)
    net = nets.Denoiser(1000, width=8)
    x, t = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([1, 200, 600, 1000])
    assert torch.equal(net(x, t), torch.zeros(4, 1, 28, 28))          # the last convolution starts at zero
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    out = net(x, t)
    assert out.shape == (4, 1, 28, 28) and out.abs().max() > 0
    assert torch.allclose(net(x[1:2], t[1:2]), out[1:2], atol=1e-5)   # group norm: no batch coupling
    assert not torch.allclose(net(x, t.flip(0)), out)                  # it depends on t
    emb = torch.randn(4, 32)
    for block, c in ((net.down1, 8), (net.down2, 8), (net.up1, 24)):
        h = torch.randn(4, c, 14, 14)
        assert torch.allclose(block(h, emb), _resblock_written_out(block, h, emb), atol=1e-5)
    assert sum(p.numel() for p in nets.Denoiser(1000, width=32).parameters()) > 10 * _n_params(net)
    with pytest.raises(ValueError, match="view"):
        net(x.reshape(4, 784), t)
    with pytest.raises(ValueError, match="0..1000"):
        net(x, t * 2)
