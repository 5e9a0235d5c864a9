"""The one cache of the course: trained weights, AIS and IWAE results, Ising data sets.

It serves the training loop (:func:`helpers.train.fit`, hence every trainer), hand-written
notebook loops (:func:`load_module`, :func:`save_module`) and computed results
(:func:`cached`). A checkpoint is a cache of a finished computation, not a
resumable training state (no optimiser state, no generator).

A checkpoint is one ``torch.save`` file holding plain data only: a format tag,
a *fingerprint* (everything that determines the trained weights: architecture,
initial weights, data, seed, epochs, learning rate, ...), the weights as a dict
of tensors, and the training history. It is read with
``torch.load(weights_only=True)``, whose unpickler builds only tensors and plain
containers: a file holding pickled code raises instead of running it.

:func:`load` returns the stored weights only when the fingerprint matches; a
missing, unsafe, corrupted, foreign or stale file gives None and a printed
reason, and the trainer trains again and overwrites it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch


def digest(*tensors) -> str:
    """Short sha256 of the tensors' values, shapes and dtypes (a fingerprint entry)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load(path, fingerprint: dict, kind: str, map_location="cpu", *, what: str = "trained weights",
         redo: str = "training"):
    """``(state, history)`` stored at ``path`` for this exact ``fingerprint``, or None.

    Parameters
    ----------
    path : path-like
    fingerprint : dict of str/int/float
        Must equal the stored one entry for entry.
    kind : str
        What the file must say it is, e.g. ``"helpers.vae checkpoint 1"``.

    Prints why a file is ignored (unsafe or corrupted, foreign, or made with a
    different configuration, naming the entries that differ) or that it was loaded;
    ``what`` and ``redo`` name the cached thing and the work a miss repeats in those
    messages (e.g. ``"AIS result"`` and ``"running AIS"``).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unsafe pickle (UnpicklingError), not a torch file, truncated zip, ...
        reason = " ".join(str(err).split())[:200]
        print(f"Checkpoint {path} could not be loaded safely ({type(err).__name__}: {reason}); "
              f"ignoring it: {redo} again and overwriting it.")
        return None
    if not (isinstance(ckpt, dict) and ckpt.get("format") == kind
            and {"fingerprint", "state", "history"} <= ckpt.keys()):
        print(f"Checkpoint {path} is not a {kind.rsplit(' ', 1)[0]}; {redo} again and overwriting it.")
        return None
    old = ckpt["fingerprint"]
    changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if changed:
        print(f"Checkpoint {path} was made with a different configuration (differs in: {', '.join(changed)}); "
              f"{redo} again and overwriting it.")
        return None
    if what == "trained weights":
        print(f"Loaded the trained weights from {path} (same configuration: model, data, seed, "
              f"{fingerprint.get('n_epochs', '?')} epochs, learning rate, batch size); not training. "
              "Delete the file to retrain.")
    else:
        print(f"Loaded the {what} from {path} (same configuration); not {redo}. Delete the file to redo it.")
    return ckpt["state"], ckpt["history"]


def save(path, fingerprint: dict, kind: str, state: dict, history: dict) -> bool:
    """Write a checkpoint atomically (an interrupted save never leaves half a file).

    Returns True when written; a folder that cannot be written prints why and returns False
    (the result is then simply not cached).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": kind, "fingerprint": fingerprint, "state": state, "history": history}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        print(f"Could not write the cache file {path} ({err}); the result is not cached "
              "(choose a writable folder).")
        return False
    return True


def cached(path, fingerprint: dict, kind: str, compute, *, what: str, redo: str) -> dict:
    """``compute()`` (a dict of tensors), cached at ``path`` for this ``fingerprint``.

    ``path`` None (cache off) just computes. Otherwise a stored result with the same
    fingerprint is loaded (weights-only, see :func:`load`; ``what`` and ``redo`` name the
    result and the work in its messages), else it is computed and saved. Used for results
    that are not modules: AIS log-weights, IWAE estimates.
    """
    if path is None:
        return compute()
    stored = load(path, fingerprint, kind, what=what, redo=redo)
    if stored is not None:
        return stored[0]
    out = compute()
    save(path, fingerprint, kind, out, {})
    return out


# ------------------------------------------------------------- hand-written training loops
_MODULE_FORMAT = "helpers.checkpoint module 1"


def _entry(key, value):
    """One fingerprint value: plain values as they are, tensors, generators and modules as digests."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype} {digest(value)}"
    if isinstance(value, torch.Generator):
        return digest(value.get_state())
    if isinstance(value, torch.nn.Module):
        state = value.state_dict()
        return f"{value!r} {digest(*(state[k] for k in sorted(state)))}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    if not (value is None or isinstance(value, (bool, int, float, str))):
        raise TypeError(f"setting {key!r}: expected a number, string, None, tensor, module or generator, "
                        f"got {type(value).__name__}")
    return value


def fingerprint(settings=None, **inputs) -> dict:
    """Everything that determines a result, as plain values: the key of the cache.

    Parameters
    ----------
    settings : dataclass instance or dict, optional
        A trainer's settings; each field becomes an entry (declared once, in the dataclass).
    **inputs
        The rest: numbers, strings, None, lists of them, tensors (training data:
        stored as shape, dtype and a digest of the values), ``torch.nn.Module``
        (architecture and current weights) or ``torch.Generator`` (its state's digest).

    Returns
    -------
    dict of plain values; two runs with equal fingerprints give the same result.
    """
    if settings is not None and dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    fp = {key: _entry(key, value) for key, value in dict(settings or {}).items()}
    fp.update({key: _entry(key, value) for key, value in inputs.items()})
    return fp


def module_fingerprint(module: torch.nn.Module, **settings) -> dict:
    """Fingerprint of a hand-written training run: the module's architecture and *initial* weights
    plus every setting that determines the result. Call it before training.

    ``settings`` values may be numbers, strings, None, tensors (stored as a digest
    of shape, dtype and values; pass the training data) or ``torch.Generator``
    (its state's digest); see :func:`fingerprint`.
    """
    state = module.state_dict()
    return {"architecture": repr(module), "initial_weights": digest(*(state[k] for k in sorted(state))),
            **fingerprint(**settings)}


def load_module(path, module: torch.nn.Module, fingerprint: dict):
    """Load ``module``'s trained weights from ``path`` and return the saved history, or None.

    For a training loop written in a notebook::

        fp = module_fingerprint(model, data=x_train, n_epochs=10, lr=1e-3, generator=gen)
        history = load_module(path, model, fp)        # None: train
        if history is None:
            ...                                       # the loop
            save_module(path, model, fp, history)

    ``path`` None (the cache is off, see ``helpers.config.checkpoint_path``)
    returns None. Loading is as safe as for the trainers (weights only; see
    :func:`load`). Weights load onto the module's current device.
    """
    if path is None:
        return None
    try:
        where = next(module.parameters()).device
    except StopIteration:
        where = "cpu"
    stored = load(path, fingerprint, _MODULE_FORMAT, map_location=where)
    if stored is None:
        return None
    module.load_state_dict(stored[0])
    return stored[1]


def save_module(path, module: torch.nn.Module, fingerprint: dict, history: dict) -> None:
    """Save ``module``'s weights with ``fingerprint`` (from before training) and ``history``
    (a dict of plain lists and numbers); ``path`` None does nothing."""
    if path is None:
        return
    save(path, fingerprint, _MODULE_FORMAT, {k: v.detach().cpu() for k, v in module.state_dict().items()}, history)
