"""The course's MNIST classifier: trained once (cached), then the lens through which samples are scored.

:func:`train_classifier` trains a :class:`helpers.nets.MNISTClassifier` (or any network mapping
images to ten logits) by minimising the cross-entropy, with Adam, on the one training loop
(:func:`helpers.train.fit`): preloaded tensors, shuffled index batches, the per-epoch history,
the checkpoint cache (weights only, fingerprinted by the architecture, the initial weights, the
data and the settings). :func:`accuracy` scores it. The sample-quality metrics of
:mod:`helpers.metrics` then read its ``features(x)`` and its predicted labels.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as checkpoint_io
from ._validate import check_count, check_real
from .train import build_settings, fit, screened_step

__all__ = ["ClassifierSettings", "train_classifier", "accuracy", "predict", "check_images"]

_CHECKPOINT_FORMAT = "helpers.classifier checkpoint 1"


@dataclass(frozen=True)
class ClassifierSettings:
    """Everything :func:`train_classifier` needs besides the model and the data; validated when built.

    Its fields are the checkpoint fingerprint and ``history.settings``.
    """

    n_epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    final_lr_fraction: float = 1.0

    def __post_init__(self):
        check_count("n_epochs", self.n_epochs)
        check_count("batch_size", self.batch_size)
        check_count("seed", self.seed, 0)
        check_real("lr", self.lr, 0, low_ok=False)
        check_real("final_lr_fraction", self.final_lr_fraction, 0, 1, low_ok=False)


def check_images(x, who: str = "images") -> torch.Tensor:
    """``x`` as a float tensor (n, 1, 28, 28) of grey levels in [0, 1]; flat (n, 784) batches are reshaped.

    Raises ``TypeError``/``ValueError`` naming the problem and the fix: not a tensor, not floating
    point, NaN/inf, a shape that is not an MNIST batch, or values outside [0, 1] (e.g. a
    generator with a tanh output in [-1, 1]: map it with ``(x + 1) / 2``; bytes 0..255: divide by 255).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} must be a torch.Tensor, got {type(x).__name__} (convert with torch.as_tensor)")
    if not x.is_floating_point():
        raise ValueError(f"{who} must be floating point grey levels in [0, 1], got dtype {x.dtype}; "
                         "for uint8 images use x.float() / 255")
    if x.dim() == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 1, 28, 28)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28) or len(x) == 0:
        raise ValueError(f"{who} must be a batch of MNIST images of shape (n, 1, 28, 28) or (n, 784) with n >= 1, "
                         f"got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{who} contain {int((~torch.isfinite(x)).sum())} NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = ("map tanh outputs in [-1, 1] with (x + 1) / 2" if lo >= -1 and hi <= 1
                else "divide bytes 0..255 by 255" if lo >= 0 and hi <= 255 else "clip or rescale them")
        raise ValueError(f"{who} must be grey levels in [0, 1] (as load_mnist gives), got values in "
                         f"[{lo:.4g}, {hi:.4g}]; {hint}")
    return x


