"""Embedded datasets, MNIST idx / CIFAR-10 batch readers, the numpy-only unpickler."""

import gzip
import logging
import os
import pickle

import numpy as np
import pytest
import torch

from sgm.data._safe_pickle import load_numpy_pickle
from sgm.data.cifar10 import CIFAR10Loader
from sgm.data.embedded import load_animal_mnist, load_sklearn_digits
from sgm.data.mnist import MNISTLoader
from sgm.errors import InputError


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_animal_mnist_is_10k_balanced_silhouettes():
    data = load_animal_mnist()
    assert data.images.shape == (10000, 28, 28) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [1000] * 10
    assert data.classes[0] == "bear" and data.classes[-1] == "zebra"


def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    data = load_sklearn_digits()
    np.testing.assert_array_equal(data.labels, ref.target)
    np.testing.assert_allclose(data.images / 255.0 * 16.0, ref.images, atol=16 / 255 / 2 + 1e-9)


def test_mnist_loader_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte.gz", train)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(6))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", test)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(4) + 3)
    loader = MNISTLoader(batch_size=6, shuffle=False, root=str(tmp_path))
    batch = next(iter(loader.train_dataloader()))
    assert batch["jpg"].shape == (6, 1, 28, 28)
    torch.testing.assert_close(batch["jpg"][:, 0], torch.from_numpy(train).float() / 127.5 - 1)
    assert batch["cls"].tolist() == list(range(6))
    assert next(iter(loader.val_dataloader()))["cls"].tolist() == [3, 4, 5, 6]


def test_mnist_falls_back_to_embedded_data_with_a_message(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        loader = MNISTLoader(batch_size=4, root=str(tmp_path / "absent"))
        batch = next(iter(loader.train_dataloader()))
    assert "MNIST idx files not found" in caplog.text and "animal" in caplog.text
    assert batch["jpg"].shape == (4, 1, 28, 28)
    assert -1.0 <= batch["jpg"].min() and batch["jpg"].max() <= 1.0


def test_cifar10_reads_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        first = data if first is None else first
        with open(folder / name, "wb") as stream:  # the layout CIFAR-10 ships (protocol 2)
            pickle.dump({b"data": data, b"labels": [1, 7]}, stream, protocol=2)
    loader = CIFAR10Loader(batch_size=10, shuffle=False, root=str(tmp_path))
    batch = next(iter(loader.train_dataloader()))
    assert batch["jpg"].shape == (10, 3, 32, 32)
    expected = torch.from_numpy(first[0].reshape(3, 32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(batch["jpg"][0], expected)
    assert batch["cls"].tolist() == [1, 7] * 5


def test_cifar10_env_var_and_fallback(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SGM_CIFAR10_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        batch = next(iter(CIFAR10Loader(batch_size=2).train_dataloader()))
    assert str(tmp_path) in caplog.text
    assert batch["jpg"].shape == (2, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_admits_numpy_only():
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.testing.assert_array_equal(load_numpy_pickle(pickle.dumps(arr)), arr)
    assert load_numpy_pickle(pickle.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(InputError, match="only numpy arrays"):
        load_numpy_pickle(pickle.dumps(_Evil()))
