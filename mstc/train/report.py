"""End of a run: compress the trained model, save ``model.mstc`` and format the cost table."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def compress_and_table(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    complement: bool = False,
    input_shape: tuple[int, int, int] | None = None,
):
    """(path of the saved CompressedModel, per-layer cost table text, the CompressedModel).

    Uses :func:`mstc.compress` and :mod:`mstc.costs`; the table lists BOPs dense vs MST per layer
    and the network totals over binary 3x3 convs.
    """
    import mstc
    from mstc.costs import format_table, network_costs

    cm = mstc.compress(model.cpu().eval(), complement=complement, input_shape=input_shape)
    saved = cm.save(Path(path))
    return saved, format_table(network_costs(cm)), cm
