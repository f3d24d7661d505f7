"""Data sets as ``torch.utils.data.Dataset``: MNIST, Fashion-MNIST, CIFAR-10, image folders.

Every item is ``(image, label)``: a float32 tensor (C, H, W), normalised with the data set's
mean and std, and an ``int`` label. MNIST-like data and CIFAR-10 are held in memory as whole
uint8 tensors; :func:`as_tensors` hands them to a trainer as two tensors (no DataLoader) and
:func:`tensor_batches` batches them, with the same augmentation done batch-wise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from mstc.data import cifar
from mstc.data.augment import item_generator, random_crop_flip
from mstc.data.errors import DataError, DataNotFoundError
from mstc.data.idx import read_idx

DATA_ENV = "MSTC_DATA"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: IDX file stems of MNIST-like data sets, per split: (images, labels)
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a trainer needs to know about a data set to build a model and augment batches."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    splits: tuple[str, ...] = ("train", "test")

    def fill(self) -> torch.Tensor:
        """Per-channel normalised value of black (0), used for padding in augmentation."""
        return -torch.tensor(self.mean) / torch.tensor(self.std)


_FIXED: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), 2, False),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), 2, True),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True
    ),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASET_NAMES: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "imagefolder")
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
}


def default_root() -> Path:
    """The data root: ``$MSTC_DATA`` if set, else ``~/.cache/mstc/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mstc" / "data"


