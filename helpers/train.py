"""The one training loop of the course: minibatches, progress bar, history, NaN screening, checkpoints.

Every trainer (``helpers.vae.train_vae``, ``helpers.rbm.train_rbm``, and the GAN,
diffusion and energy-based trainers of the later weeks) is a *step function*
handed to :func:`fit`; the loop owns everything else:

* shuffled minibatches of row indices from a seeded ``torch.Generator`` (one
  ``randperm`` per epoch, drawn from the trainer's generator, so the step's own
  random draws and the order come from one reproducible stream);
* a ``tqdm`` progress bar (one tick per batch) showing the latest epoch's numbers;
* the per-epoch :class:`History` with keys common to every trainer: ``epoch``,
  ``time`` (seconds of the epoch's updates, evaluation excluded), the step's loss
  terms (means over the epoch, weighted by batch size) and the evaluation's metrics;
* NaN/inf screening: a non-finite loss term, or a ``FloatingPointError`` raised by the
  step (e.g. for non-finite gradients or parameters), stops training with a message
  that names the epoch and batch and says what to try;
* the checkpoint cache (:mod:`helpers.checkpoint`): with ``checkpoint=path`` a run
  whose fingerprint matches a stored one is loaded instead of trained.

A checkpoint is a **cache of a finished run**, not a resumable training state:
the optimiser's state and the generator are not stored, and a run that was
interrupted is trained again from the start.

A step function takes the index tensor of one minibatch and returns a dict of its
loss terms as Python floats (means over the batch, e.g. nats per image); anything
else it needs (the data, the model, optimisers, noise levels, a replay buffer of
negatives) it holds itself, typically as a closure.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch

from . import checkpoint as checkpoint_io
from ._validate import check_count, check_generator

__all__ = ["History", "fit", "minibatches", "build_settings", "screened_step"]


class History(dict):
    """Per-epoch lists, one entry per epoch (``history["time"][e - 1]`` belongs to epoch ``e``).

    Attributes
    ----------
    settings : dict
        The trainer's settings (``dataclasses.asdict`` of its settings object).
    extras : dict
        Non-list results a trainer attaches, e.g. the final PCD chains.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings: dict = {}
        self.extras: dict = {}


def minibatches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                device=None) -> list:
    """The row indices of one epoch, split into minibatches.

    Parameters
    ----------
    n : int
        Number of examples, >= 1.
    batch_size : int
        Rows per batch, >= 1; the last batch holds the remainder (never empty).
    generator : torch.Generator, optional
        Source of the permutation (drawn on the generator's device, then moved to ``device``).
    shuffle : bool
        A fresh random order (``torch.randperm``) if True, else ``0, 1, ..., n - 1``.
    device : torch.device, optional
        Where the index tensors live (default: the generator's device, or CPU).

    Returns
    -------
    list of LongTensor, shapes (batch_size,), ..., (n - (len - 1) * batch_size,)
    """
    n, batch_size = check_count("n", n), check_count("batch_size", batch_size)
    generator = check_generator(generator)
    if shuffle:
        where = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=where)
    else:
        order = torch.arange(n)
    if device is not None:
        order = order.to(device)
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def build_settings(cls, options: dict):
    """``cls(**options)`` for a settings dataclass, with a message naming unknown settings and the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(map(repr, unknown))}; {cls.__name__} has: "
                        f"{', '.join(sorted(names))}")
    return cls(**options)


def screened_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters) -> None:
    """One optimiser step on ``loss`` (a 0-d tensor), refusing non-finite numbers before the weights change.

    Raises ``FloatingPointError`` for a NaN/inf loss (before ``backward``) or a NaN/inf gradient
    (before ``optimizer.step()``); :func:`fit` adds the epoch and batch to the message.
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in parameters if p.grad is not None]
    if not torch.isfinite(torch.stack([g.abs().amax() for g in grads])).all():
        raise FloatingPointError("a gradient became NaN or infinite")
    optimizer.step()


def _screen(terms, where: str, hint: str) -> dict:
    """The step's loss terms as floats; FloatingPointError naming ``where`` when one is NaN or inf."""
    if not isinstance(terms, dict):
        raise TypeError(f"a step function must return a dict of loss terms (floats), got {type(terms).__name__}")
    out = {}
    for key, value in terms.items():
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged {where}: the loss term {key!r} became {value}. {hint}".strip())
        out[key] = value
    return out


