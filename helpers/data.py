"""MNIST as preloaded tensors, with the binarizations the course uses.

:func:`load_mnist` reads the four files of ``torchvision.datasets.MNIST``
(``<data folder>/MNIST/raw/``), downloading them through torchvision when they
are missing and the machine is online. The data folder is
:func:`helpers.config.data_dir` (``$COURSE_DATA``) unless ``root`` is given.

Splits
------
* Standard: ``"train"`` is the 60,000 training images, ``"test"`` the 10,000
  test images.
* Offline fallback, when only the test files exist (as in CI): ``"train"`` is
  test images 0-7,999 and ``"test"`` is test images 8,000-9,999. A warning says
  so once per process, and :func:`mnist_split_info` returns a sentence to print
  next to every number. It is *not* the standard split: never compare its
  numbers with published ones.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from . import config

#: The four files torchvision's MNIST uses, with the md5 of the ``.gz`` file.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Size of the offline fallback's training part (the rest of the test split is held out).
FALLBACK_TRAIN_SIZE = 8000

_IDX_MAGIC = {"images": 2051, "labels": 2049}
_cache: dict = {}
_download_failed: dict = {}
_warned = set()


class OfflineSplitWarning(UserWarning):
    """Only the MNIST test split exists, so a documented sub-split of it is used."""


class MnistFileError(OSError):
    """An MNIST file exists but is corrupted, truncated or not an MNIST file."""


def _raw(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _find(root: Path, gz_name: str) -> Path | None:
    """The file itself (``.gz``) or torchvision's extracted copy, whichever exists."""
    for p in (_raw(root) / gz_name, _raw(root) / gz_name[:-3]):
        if p.is_file():
            return p
    return None


def _have(root: Path, prefix: str) -> bool:
    return all(_find(root, f"{prefix}-{kind}-idx{d}-ubyte.gz") for kind, d in (("images", 3), ("labels", 1)))


def _writable(root: Path) -> bool:
    p = root
    while not p.exists():
        p = p.parent
    return os.access(p, os.W_OK)


def _try_download(root: Path) -> None:
    """Let torchvision fetch all four files (once per folder and process)."""
    if str(root) in _download_failed or not _writable(root):
        return
    from torchvision.datasets import MNIST

    try:
        MNIST(str(root), train=True, download=True)
    except (RuntimeError, OSError) as err:  # offline: URLError is an OSError
        _download_failed[str(root)] = " ".join(str(err).split())[:400]


def _read_idx(path: Path, kind: str) -> torch.Tensor:
    """Parse one IDX file (gzipped or not) into a uint8 tensor, checking it."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        return _cache[key]
    fix = (f"Delete it and run again with internet access (torchvision downloads a fresh copy), "
           f"or replace it with a genuine copy of {path.name if path.suffix == '.gz' else path.name + '.gz'}.")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        md5 = hashlib.md5(raw).hexdigest()
        if md5 != MNIST_FILES[path.name]:
            raise MnistFileError(f"{path} is corrupted or incomplete: md5 {md5}, expected "
                                 f"{MNIST_FILES[path.name]}. {fix}")
        raw = gzip.decompress(raw)
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MnistFileError(f"{path} is too short to be an MNIST {kind} file ({len(raw)} bytes). {fix}")
    magic, *dims = np.frombuffer(raw[:header], dtype=">i4").tolist()
    expected = int(np.prod(dims)) + header
    if magic != _IDX_MAGIC[kind] or len(raw) != expected or (ndim == 3 and dims[1:] != [28, 28]):
        raise MnistFileError(f"{path} is not a valid MNIST {kind} file (magic {magic}, dims {dims}, "
                             f"{len(raw)} bytes). {fix}")
    out = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy())
    _cache[key] = out
    return out


def _missing_error(root: Path) -> FileNotFoundError:
    names = "\n".join(f"  {n}" for n in MNIST_FILES)
    why = _download_failed.get(str(root))
    why = f"\nThe download failed: {why}" if why else ""
    return FileNotFoundError(
        f"No MNIST files in {_raw(root)}.{why}\nEither run once with internet access (torchvision downloads "
        f"them), or put these four files there (set COURSE_DATA to use another folder):\n{names}")


def _check_complete(root: Path, prefix: str) -> None:
    """Half a split (images without labels, or the reverse) is an error, never a reason to fall back."""
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    found = [n for n in names if _find(root, n)]
    if len(found) == 1:
        missing = next(n for n in names if n not in found)
        raise MnistFileError(
            f"{_raw(root)} holds {found[0]} but not {missing}: the '{prefix}' files come in pairs. "
            f"Put a genuine copy of {missing} there (or delete {found[0]} to use what remains); "
            "the course does not fall back to another split while a file is missing.")


def _locate(root: Path, split: str):
    """Which file prefix and rows make up ``split`` here, and the sentence saying so."""
    _check_complete(root, "train")
    _check_complete(root, "t10k")
    if _have(root, "train"):
        prefix = "train" if split == "train" else "t10k"
        return prefix, slice(None), f"standard MNIST {split} split ({60000 if split == 'train' else 10000} images)"
    if _have(root, "t10k"):
        if split == "train":
            rows, part = slice(0, FALLBACK_TRAIN_SIZE), f"test images 0-{FALLBACK_TRAIN_SIZE - 1}"
        else:
            rows, part = slice(FALLBACK_TRAIN_SIZE, None), f"test images {FALLBACK_TRAIN_SIZE}-9999"
        return "t10k", rows, (f"offline fallback, NOT the standard split: '{split}' = MNIST {part} "
                              "(the 60,000 training images are not available)")
    raise _missing_error(root)


def mnist_split_info(split: str = "train", root=None) -> str:
    """One sentence saying which images ``load_mnist(split)`` returns, for printing
    next to every reported number. Raises like :func:`load_mnist` when files are missing."""
    _check_split(split)
    return _locate(Path(root) if root is not None else config.data_dir(), split)[2]


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def binarize_threshold(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Fixed binarization: 1 where ``x > threshold``, else 0 (same shape and dtype as ``x``)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    return (x > threshold).to(x.dtype)


def binarize_sample(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic binarization: each pixel is an independent Bernoulli draw with
    probability equal to its intensity in [0, 1]. Call it once with a seeded
    generator for a fixed binarized set, or once per epoch for dynamic binarization."""
    if torch.isnan(x).any() or x.min() < 0 or x.max() > 1:
        raise ValueError("binarize_sample needs intensities in [0, 1] without NaNs")
    return torch.bernoulli(x, generator=generator)


