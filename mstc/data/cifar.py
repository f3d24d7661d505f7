"""CIFAR-10 readers: the binary layout and the python (pickle) layout, the latter safely.

Binary layout (``cifar-10-batches-bin``): ``data_batch_{1..5}.bin`` and ``test_batch.bin``, each
a run of 3073-byte records: 1 label byte, then 1024 red, 1024 green, 1024 blue bytes (32x32, row
major). Python layout (``cifar-10-batches-py``): ``data_batch_{1..5}`` and ``test_batch``, each a
pickled dict with ``data`` (uint8 N x 3072, same pixel order) and ``labels``. Pickles are read by
:class:`RestrictedUnpickler`, which admits only numpy arrays/dtypes and builtin containers.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from mstc.data.errors import DataError, UnsafePickleError

RECORD_BYTES = 1 + 3 * 32 * 32
NUM_CLASSES = 10
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]

#: the only globals a CIFAR pickle may refer to: numpy array / dtype / scalar reconstruction,
#: and ``_codecs.encode`` (how protocol 2 spells bytes)
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`; anything else is refused.

    Plain lists, dicts, tuples, bytes, str and numbers need no globals, so they load as usual.
    """

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load pickle: it refers to the global {module}.{name}, which is not a "
            "numpy array or builtin container (the file may be malicious; it was not executed)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing to load pickle: it uses persistent ids")


def safe_load_pickle(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding='bytes'`` for py2 files)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except Exception as exc:  # truncated or garbage pickles raise many exception types
        raise DataError(
            f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {exc})"
        ) from None


def _check_labels(labels: np.ndarray, source: str) -> None:
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{source}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}")


def read_cifar_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        raise DataError(
            f"{path}: size {len(raw)} is not a positive multiple of the {RECORD_BYTES}-byte "
            "CIFAR-10 record (truncated or not a CIFAR-10 binary batch)"
        )
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = rec[:, 0].astype(np.int64)
    _check_labels(labels, str(path))
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _get(d: dict, key: str):
    if key in d:
        return d[key]
    return d.get(key.encode())


def read_cifar_py(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-layout batch safely: uint8 images (N, 3, 32, 32), int64 labels (N,)."""
    path = Path(path)
    obj = safe_load_pickle(path.read_bytes(), source=str(path))
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: pickled dict lacks 'data' or 'labels'")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'labels' is not a list of integers") from exc
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape} labels for {data.shape[0]} images")
    if labels.size and int(labels.min()) < 0:
        raise DataError(f"{path}: negative label")
    _check_labels(labels, str(path))
    return data.reshape(-1, 3, 32, 32).copy(), labels


def find_cifar_dir(root: Path) -> tuple[Path, str] | None:
    """Locate a CIFAR-10 folder under ``root``: returns (folder, 'bin' | 'py') or None."""
    for base in (root, root / "cifar10", root / "cifar-10"):
        for sub, kind in (("cifar-10-batches-bin", "bin"), ("cifar-10-batches-py", "py")):
            if (base / sub).is_dir():
                return base / sub, kind
        if (base / "data_batch_1.bin").is_file() or (base / "test_batch.bin").is_file():
            return base, "bin"
        if (base / "data_batch_1").is_file() or (base / "test_batch").is_file():
            return base, "py"
    return None


def load_cifar10(folder: Path, kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the train (5 batches) or test split from a located CIFAR-10 folder."""
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    suffix = ".bin" if kind == "bin" else ""
    paths = [folder / (n + suffix) for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{folder}: incomplete CIFAR-10 {split} split, missing {missing}")
    reader = read_cifar_bin if kind == "bin" else read_cifar_py
    parts = [reader(p) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
