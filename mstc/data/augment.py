"""Standard augmentation in plain torch: random crop with zero padding, horizontal flip.

Works on a batch ``(N, C, H, W)`` on any device; random numbers come from a CPU
``torch.Generator`` so results are reproducible given its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    images: torch.Tensor,
    *,
    padding: int,
    flip: bool,
    generator: torch.Generator | None = None,
    fill: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Pad each image by ``padding`` with ``fill``, crop back to H x W at a random offset,
    and, when ``flip``, mirror it horizontally with probability 1/2.

    ``fill`` may be a per-channel tensor (C,), e.g. the normalised value of black.
    Returns a new tensor; ``images`` is not modified.
    """
    if images.ndim != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    out = images
    if padding > 0 and n > 0:
        fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
        fill_t = fill_t.reshape(1, -1, 1, 1) if fill_t.ndim else fill_t
        padded = F.pad(images - fill_t, (padding, padding, padding, padding)) + fill_t
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        rows = oy[:, None] + torch.arange(h, device=images.device)
        cols = ox[:, None] + torch.arange(w, device=images.device)
        wp = w + 2 * padding
        tmp = padded.gather(2, rows[:, None, :, None].expand(n, c, h, wp))
        out = tmp.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if flip and n > 0:
        mask = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out if out is not images else images.clone()


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator for one sample, a pure function of (seed, epoch, index)."""
    mixed = (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)