def load_mnist(split: str = "train", *, root=None, flat: bool = True, binarize: str | None = None,
               threshold: float = 0.5, seed: int = 0, limit: int | None = None, download: bool = True,
               dtype=torch.float32, device=None):
    """MNIST images and labels, preloaded as tensors.

    Parameters
    ----------
    split : {"train", "test"}
        See the module docstring for the offline fallback when only the test files exist.
    root : path, optional
        Data folder holding ``MNIST/raw/``; default :func:`helpers.config.data_dir`.
    flat : bool
        ``True``: images of shape (n, 784); ``False``: (n, 1, 28, 28).
    binarize : {None, "threshold", "sample"}
        ``None``: grey levels ``pixel / 255`` in [0, 1].
        ``"threshold"``: fixed, 1 where ``pixel / 255 > threshold``.
        ``"sample"``: one stochastic binarization, each pixel ~ Bernoulli(pixel / 255),
        drawn with ``torch.Generator().manual_seed(seed)`` (the same ``seed`` gives the
        same images).
    limit : int, optional
        Keep only the first ``limit`` images (after the split, before binarizing).
    download : bool
        Let torchvision download missing files when the folder is writable and
        the machine is online (tried once per process).

    Returns
    -------
    x : Tensor (n, 784) or (n, 1, 28, 28), ``dtype``, values in [0, 1] (in {0, 1} when binarized)
    y : Tensor (n,), int64 digit labels

    Raises
    ------
    FileNotFoundError
        No usable files: the message names the folder and the four file names.
    MnistFileError
        A file is corrupted or truncated (md5 or format check), an images file and
        its labels file disagree in length, or only one file of a pair exists. The
        message names the file and the fix; it never falls back to another split.
    """
    _check_split(split)
    if binarize not in (None, "threshold", "sample"):
        raise ValueError(f"binarize must be None, 'threshold' or 'sample', got {binarize!r}")
    root = Path(root) if root is not None else config.data_dir()
    if download and not _have(root, "train"):
        _try_download(root)
    prefix, rows, _ = _locate(root, split)
    if not _have(root, "train") and str(root) not in _warned:
        _warned.add(str(root))
        warnings.warn(f"MNIST training images not found in {_raw(root)}: using the offline fallback "
                      f"split, train = test images 0-{FALLBACK_TRAIN_SIZE - 1}, test = test images "
                      f"{FALLBACK_TRAIN_SIZE}-9999. Results are not comparable with the standard split.",
                      OfflineSplitWarning, stacklevel=2)
    image_file = _find(root, f"{prefix}-images-idx3-ubyte.gz")
    label_file = _find(root, f"{prefix}-labels-idx1-ubyte.gz")
    images, labels = _read_idx(image_file, "images"), _read_idx(label_file, "labels")
    if len(images) != len(labels):
        raise MnistFileError(
            f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels. "
            "One of the two is not the genuine file: replace both with genuine copies (or delete them "
            "and run again with internet access).")
    images, labels = images[rows], labels[rows]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        images, labels = images[:limit], labels[:limit]
    x = images.to(dtype) / 255.0
    if binarize == "threshold":
        x = binarize_threshold(x, threshold)
    elif binarize == "sample":
        x = binarize_sample(x, torch.Generator().manual_seed(seed))
    x = x.reshape(len(x), 784) if flat else x.reshape(len(x), 1, 28, 28)
    return x.to(device or "cpu"), labels.long().to(device or "cpu")