def fit(step: Callable[[torch.Tensor], dict], n_examples: int, *, n_epochs: int, batch_size: int,
        generator: torch.Generator | None, shuffle: bool = True, evaluate: Callable[[int], dict] | None = None,
        progress: bool = True, desc: str = "training", show: tuple = (), hint: str = "",
        device=None, settings: dict | None = None, checkpoint=None, fingerprint: dict | None = None,
        kind: str = "helpers.train checkpoint 1", state: Callable[[], dict] | None = None,
        restore: Callable[[dict], None] | None = None) -> History:
    """Run ``n_epochs`` passes of minibatch training; return the per-epoch :class:`History`.

    Parameters
    ----------
    step : callable ``idx -> dict``
        One update on the rows ``idx`` (LongTensor) of the training data; returns
        its loss terms as floats (means over the batch). It may raise
        ``FloatingPointError`` (e.g. non-finite gradients); the loop adds where.
    n_examples : int
        Rows of the training data, >= 1.
    n_epochs, batch_size : int >= 1
    generator : torch.Generator or None
        Source of the epoch orders (see :func:`minibatches`).
    shuffle : bool
        A new random order every epoch (else the data order).
    evaluate : callable ``epoch -> dict``, optional
        After each epoch (not timed): metrics to record, usually floats or None; any value the
        checkpoint can hold (tensors, lists of floats) is kept as it is, e.g. a snapshot of samples.
    progress, desc, show
        The tqdm bar, its label, and the history keys shown next to it.
    hint : str
        Appended to divergence messages (e.g. "Try a smaller learning rate ...").
    device : torch.device, optional
        Where the index tensors go.
    settings : dict, optional
        Recorded as ``history.settings`` (and saved with the checkpoint).
    checkpoint, fingerprint, kind, state, restore
        The cache (:mod:`helpers.checkpoint`): with a ``checkpoint`` path and the run's
        ``fingerprint``, a stored run of the same ``kind`` and fingerprint is loaded with
        ``restore(stored_state)`` and its history returned, without training; otherwise
        the loop trains and saves ``state()`` (a dict of tensors) with the history.
        Non-module state (PCD chains, a replay buffer) belongs in ``state()`` too.

    Returns
    -------
    History
        ``epoch``, ``time`` and one list per loss term and metric.
    """
    n_examples = check_count("n_examples", n_examples)
    n_epochs, batch_size = check_count("n_epochs", n_epochs), check_count("batch_size", batch_size)
    if checkpoint is not None:
        if fingerprint is None or state is None or restore is None:
            raise ValueError("a checkpoint needs fingerprint=, state= and restore= (what to save and how to load it)")
        stored = checkpoint_io.load(checkpoint, fingerprint, kind, map_location=device or "cpu")
        if stored is not None:
            restore(stored[0])
            history = History(stored[1]["history"])
            history.settings = stored[1].get("settings", {})
            return history

    from tqdm.auto import tqdm

    history = History(epoch=[], time=[])
    history.settings = dict(settings or {})
    n_batches = math.ceil(n_examples / batch_size)
    bar = tqdm(total=n_epochs * n_batches, unit="batch", desc=desc, disable=not progress)
    try:
        for epoch in range(1, n_epochs + 1):
            t0 = time.perf_counter()
            sums = _epoch(step, minibatches(n_examples, batch_size, generator, shuffle, device), epoch, desc, hint, bar)
            history["time"].append(time.perf_counter() - t0)
            history["epoch"].append(epoch)
            for key, total in sums.items():
                history.setdefault(key, []).append(total / n_examples)
            for key, value in (evaluate(epoch) if evaluate is not None else {}).items():
                history.setdefault(key, []).append(value)
            shown = {k: f"{history[k][-1]:.4g}" for k in show if k in history and history[k][-1] is not None}
            if shown:
                bar.set_postfix(shown, refresh=False)
    finally:
        bar.close()
    if checkpoint is not None:
        checkpoint_io.save(checkpoint, fingerprint, kind, dict(state()),
                           {"history": dict(history), "settings": history.settings})
    return history


def _epoch(step, batches, epoch, desc, hint, bar) -> dict:
    """Run ``step`` on every minibatch of one epoch; the loss terms summed over rows (term x batch size)."""
    sums: dict = {}
    for batch, idx in enumerate(batches, 1):
        where = f"at epoch {epoch}, batch {batch} of {len(batches)}"
        try:
            terms = _screen(step(idx), where, hint)
        except FloatingPointError as err:
            if where in str(err):
                raise
            raise FloatingPointError(f"{err} ({desc} diverged {where}). {hint}".strip()) from None
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value * len(idx)
        bar.update(1)
    return sums