def canonical_name(name: str) -> str:
    """Normalise a data set name (case, a few aliases); raise :class:`DataError` if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return key


def _imagefolder_classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def dataset_info(
    name: str, root: str | os.PathLike | None = None, *, image_size: int | None = None
) -> DatasetInfo:
    """Classes, channels, image size, normalisation and augmentation of a data set.

    For ``imagefolder`` the number of classes comes from the data, so ``root`` is required
    (classes are the sub-folders of ``root/train``, or of the first split folder found);
    ``image_size`` defaults to 224.
    """
    key = canonical_name(name)
    if key != "imagefolder":
        return _FIXED[key]
    if root is None:
        raise DataError("imagefolder: the number of classes depends on the data; pass root=")
    base = Path(root).expanduser()
    splits = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not splits:
        raise DataNotFoundError(
            f"no image folder at {base}: expected {base}/<split>/<class_name>/*.png|jpg"
        )
    ref = base / "train" if "train" in splits else base / splits[0]
    size = int(image_size or 224)
    return DatasetInfo(
        "imagefolder",
        len(_imagefolder_classes(ref)),
        3,
        size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        max(1, size // 8),
        True,
        tuple(splits),
    )


class ImageDataset(Dataset):
    """Common part: normalisation and (optional, seedable) per-item augmentation.

    With ``seed`` set, the augmentation of item ``i`` is a pure function of
    ``(seed, epoch, i)``; call :meth:`set_epoch` to vary it across epochs. With ``seed=None``
    it draws from torch's global generator (which DataLoader seeds per worker).
    """

    def __init__(self, info: DatasetInfo, *, augment: bool = False, seed: int | None = None):
        self.info = info
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        std = torch.tensor(info.std, dtype=torch.float32).reshape(-1, 1, 1)
        mean = torch.tensor(info.mean, dtype=torch.float32).reshape(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std
        self._fill = self._shift  # normalised black, the padding value

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream for an epoch (only matters when ``seed`` is set)."""
        self.epoch = int(epoch)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (..., C, H, W) -> normalised float32."""
        return images.to(torch.float32) * self._scale + self._shift

    def _finish(self, img_u8: torch.Tensor, index: int) -> torch.Tensor:
        x = self.normalise(img_u8)
        if self.augment:
            gen = None if self.seed is None else item_generator(self.seed, self.epoch, index)
            x = self._augment_one(x, gen)
        return x

    def _augment_one(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        # same draws, in the same order, as random_crop_flip on a batch of one, but by slicing
        p, (_, h, w) = self.info.crop_padding, x.shape
        if p > 0:
            oy = int(torch.randint(0, 2 * p + 1, (1,), generator=gen))
            ox = int(torch.randint(0, 2 * p + 1, (1,), generator=gen))
            padded = F.pad(x - self._fill, (p, p, p, p)) + self._fill
            x = padded[:, oy : oy + h, ox : ox + w]
        if self.info.flip and float(torch.rand(1, generator=gen)) < 0.5:
            x = x.flip(2)
        return x.contiguous()


class TensorImageDataset(ImageDataset):
    """An in-memory data set: uint8 images (N, C, H, W) and int64 labels (N,)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        *,
        augment: bool = False,
        seed: int | None = None,
    ):
        super().__init__(info, augment=augment, seed=seed)
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise DataError("TensorImageDataset needs uint8 (N, C, H, W) images and N labels")
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._finish(self.images[index], index), int(self.labels[index])

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images normalised (no augmentation), and the labels."""
        return self.normalise(self.images), self.labels.clone()


class ImageFolderDataset(ImageDataset):
    """``root/split/class_name/*.png|jpg``, read lazily with Pillow, resized to a square.

    Each image is converted to RGB, its shorter side resized to ``image_size`` and centre
    cropped. Class indices follow the sorted class folders of ``root/train`` when it exists
    (so every split shares them), else those of the split itself.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        image_size: int = 224,
        augment: bool = False,
        seed: int | None = None,
    ):
        try:
            from PIL import Image  # noqa: F401
        except ImportError as exc:
            raise DataError(
                "the imagefolder data set needs Pillow: pip install pillow (or 'mstc[images]')"
            ) from exc
        root = Path(root).expanduser()
        folder = root / split
        if not folder.is_dir():
            raise DataNotFoundError(
                f"image folder split not found: {folder} (expected "
                f"{root}/{split}/<class_name>/*.png|jpg; ImageNet-style data is not fetched by "
                "mstc, point root at your own copy)"
            )
        info = dataset_info("imagefolder", root, image_size=image_size)
        super().__init__(info, augment=augment, seed=seed)
        classes = _imagefolder_classes(root / "train" if (root / "train").is_dir() else folder)
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.samples: list[tuple[Path, int]] = []
        for c in _imagefolder_classes(folder):
            if c not in self.class_to_idx:
                raise DataError(f"{folder / c}: class folder not present in {root / 'train'}")
            for p in sorted((folder / c).iterdir()):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((p, self.class_to_idx[c]))
        if not self.samples:
            raise DataNotFoundError(f"no .png/.jpg images under {folder}/<class_name>/")

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, index: int) -> torch.Tensor:
        """The image at ``index`` as uint8 (3, S, S), before normalisation."""
        from PIL import Image

        path = self.samples[index][0]
        size = self.info.image_size
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                if (w, h) != (size, size):
                    scale = size / min(w, h)
                    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                    im = im.resize((nw, nh), Image.BILINEAR)
                    left, top = (nw - size) // 2, (nh - size) // 2
                    im = im.crop((left, top, left + size, top + size))
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from exc
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._finish(self.load_uint8(index), index), self.samples[index][1]

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image loaded, normalised (no augmentation); fine for small folders only."""
        if not self.samples:
            raise DataError("empty image folder")
        x = torch.stack([self.load_uint8(i) for i in range(len(self))])
        y = torch.tensor([s[1] for s in self.samples], dtype=torch.int64)
        return self.normalise(x), y


def _fetch_hint(name: str, root: Path) -> str:
    return f"get it with:  mstc data fetch {name} --root {root}"


def _load_idx_split(name: str, root: Path, split: str, info: DatasetInfo):
    stems = IDX_FILES[split]
    dirs = [root / name, root]
    for d in dirs:
        found = []
        for stem in stems:
            p = next((d / (stem + s) for s in ("", ".gz") if (d / (stem + s)).is_file()), None)
            found.append(p)
        if all(found):
            break
    else:
        raise DataNotFoundError(
            f"{name} {split} data not found: looked for {stems[0]}[.gz] and {stems[1]}[.gz] in "
            f"{root / name}; {_fetch_hint(name, root)}"
        )
    images, labels = read_idx(found[0]), read_idx(found[1])
    s = info.image_size
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (s, s):
        raise DataError(f"{found[0]}: expected uint8 images of N x {s} x {s}, got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{found[1]}: {labels.shape} labels do not match {images.shape[0]} images in {found[0]}"
        )
    if labels.size and int(labels.max()) >= info.num_classes:
        raise DataError(f"{found[1]}: label {int(labels.max())} out of range")
    return images[:, None], labels.astype(np.int64)


def get_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    augment: bool = False,
    seed: int | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Load a data set split ("train" or "test"; any split folder for ``imagefolder``).

    ``root`` defaults to :func:`default_root`. MNIST-like files are looked for in
    ``root/<name>/`` (then ``root`` itself), CIFAR-10 in ``root/cifar-10-batches-{bin,py}``
    (also under ``root/cifar10/``), image folders in ``root/<split>/<class>/``.
    ``augment`` turns on random crop + flip (as :attr:`DatasetInfo.crop_padding` / ``flip``),
    reproducible when ``seed`` is given. ``image_size`` applies to ``imagefolder`` only.
    Missing data raises :class:`DataNotFoundError` saying how to get it.
    """
    key = canonical_name(name)
    base = Path(root).expanduser() if root is not None else default_root()
    if key == "imagefolder":
        folder = base if root is not None else base / "imagefolder"
        return ImageFolderDataset(
            folder, split, image_size=image_size or 224, augment=augment, seed=seed
        )
    info = _FIXED[key]
    if split not in info.splits:
        raise DataError(f"{key}: unknown split {split!r}; choose one of {info.splits}")
    if key == "cifar10":
        located = cifar.find_cifar_dir(base)
        if located is None:
            raise DataNotFoundError(
                f"CIFAR-10 not found under {base}: expected {base}/cifar-10-batches-bin/ (binary "
                f"version) or {base}/cifar-10-batches-py/. It is not fetched by mstc: download "
                "cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
                f"extract it into {base}"
            )
        images, labels = cifar.load_cifar10(located[0], located[1], split)
    else:
        images, labels = _load_idx_split(key, base, split, info)
    return TensorImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        info,
        augment=augment,
        seed=seed,
    )


def as_tensors(
    dataset: Dataset, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole data set as ``(images float32 (N, C, H, W) normalised, labels int64 (N,))``.

    The fast path for small data: batch these with :func:`tensor_batches` (on the GPU if
    ``device`` says so) instead of a DataLoader. No augmentation is applied here, whatever the
    data set's ``augment`` flag; :func:`tensor_batches` does it per batch. Accepts the data sets
    of :func:`get_dataset` and ``torch.utils.data.Subset`` of them; for ``imagefolder`` every
    image is decoded, so use it only for small folders.
    """
    if isinstance(dataset, Subset):
        x, y = as_tensors(dataset.dataset)
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.int64)
        x, y = x[idx], y[idx]
    elif isinstance(dataset, (TensorImageDataset, ImageFolderDataset)):
        x, y = dataset.to_tensors()
    else:
        raise TypeError(f"as_tensors does not support {type(dataset).__name__}")
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def augment_batch(
    images: torch.Tensor,
    info: DatasetInfo | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augment a normalised batch (N, C, H, W) the standard way for this data set."""
    if isinstance(info, str):
        info = dataset_info(info)
    return random_crop_flip(
        images,
        padding=info.crop_padding,
        flip=info.flip,
        generator=generator,
        fill=info.fill().to(images.device, images.dtype),
    )


def tensor_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: DatasetInfo | str | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches from in-memory tensors (see :func:`as_tensors`).

    ``shuffle`` permutes with ``generator``; ``augment`` (a :class:`DatasetInfo` or name)
    applies :func:`augment_batch` with the same generator, so a seeded generator makes an
    epoch fully reproducible.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    n = len(labels)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            x, y = images[idx.to(images.device)], labels[idx.to(labels.device)]
        if augment is not None:
            x = augment_batch(x, augment, generator)
        yield x, y
