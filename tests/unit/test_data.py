"""Data loading (IDX parsing, normalisation, errors) and seeded partitioning."""

import gzip
import struct

import numpy as np
import pytest

from fedprune.data import (DatasetNotFound, _read_idx, load_dataset, locate_dataset,
                           partition_indices, train_val_split)


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_idx_roundtrip(tiny_mnist):
    arr = _read_idx(tiny_mnist / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(arr, np.arange(40) % 10)


def test_truncated_idx_is_a_clear_error(tmp_path):
    p = tmp_path / "bad-idx"
    p.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        _read_idx(p)


def test_load_from_data_dir(tiny_mnist):
    train, test = load_dataset("mnist", str(tiny_mnist))
    assert train.x.shape == (40, 1, 28, 28) and test.x.shape == (10, 1, 28, 28)
    assert train.x.dtype.is_floating_point and train.y.dtype.is_signed
    assert locate_dataset("mnist", str(tiny_mnist)) == str(tiny_mnist)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFound, match="download"):
        load_dataset("mnist", str(tmp_path / "nowhere"))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_seeded_and_nonempty(kind):
    labels = np.repeat(np.arange(10), 60)
    a = partition_indices(labels, 6, kind, alpha=0.3, seed=1)
    b = partition_indices(labels, 6, kind, alpha=0.3, seed=1)
    assert all((x == y).all() for x, y in zip(a, b))
    allidx = np.concatenate(a)
    assert len(np.unique(allidx)) == len(allidx)
    assert all(len(p) > 0 for p in a)


def test_dirichlet_is_non_iid_and_shards_limit_classes():
    labels = np.repeat(np.arange(10), 100)
    shards = partition_indices(labels, 5, "shards", shards_per_client=2, seed=0)
    assert max(len(np.unique(labels[p])) for p in shards) <= 4
    iid = partition_indices(labels, 5, "iid", seed=0)
    assert min(len(np.unique(labels[p])) for p in iid) == 10


def test_train_val_split():
    tr, va = train_val_split(np.arange(100), 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    tr2, va2 = train_val_split(np.arange(100), 0.1, seed=3)
    assert (tr == tr2).all() and (va == va2).all()
