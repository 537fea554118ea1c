"""Datasets and their partitioning across clients.

Loading order for a dataset (first that works wins):
1. ``data_dir`` given by the user (IDX files, gzipped or not, or torchvision's folder layout);
2. the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), the
   embedded default;
3. ``~/.cache/fedprune/data`` (where ``make data`` lets torchvision download when there is no apt);
4. torchvision's own download (only when ``download=True`` and a network exists).
Otherwise ``DatasetNotFound`` says where it looked and how to get the files.

Images are kept in memory as float32 tensors normalised with the dataset's mean/std; labels as int64.
Partitioning uses flwr-datasets partitioners (IID, Dirichlet, pathological shards) over the labels,
then each client's indices are split, seeded, into its own train and validation parts.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CACHE = Path.home() / ".cache" / "fedprune" / "data"  # torchvision downloads land here

# name -> (channels, image size, classes, mean, std)
DATASETS: dict[str, tuple[int, int, int, tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": (1, 28, 10, (0.2860,), (0.3530,)),
    "mnist": (1, 28, 10, (0.1307,), (0.3081,)),
    "cifar10": (3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
PARTITIONERS = ("iid", "dirichlet", "shards")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFound(FileNotFoundError):
    """The dataset files are nowhere fedprune looks; the message says how to get them."""


@dataclass(frozen=True)
class TensorPair:
    """Images ``x`` (N, C, H, W) float32, normalised, and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> "TensorPair":
        """The rows ``idx`` (a new pair sharing no storage with this one)."""
        t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return TensorPair(self.x[t].clone(), self.y[t].clone())


@dataclass(frozen=True)
class DatasetInfo:
    """Shape facts the models need: channels, square image size, number of classes."""

    name: str
    channels: int
    image_size: int
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


def dataset_info(name: str) -> DatasetInfo:
    """Static facts of a supported dataset; ``ValueError`` naming the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    c, s, k, _, _ = DATASETS[name]
    return DatasetInfo(name, c, s, k)


def _read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or raw) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({data.size} values, header says {dims})")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / "raw" / stem,
                      folder / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_folders(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    folders: list[Path] = []
    torchvision_dir = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}.get(name, name)
    if data_dir:
        d = Path(data_dir)
        folders += [d, d / name, d / torchvision_dir]
    if name == "fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    folders.append(DEFAULT_CACHE / torchvision_dir)
    return folders


def _load_idx_dataset(name: str, data_dir) -> tuple[np.ndarray, ...] | None:
    for folder in _idx_folders(name, data_dir):
        paths = [_find_idx(folder, stem) for split in ("train", "test") for stem in _IDX_FILES[split]]
        if all(paths):
            return tuple(_read_idx(p) for p in paths)  # type: ignore[arg-type]
    return None


def _load_torchvision(name: str, data_dir, download: bool) -> tuple[np.ndarray, ...] | None:
    import torchvision

    cls = {"fashion-mnist": torchvision.datasets.FashionMNIST, "mnist": torchvision.datasets.MNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    root = str(data_dir or DEFAULT_CACHE)
    try:
        train, test = (cls(root, train=t, download=download) for t in (True, False))
    except (RuntimeError, OSError):
        return None
    out = []
    for ds in (train, test):
        x = np.asarray(ds.data)
        out += [x, np.asarray(ds.targets)]
    return tuple(out)


def _to_pair(images: np.ndarray, labels: np.ndarray, mean, std) -> TensorPair:
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    if x.ndim == 3:  # (N, H, W) -> (N, 1, H, W)
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3):  # (N, H, W, C) -> (N, C, H, W)
        x = x.permute(0, 3, 1, 2).contiguous()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x.sub_(m).div_(s)  # in place: a copy of the whole set per operation would double the peak
    return TensorPair(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def locate_dataset(name: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """Where the dataset's files would be read from, or ``None`` if no local copy exists."""
    dataset_info(name)
    for folder in _idx_folders(name, data_dir) if name != "cifar10" else []:
        if all(_find_idx(folder, stem) for split in ("train", "test") for stem in _IDX_FILES[split]):
            return str(folder)
    if name == "cifar10" and data_dir and (Path(data_dir) / "cifar-10-batches-py").is_dir():
        return str(Path(data_dir) / "cifar-10-batches-py")
    return None


@lru_cache(maxsize=4)
def load_dataset(name: str = "fashion-mnist", data_dir: str | None = None,
                 download: bool = False) -> tuple[TensorPair, TensorPair]:
    """Load ``(train, test)`` of a supported dataset, normalised; cached per process.

    Raises ``DatasetNotFound`` naming every place it looked and how to get the files.
    """
    c, s, k, mean, std = DATASETS[dataset_info(name).name]
    arrays = None if name == "cifar10" else _load_idx_dataset(name, data_dir)
    if arrays is None:
        arrays = _load_torchvision(name, data_dir, download)
    if arrays is None:
        looked = ", ".join(str(p) for p in _idx_folders(name, data_dir)) or "(no data-dir given)"
        hint = ("install the Debian package with `apt-get install dataset-fashion-mnist`, "
                if name == "fashion-mnist" else "")
        raise DatasetNotFound(
            f"dataset {name!r} not found (looked in {looked}); {hint}"
            f"put the files in data.data-dir, or set data.download = true on a machine with a network"
        )
    xtr, ytr, xte, yte = arrays
    return _to_pair(xtr, ytr, mean, std), _to_pair(xte, yte, mean, std)


def partition_indices(labels: np.ndarray, num_partitions: int, kind: str = "iid", *,
                      alpha: float = 0.5, shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Split sample indices across ``num_partitions`` clients with a flwr-datasets partitioner.

    Deterministic for a seed; every partition is non-empty (the partitioners guarantee it,
    Dirichlet with ``min_partition_size``). Partitions are disjoint.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    if kind not in PARTITIONERS:
        raise ValueError(f"unknown partitioner {kind!r}; expected one of {', '.join(PARTITIONERS)}")
    labels = np.asarray(labels, dtype=np.int64)
    ds = Dataset.from_dict({"label": labels, "idx": np.arange(len(labels), dtype=np.int64)})
    if kind == "iid":
        ds = ds.shuffle(seed=seed)  # IidPartitioner takes contiguous blocks
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif kind == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions=num_partitions, partition_by="label",
                                           alpha=alpha, min_partition_size=2, seed=seed,
                                           self_balancing=True)
    else:
        partitioner = ShardPartitioner(num_partitions=num_partitions, partition_by="label",
                                       num_shards_per_partition=shards_per_client, seed=seed)
    partitioner.dataset = ds
    return [np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)
            for i in range(num_partitions)]


def train_val_split(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``indices`` (seeded) and cut off ``val_fraction`` of them (at least one) for validation."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(indices)
    n_val = max(1, int(round(len(perm) * val_fraction))) if val_fraction > 0 else 0
    n_val = min(n_val, len(perm) - 1)
    return perm[n_val:], perm[:n_val]
