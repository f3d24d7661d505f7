"""Data sets for training binary networks: MNIST, Fashion-MNIST, CIFAR-10, image folders.

>>> ds = get_dataset("fashion-mnist", split="train", augment=True, seed=0)  # doctest: +SKIP
>>> info = dataset_info("fashion-mnist")  # num_classes, in_channels, image_size, ...

Fast path for small data (no DataLoader)::

    x, y = as_tensors(get_dataset("mnist", split="train"), device="cuda")
    for xb, yb in tensor_batches(x, y, 256, shuffle=True, generator=g, augment="mnist"):
        ...

Missing MNIST / Fashion-MNIST is fetched offline with ``mstc data fetch NAME`` (:func:`fetch`).
The data root is ``$MSTC_DATA`` or ``~/.cache/mstc/data``.
"""

from mstc.data.augment import random_crop_flip
from mstc.data.cifar import RestrictedUnpickler, read_cifar_bin, read_cifar_py
from mstc.data.datasets import (
    DATASET_NAMES,
    DatasetInfo,
    ImageDataset,
    ImageFolderDataset,
    TensorImageDataset,
    as_tensors,
    augment_batch,
    dataset_info,
    default_root,
    get_dataset,
    tensor_batches,
)
from mstc.data.errors import DataError, DataNotFoundError, UnsafePickleError
from mstc.data.fetching import CONTENT_SHA256, FETCHABLE, fetch, verify
from mstc.data.idx import read_idx, write_idx

__all__ = [
    "CONTENT_SHA256",
    "DATASET_NAMES",
    "FETCHABLE",
    "DataError",
    "DataNotFoundError",
    "DatasetInfo",
    "ImageDataset",
    "ImageFolderDataset",
    "RestrictedUnpickler",
    "TensorImageDataset",
    "UnsafePickleError",
    "as_tensors",
    "augment_batch",
    "dataset_info",
    "default_root",
    "fetch",
    "get_dataset",
    "random_crop_flip",
    "read_cifar_bin",
    "read_cifar_py",
    "read_idx",
    "tensor_batches",
    "verify",
    "write_idx",
]
