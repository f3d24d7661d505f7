"""A small graph IR for networks built from mstc layers, traced with torch.fx.

Each ``Node`` is one operation: ``op`` names it (see ``OPS``), ``inputs`` are names of earlier nodes,
``attrs`` hold JSON-able hyper-parameters; parameters live in a flat tensor dict under
``"{node.name}.{param}"``. Binary layers refer to their compressed code by ``attrs["layer"]``.
Unsupported operations raise :class:`~mstc.errors.UnsupportedModelError` naming the operation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from mstc.errors import UnsupportedModelError
from mstc.nn import BinaryConv2d, BinaryLinear, is_binary_layer

#: op name -> parameter tensors it owns (None-able ones are optional)
OPS: dict[str, tuple[str, ...]] = {
    "input": (),
    "output": (),
    "binary_conv2d": ("scale", "bias"),
    "binary_linear": ("scale", "bias"),
    "conv2d": ("weight", "bias"),
    "linear": ("weight", "bias"),
    "batch_norm": ("weight", "bias", "running_mean", "running_var"),
    "relu": (),
    "prelu": ("weight",),
    "hardtanh": (),
    "max_pool2d": (),
    "avg_pool2d": (),
    "adaptive_avg_pool2d": (),
    "flatten": (),
    "identity": (),
    "add": (),
}
OPTIONAL_PARAMS = {"scale", "bias", "weight"}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "inputs": self.inputs, "attrs": self.attrs}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Node:
        return cls(str(d["name"]), str(d["op"]), [str(i) for i in d["inputs"]], dict(d["attrs"]))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_binary_layer(m) or super().is_leaf_module(m, qualname)


def _tuple(v) -> list[int]:
    return list(v) if isinstance(v, tuple | list) else [int(v), int(v)]


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().float().contiguous().numpy().copy()


def _module_node(name: str, qualname: str, m: nn.Module, inputs: list[str], tensors) -> Node:
    def put(param: str, value):
        if value is not None:
            tensors[f"{name}.{param}"] = _np(value)

    if isinstance(m, BinaryConv2d | BinaryLinear):
        op = "binary_conv2d" if isinstance(m, BinaryConv2d) else "binary_linear"
        if m.scale:
            put("scale", m.channel_scale())
        put("bias", m.bias)
        return Node(name, op, inputs, {"layer": qualname})
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedModelError(
                f"{qualname}: Conv2d padding {m.padding!r}/{m.padding_mode}"
            )
        put("weight", m.weight)
        put("bias", m.bias)
        attrs = {
            "stride": _tuple(m.stride),
            "padding": _tuple(m.padding),
            "dilation": _tuple(m.dilation),
            "groups": int(m.groups),
            "module": qualname,
        }
        return Node(name, "conv2d", inputs, attrs)
    if isinstance(m, nn.Linear):
        put("weight", m.weight)
        put("bias", m.bias)
        return Node(name, "linear", inputs, {"module": qualname})
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        if m.running_mean is None:
            raise UnsupportedModelError(f"{qualname}: BatchNorm without running statistics")
        put("weight", m.weight)
        put("bias", m.bias)
        put("running_mean", m.running_mean)
        put("running_var", m.running_var)
        return Node(name, "batch_norm", inputs, {"eps": float(m.eps)})
    if isinstance(m, nn.ReLU):
        return Node(name, "relu", inputs, {})
    if isinstance(m, nn.PReLU):
        put("weight", m.weight)
        return Node(name, "prelu", inputs, {})
    if isinstance(m, nn.Hardtanh):
        return Node(name, "hardtanh", inputs, {"min": float(m.min_val), "max": float(m.max_val)})
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise UnsupportedModelError(f"{qualname}: MaxPool2d(return_indices=True)")
        attrs = {
            "kernel_size": _tuple(m.kernel_size),
            "stride": _tuple(m.stride),
            "padding": _tuple(m.padding),
            "dilation": _tuple(m.dilation),
            "ceil_mode": bool(m.ceil_mode),
        }
        return Node(name, "max_pool2d", inputs, attrs)
    if isinstance(m, nn.AvgPool2d):
        attrs = {
            "kernel_size": _tuple(m.kernel_size),
            "stride": _tuple(m.stride),
            "padding": _tuple(m.padding),
            "ceil_mode": bool(m.ceil_mode),
            "count_include_pad": bool(m.count_include_pad),
            "divisor_override": m.divisor_override,
        }
        return Node(name, "avg_pool2d", inputs, attrs)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return Node(name, "adaptive_avg_pool2d", inputs, {"output_size": _tuple(m.output_size)})
    if isinstance(m, nn.Flatten):
        return Node(name, "flatten", inputs, {"start_dim": m.start_dim, "end_dim": m.end_dim})
    if isinstance(m, nn.Identity | nn.Dropout):
        return Node(name, "identity", inputs, {})
    raise UnsupportedModelError(
        f"{qualname}: module type {type(m).__name__} is not supported by mstc's compressed format"
    )


def trace_model(model: nn.Module) -> tuple[list[Node], dict[str, np.ndarray], dict[str, nn.Module]]:
    """Trace ``model`` into nodes, float tensors and the binary modules (by qualified name)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise UnsupportedModelError(f"model cannot be traced with torch.fx: {exc}") from exc
    modules = dict(model.named_modules())
    nodes: list[Node] = []
    tensors: dict[str, np.ndarray] = {}
    binary: dict[str, nn.Module] = {}
    placeholders = 0
    for n in graph.nodes:
        inputs = [a.name for a in n.all_input_nodes]
        if n.op == "placeholder":
            placeholders += 1
            nodes.append(Node(n.name, "input"))
        elif n.op == "output":
            nodes.append(Node(n.name, "output", inputs))
        elif n.op == "call_module":
            m = modules[n.target]
            if is_binary_layer(m):
                binary[n.target] = m
            nodes.append(_module_node(n.name, n.target, m, inputs, tensors))
        elif n.op == "call_function" and n.target in (operator.add, torch.add):
            if len(inputs) != 2 or n.kwargs:
                raise UnsupportedModelError(
                    f"{n.name}: only tensor + tensor additions are supported"
                )
            nodes.append(Node(n.name, "add", inputs))
        elif n.op == "call_function" and n.target in (F.relu, torch.relu):
            nodes.append(Node(n.name, "relu", inputs))
        elif n.op == "call_function" and n.target is torch.flatten:
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            nodes.append(Node(n.name, "flatten", inputs, {"start_dim": int(start), "end_dim": -1}))
        else:
            raise UnsupportedModelError(
                f"operation {n.op} {getattr(n.target, '__name__', n.target)!s} ({n.name}) is not "
                "supported by mstc's compressed format"
            )
    if placeholders != 1:
        raise UnsupportedModelError(f"model must take exactly one input, got {placeholders}")
    return nodes, tensors, binary
