"""In-memory training data: the splits of :mod:`mstc.data` as tensors, plus a synthetic set.

Batches are drawn from a permutation seeded by (seed, epoch), so an epoch is a pure function of
the config and its index: the basis of exact ``--resume``. Under DDP every rank draws the same
global batch and keeps its slice ``batch[rank::world]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mstc.data import DataError, DatasetInfo, as_tensors, augment_batch, get_dataset

SYNTHETIC = "synthetic"
#: the synthetic data set: 4 classes of 1 x 16 x 16 noisy class templates
SYNTHETIC_INFO = DatasetInfo(SYNTHETIC, 4, 1, 16, (0.0,), (1.0,), 2, False)
SYNTHETIC_SIZES = {"train": 384, "test": 128}


@dataclass
class Split:
    images: torch.Tensor  # float32 (N, C, H, W), normalised
    labels: torch.Tensor  # int64 (N,)
    info: DatasetInfo

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def synthetic_split(split: str, *, seed: int = 1234) -> Split:
    """A tiny learnable data set: x = template[y] + 0.8 * noise, templates fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    info = SYNTHETIC_INFO
    templates = torch.randn(info.num_classes, 1, info.image_size, info.image_size, generator=g)
    n = SYNTHETIC_SIZES[split]
    g2 = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    labels = torch.randint(0, info.num_classes, (n,), generator=g2)
    images = templates[labels] + 0.8 * torch.randn(n, *templates.shape[1:], generator=g2)
    return Split(images.float().contiguous(), labels.long(), info)


def load_split(
    name: str, root: str | None, split: str, *, subset: int | None = None, seed: int = 0
) -> Split:
    """A split as normalised tensors; ``subset`` keeps the first N of a seeded permutation."""
    if name == SYNTHETIC:
        data = synthetic_split(split)
    else:
        ds = get_dataset(name, root, split)
        x, y = as_tensors(ds)
        data = Split(x.float().contiguous(), y.long(), ds.info)
    if len(data) == 0:
        raise DataError(f"{name} {split}: the split is empty")
    if subset is not None and subset < len(data):
        g = torch.Generator().manual_seed(seed + 7919)
        idx = torch.randperm(len(data), generator=g)[:subset].sort().values
        data = Split(data.images[idx].contiguous(), data.labels[idx].contiguous(), data.info)
    return data


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle and augmentation, a function of (seed, epoch)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1))


def train_batches(
    data: Split,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    augment: bool,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (and optionally augmented) batches of one epoch; this rank's slice of each."""
    g = epoch_generator(seed, epoch)
    n = len(data)
    order = torch.randperm(n, generator=g)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if idx.numel() < world:
            break  # too few samples left to give every rank one
        idx = idx.to(data.images.device)
        x, y = data.images[idx], data.labels[idx]
        if augment:
            x = augment_batch(x, data.info, g)
        if world > 1:
            x, y = x[rank::world], y[rank::world]
        yield x, y


def num_train_batches(n: int, batch_size: int, world: int = 1) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)


def eval_batches(
    data: Split, batch_size: int, *, rank: int = 0, world: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the evaluation set (interleaved), in fixed order."""
    x, y = data.images[rank::world], data.labels[rank::world]
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