def _check_labels(y, n: int, who: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.shape != (n,) or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{who} must be an integer tensor of shape ({n},) (one digit per image), got {shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ValueError(f"{who} must be digits 0..9, got values in [{int(y.min())}, {int(y.max())}]")
    return y.long()


@torch.no_grad()
def predict(model: nn.Module, images, batch_size: int = 1000) -> torch.Tensor:
    """The predicted digits argmax_k logit_k of ``images`` (n, 1, 28, 28) in [0, 1]: LongTensor (n,).

    Runs in evaluation mode, in batches of ``batch_size``, on the model's device; returns CPU labels.
    """
    images, batch_size = check_images(images), check_count("batch_size", batch_size)
    where = next(model.parameters()).device
    model.eval()
    return torch.cat([model(images[i:i + batch_size].to(where)).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images, labels, batch_size: int = 1000) -> float:
    """Fraction in [0, 1] of ``images`` (n, 1, 28, 28) whose predicted digit equals ``labels`` (n,)."""
    images = check_images(images)
    labels = _check_labels(labels, len(images), "labels")
    return float((predict(model, images, batch_size) == labels.cpu()).double().mean())


def train_classifier(model: nn.Module, x_train, y_train, x_test=None, y_test=None, *, progress: bool = True,
                     checkpoint=None, **settings):
    """Train ``model`` (images -> 10 logits) by minimising the cross-entropy with Adam; returns the history.

    Parameters
    ----------
    model : nn.Module
        Maps (batch, 1, 28, 28) to logits (batch, 10), e.g. :class:`helpers.nets.MNISTClassifier`;
        trained in place from its current weights.
    x_train, y_train : Tensor (n, 1, 28, 28) or (n, 784), Tensor (n,)
        Grey levels in [0, 1] and digit labels 0..9 (as :func:`helpers.data.load_mnist` gives).
    x_test, y_test : optional
        Scored after every epoch (``test_accuracy`` in the history).
    **settings
        The fields of :class:`ClassifierSettings`: ``n_epochs``, ``batch_size`` (128), ``lr`` (Adam,
        1e-3), ``seed`` (0; the batch order), ``final_lr_fraction`` (1: a constant learning rate; below 1
        the rate decays geometrically, step by step, from ``lr`` at the first step to
        ``lr * final_lr_fraction`` at the last). The same seed and initial weights give the same weights.
    progress : bool
        The tqdm bar of :func:`helpers.train.fit`.
    checkpoint : path, optional
        The cache (:mod:`helpers.checkpoint`): weights only (``torch.load(weights_only=True)``),
        loaded instead of training when the fingerprint (architecture, initial weights, the training
        data and labels, the settings) matches; otherwise trained and saved.

    Returns
    -------
    helpers.train.History
        ``epoch``, ``time`` (s), ``loss`` (cross-entropy in nats per image, mean over the epoch's
        batches while training), ``train_accuracy`` (same batches), and with test data ``test_accuracy``.
    """
    s = build_settings(ClassifierSettings, settings)
    x_train = check_images(x_train, "x_train")
    y_train = _check_labels(y_train, len(x_train), "y_train")
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if x_test is not None:
        x_test = check_images(x_test, "x_test")
        y_test = _check_labels(y_test, len(x_test), "y_test")
    device = next(model.parameters()).device
    x_train, y_train = x_train.to(device), y_train.to(device)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    params = list(model.parameters())
    n_steps = s.n_epochs * -(-len(x_train) // s.batch_size)
    steps_done = 0

    def step(idx):
        nonlocal steps_done
        for group in opt.param_groups:
            group["lr"] = s.lr * s.final_lr_fraction ** (steps_done / max(n_steps - 1, 1))
        steps_done += 1
        model.train()
        logits = model(x_train[idx])
        loss = F.cross_entropy(logits, y_train[idx])
        screened_step(loss, opt, params)
        return {"loss": loss.item(), "train_accuracy": (logits.argmax(1) == y_train[idx]).double().mean().item()}

    def evaluate(epoch):
        return {} if x_test is None else {"test_accuracy": accuracy(model, x_test, y_test)}

    fingerprint = None
    if checkpoint is not None:
        fingerprint = checkpoint_io.module_fingerprint(model, x_train=x_train, y_train=y_train,
                                                       **dataclasses.asdict(s))
    history = fit(step, len(x_train), n_epochs=s.n_epochs, batch_size=s.batch_size, generator=gen,
                  evaluate=evaluate, progress=progress, desc="training classifier", show=("loss", "test_accuracy"),
                  device=device, hint=f"Try a smaller learning rate (lr={s.lr:g} now) and rebuild the model.",
                  settings=dataclasses.asdict(s), checkpoint=checkpoint, fingerprint=fingerprint,
                  kind=_CHECKPOINT_FORMAT, state=model.state_dict, restore=model.load_state_dict)
    model.eval()
    return history
