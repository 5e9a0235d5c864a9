"""helpers.classifier: training on the shared loop learns a task with a known answer, is deterministic,
caches weights only with a fingerprint, and refuses bad images and labels."""
import pytest
import torch

from helpers import nets
from helpers.classifier import accuracy, check_images, predict, train_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blocks(n, seed):
    """Digit k is a bright 5x5 block at row 2 + 2 (k // 5) * 6, column 2 + (k % 5) * 5, on faint noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 28, 28, generator=g)
    for i, k in enumerate(y.tolist()):
        r, c = 2 + 12 * (k // 5), 2 + 5 * (k % 5)
        x[i, 0, r:r + 5, c:c + 5] = 1.0
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nets.MNISTClassifier(width=4, feature_dim=16)


def test_training_learns_a_separable_task_and_is_deterministic():
    x, y = _blocks(600, 0)
    xt, yt = _blocks(200, 1)
    a, b = _model(), _model()
    ha = train_classifier(a, x, y, xt, yt, n_epochs=10, batch_size=32, lr=3e-3, progress=False)
    train_classifier(b, x, y, n_epochs=10, batch_size=32, lr=3e-3, progress=False)
    assert accuracy(a, xt, yt) == 1.0 == ha["test_accuracy"][-1]
    assert ha["loss"][-1] < ha["loss"][0]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)            # same seed and initial weights: same weights
    assert torch.equal(predict(a, xt.reshape(200, 784)), predict(a, xt))  # flat images are reshaped


def test_checkpoint_is_weights_only_and_fingerprinted(tmp_path, capsys):
    x, y = _blocks(200, 2)
    path = tmp_path / "clf.pt"
    trained = _model()
    train_classifier(trained, x, y, n_epochs=1, batch_size=50, progress=False, checkpoint=path)
    stored = torch.load(path, weights_only=True)
    assert stored["fingerprint"]["lr"] == 1e-3 and stored["fingerprint"]["n_epochs"] == 1
    loaded = _model()
    capsys.readouterr()
    h = train_classifier(loaded, x, y, n_epochs=1, batch_size=50, progress=False, checkpoint=path)
    assert "Loaded the trained weights" in capsys.readouterr().out and h["epoch"] == [1]
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())
    train_classifier(_model(), x, y, n_epochs=1, batch_size=50, lr=2e-3, progress=False, checkpoint=path)
    assert "differs in: lr" in capsys.readouterr().out


@pytest.mark.parametrize("x, y, match", [
    (torch.rand(8, 28, 28), torch.zeros(8, dtype=torch.long), "shape \\(n, 1, 28, 28\\)"),
    (torch.rand(8, 1, 28, 28) * 255, torch.zeros(8, dtype=torch.long), "divide bytes 0..255 by 255"),
    (torch.rand(8, 1, 28, 28), torch.zeros(8), "integer tensor of shape \\(8,\\)"),
    (torch.rand(8, 1, 28, 28), torch.full((8,), 10), "digits 0..9"),
])
def test_bad_images_and_labels_are_refused(x, y, match):
    with pytest.raises(ValueError, match=match):
        train_classifier(_model(), x, y, n_epochs=1, progress=False)


def test_check_images_names_the_fix():
    with pytest.raises(ValueError, match="\\(x \\+ 1\\) / 2"):
        check_images(torch.linspace(-1, 1, 784).reshape(1, 784))
    with pytest.raises(TypeError, match="torch.as_tensor"):
        check_images([[0.0] * 784])
    assert check_images(torch.zeros(3, 784)).shape == (3, 1, 28, 28)


def test_training_equals_a_hand_written_adam_loop_with_the_decaying_rate():
    """The same batches (helpers.train.minibatches from the same seed), cross-entropy, Adam, and the learning
    rate lr * fraction ** (t / (T - 1)) at step t of T: the same weights."""
    import torch.nn.functional as F

    from helpers.train import minibatches

    x, y = _blocks(100, 3)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    ref.load_state_dict(model.state_dict())
    train_classifier(model, x, y, n_epochs=3, batch_size=16, lr=1e-2, final_lr_fraction=0.1, seed=4, progress=False)
    opt, g, t, n_steps = torch.optim.Adam(ref.parameters(), lr=1e-2), torch.Generator().manual_seed(4), 0, 3 * 7
    for _ in range(3):
        for idx in minibatches(100, 16, g):
            opt.param_groups[0]["lr"] = 1e-2 * 0.1 ** (t / (n_steps - 1))
            t += 1
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="final_lr_fraction"):
        train_classifier(model, x, y, n_epochs=1, final_lr_fraction=0.0, progress=False)
