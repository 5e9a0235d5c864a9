"""helpers.data against independent parsing of the IDX files: on the real MNIST files
(the standard split, and the offline fallback in a temporary folder holding only the two
test files) and on small synthetic folders."""
import gzip
import shutil
import struct

import numpy as np
import pytest
import torch

from helpers import data
from helpers.data import MNIST_FILES, MnistFileError, OfflineSplitWarning, load_mnist, mnist_split_info


def _parse_independently(path):
    """Read an IDX file with struct and gzip only (not the code under test)."""
    raw = gzip.open(path).read()
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    path.write_bytes(struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
                     + array.tobytes())


def _synthetic_folder(root, with_train):
    """Uncompressed IDX files (torchvision's extracted layout) with known content."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sets = {"t10k": 10000}
    if with_train:
        sets["train"] = 12
    content = {}
    for prefix, n in sets.items():
        images = rng.integers(0, 256, size=(n, 28, 28))
        labels = rng.integers(0, 10, size=n)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        content[prefix] = (images, labels)
    return content


def test_offline_fallback_with_only_the_test_files(fallback_data):
    raw = fallback_data / "MNIST" / "raw"
    images = _parse_independently(raw / "t10k-images-idx3-ubyte.gz")
    labels = _parse_independently(raw / "t10k-labels-idx1-ubyte.gz")
    with pytest.warns(OfflineSplitWarning, match="offline fallback"):
        x_train, y_train = load_mnist("train", root=fallback_data, download=False)
    x_test, y_test = load_mnist("test", root=fallback_data, download=False)
    assert x_train.shape == (8000, 784) and x_test.shape == (2000, 784)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    np.testing.assert_allclose(x_train.numpy(), images[:8000].reshape(8000, 784) / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y_train.numpy(), labels[:8000])
    np.testing.assert_array_equal(y_test.numpy(), labels[8000:])
    assert "NOT the standard split" in mnist_split_info("train", root=fallback_data)
    assert "8000-9999" in mnist_split_info("test", root=fallback_data)


def test_fallback_warns_once(fallback_data, recwarn):
    load_mnist("train", root=fallback_data, download=False)
    load_mnist("test", root=fallback_data, download=False)
    assert sum(issubclass(w.category, OfflineSplitWarning) for w in recwarn) == 1


def _standard_folder(shared_data):
    if not (shared_data / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("the shared data folder has only the test split")
    return shared_data


def test_standard_split_on_the_real_files(shared_data, recwarn):
    root = _standard_folder(shared_data)
    raw = root / "MNIST" / "raw"
    x_train, y_train = load_mnist("train", root=root, download=False)
    x_test, y_test = load_mnist("test", root=root, download=False)
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    train_images = _parse_independently(raw / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(x_train[-100:].numpy(), train_images[-100:].reshape(100, 784) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y_train.numpy(), _parse_independently(raw / "train-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(y_test.numpy(), _parse_independently(raw / "t10k-labels-idx1-ubyte.gz"))
    assert not any(issubclass(w.category, OfflineSplitWarning) for w in recwarn)
    assert mnist_split_info("train", root=root) == "standard MNIST train split (60000 images)"
    assert mnist_split_info("test", root=root) == "standard MNIST test split (10000 images)"


def _copy_standard(shared_data, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(_standard_folder(shared_data) / "MNIST" / "raw" / name, raw / name)
    return raw


@pytest.mark.parametrize("damage", ["truncated", "other bytes"])
def test_damaged_training_images_raise_and_never_fall_back(shared_data, tmp_path, damage, recwarn):
    raw = _copy_standard(shared_data, tmp_path)
    bad = raw / "train-images-idx3-ubyte.gz"
    content = bad.read_bytes()
    flipped_last_byte = content[:-1] + bytes([content[-1] ^ 0xFF])
    bad.write_bytes(content[:len(content) // 2] if damage == "truncated" else flipped_last_byte)
    with pytest.raises(MnistFileError, match="md5") as err:
        load_mnist("train", root=tmp_path, download=False)
    assert str(bad) in str(err.value) and "Delete it" in str(err.value)
    x_test, _ = load_mnist("test", root=tmp_path, download=False)  # still the standard test split
    assert x_test.shape == (10000, 784)
    assert not any(issubclass(w.category, OfflineSplitWarning) for w in recwarn)


def test_missing_half_of_the_training_pair_raises(shared_data, tmp_path, recwarn):
    raw = _copy_standard(shared_data, tmp_path)
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    for split in ("train", "test"):
        with pytest.raises(MnistFileError, match="train-labels-idx1-ubyte.gz") as err:
            load_mnist(split, root=tmp_path, download=False)
        assert "does not fall back" in str(err.value)
    with pytest.raises(MnistFileError):
        mnist_split_info("train", root=tmp_path)
    assert not any(issubclass(w.category, OfflineSplitWarning) for w in recwarn)


def test_images_and_labels_of_different_lengths_raise(tmp_path):
    _synthetic_folder(tmp_path, with_train=True)
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw / "train-labels-idx1-ubyte", np.zeros(11))  # 12 images, 11 labels
    with pytest.raises(MnistFileError, match="12 images") as err:
        load_mnist("train", root=tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(err.value) and "train-labels-idx1-ubyte" in str(err.value)
    assert "replace both" in str(err.value)


def test_image_shape_and_binarizations(shared_data):
    x, _ = load_mnist("test", root=shared_data, flat=False, limit=500, download=False)
    assert x.shape == (500, 1, 28, 28)
    assert 0.0 <= x.min() and x.max() <= 1.0
    xt, _ = load_mnist("test", root=shared_data, flat=False, limit=500, binarize="threshold", threshold=0.3,
                       download=False)
    assert torch.equal(xt, (x > 0.3).float())
    xs1, _ = load_mnist("test", root=shared_data, limit=500, binarize="sample", seed=7, download=False)
    xs2, _ = load_mnist("test", root=shared_data, limit=500, binarize="sample", seed=7, download=False)
    xs3, _ = load_mnist("test", root=shared_data, limit=500, binarize="sample", seed=8, download=False)
    assert torch.equal(xs1, xs2) and not torch.equal(xs1, xs3)
    assert set(xs1.unique().tolist()) <= {0.0, 1.0}
    # Each pixel is its own Bernoulli(intensity) draw: the binarized mean matches
    # the grey-level mean to within a few standard errors (n = 392,000 pixels).
    grey = x.flatten()
    stderr = torch.sqrt((grey * (1 - grey)).sum()) / grey.numel()
    assert abs(xs1.mean() - grey.mean()) < 5 * stderr


def test_standard_split_when_training_files_exist(tmp_path, recwarn):
    content = _synthetic_folder(tmp_path, with_train=True)
    x, y = load_mnist("train", root=tmp_path, flat=False, download=False)
    assert x.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(x.numpy()[:, 0], content["train"][0] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), content["train"][1])
    x_test, _ = load_mnist("test", root=tmp_path, download=False)
    assert x_test.shape == (10000, 784)
    assert not any(issubclass(w.category, OfflineSplitWarning) for w in recwarn)
    assert mnist_split_info("train", root=tmp_path).startswith("standard")


def test_empty_folder_names_folder_and_all_four_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(root=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in MNIST_FILES:
        assert name in message


def test_corrupted_gz_file_is_reported(fallback_data):
    damaged = fallback_data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # a truncated download
    with pytest.raises(MnistFileError, match="md5") as err:
        load_mnist("test", root=fallback_data, download=False)
    assert str(damaged) in str(err.value) and "Delete it" in str(err.value)


def test_corrupted_extracted_file_is_reported(tmp_path):
    _synthetic_folder(tmp_path, with_train=False)
    bad = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(MnistFileError, match="not a valid MNIST labels file"):
        load_mnist("test", root=tmp_path, download=False)


@pytest.mark.parametrize("kwargs, match", [({"split": "validation"}, "split"), ({"binarize": "otsu"}, "binarize"),
                                           ({"limit": 0}, "limit")])
def test_bad_arguments(tmp_path, kwargs, match):
    _synthetic_folder(tmp_path, with_train=True)
    with pytest.raises(ValueError, match=match):
        load_mnist(root=tmp_path, download=False, **kwargs)


def test_binarize_sample_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.binarize_sample(torch.tensor([0.2, 1.5]))
    with pytest.raises(ValueError, match="NaN"):
        data.binarize_sample(torch.tensor([0.2, float("nan")]))


def test_default_folder_comes_from_course_data(monkeypatch, tmp_path):
    _synthetic_folder(tmp_path, with_train=True)
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    x, _ = load_mnist("train", download=False)
    assert x.shape == (12, 784)
