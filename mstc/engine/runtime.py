"""The graph executor: runs a CompressedModel's nodes in order.

Binary layers go to the chosen backend (integer sums, exact); full-precision operations run through
``torch.nn.functional`` in float32, the same functions the PyTorch model calls, so every float value
-- in particular every value that a later layer binarises -- is bit-identical to the PyTorch
model's. (A float re-implementation with another summation order could flip sign() of a value that
is within rounding of 0 and break the integer contract downstream.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mstc.engine.backend import get_backend
from mstc.format import CompressedModel, Node


class Runtime:
    """A CompressedModel bound to a backend. ``runtime.run(x)`` -> logits (numpy float32)."""

    def __init__(
        self, compressed: CompressedModel, backend: str = "reference", threads: int | None = None
    ) -> None:
        self.compressed = compressed
        self.backend = get_backend(backend)(compressed, threads=threads)
        self._params = {k: torch.from_numpy(np.asarray(v)) for k, v in compressed.tensors.items()}
        self._last_use = {
            name: i for i, node in enumerate(compressed.nodes) for name in node.inputs
        }

    def _p(self, node: Node, name: str) -> torch.Tensor | None:
        return self._params.get(f"{node.name}.{name}")

    def run(self, x, *, return_sums: bool = False):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        c = self.compressed.input_shape[0]
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"input must have shape (N, {c}, H, W), got {tuple(x.shape)}")
        if torch.isnan(x).any():
            raise ValueError("input contains NaN")
        values: dict[str, torch.Tensor] = {}
        sums: dict[str, np.ndarray] = {}
        out: torch.Tensor | None = None
        with torch.no_grad():
            for i, node in enumerate(self.compressed.nodes):
                args = [values[name] for name in node.inputs]
                if node.op == "input":
                    values[node.name] = x
                elif node.op == "output":
                    out = args[0]
                else:
                    values[node.name] = self._apply(node, args, sums)
                for name in node.inputs:  # free activations after their last use
                    if self._last_use[name] == i:
                        values.pop(name, None)
        assert out is not None
        logits = out.numpy()
        return (logits, sums) if return_sums else logits

    def _apply(self, node: Node, args: list[torch.Tensor], sums: dict[str, np.ndarray]):
        a = node.attrs
        op = node.op
        if op in ("binary_conv2d", "binary_linear"):
            layer = self.compressed.layers[a["layer"]]
            xin = np.ascontiguousarray(args[0].numpy())
            if op == "binary_conv2d":
                s = self.backend.conv2d(layer, xin)
            else:
                s = self.backend.linear(layer, xin)
            sums[layer.name] = s
            y = torch.from_numpy(s.astype(np.float32))
            shape = (1, -1) + (1,) * (y.dim() - 2)
            if layer.scale is not None:
                y = y * torch.from_numpy(layer.scale).view(shape)
            if layer.bias is not None:
                y = y + torch.from_numpy(layer.bias).view(shape)
            return y
        x = args[0]
        if op == "conv2d":
            return F.conv2d(
                x,
                self._p(node, "weight"),
                self._p(node, "bias"),
                a["stride"],
                a["padding"],
                a["dilation"],
                a["groups"],
            )
        if op == "linear":
            return F.linear(x, self._p(node, "weight"), self._p(node, "bias"))
        if op == "batch_norm":
            return F.batch_norm(
                x,
                self._p(node, "running_mean"),
                self._p(node, "running_var"),
                self._p(node, "weight"),
                self._p(node, "bias"),
                False,
                0.0,
                a["eps"],
            )
        if op == "relu":
            return F.relu(x)
        if op == "prelu":
            return F.prelu(x, self._p(node, "weight"))
        if op == "hardtanh":
            return F.hardtanh(x, a["min"], a["max"])
        if op == "max_pool2d":
            return F.max_pool2d(
                x, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]
            )
        if op == "avg_pool2d":
            return F.avg_pool2d(
                x,
                a["kernel_size"],
                a["stride"],
                a["padding"],
                a["ceil_mode"],
                a["count_include_pad"],
                a["divisor_override"],
            )
        if op == "adaptive_avg_pool2d":
            return F.adaptive_avg_pool2d(x, a["output_size"])
        if op == "flatten":
            return torch.flatten(x, a["start_dim"], a["end_dim"])
        if op == "identity":
            return x
        if op == "add":
            return args[0] + args[1]
        raise ValueError(f"node {node.name}: unsupported op {op!r}")


def run(
    compressed: CompressedModel,
    x: Any,
    backend: str = "reference",
    *,
    threads: int | None = None,
    return_sums: bool = False,
):
    """Run a CompressedModel on a batch ``x`` (N, C, H, W) and return the logits (numpy).

    With ``return_sums=True`` returns ``(logits, {layer name: int32 integer sums})``.
    """
    return Runtime(compressed, backend, threads).run(x, return_sums=return_sums)
