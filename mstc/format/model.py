"""CompressedModel: a whole network with its binary layers in MST-compressed form.

``compress(model, ...)`` traces a model built from mstc layers, plans every binary layer with
``mstc.mst.plan`` and encodes it as a :class:`BinaryLayerCode`; full-precision layers, BatchNorm
and scales are kept as float32 tensors. Compression is lossless: ``layer.weight_bits()`` equals the
model's binary weights exactly (checked before returning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mstc.format.graph import Node, trace_model
from mstc.format.layer import BinaryLayerCode
from mstc.mst import plan as plan_layer
from mstc.nn import BinaryConv2d, binary_weight_bits


def default_input_shape(model_config: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of one input for a model built by create_model."""
    c = int(model_config.get("in_channels", 3))
    if "image_size" in model_config:
        s = int(model_config["image_size"])
    elif model_config.get("name") == "resnet18":
        s = 224
    else:
        s = 32
    return (c, s, s)


@dataclass(eq=False)
class CompressedModel:
    """Nodes of the network graph, float tensors, and the compressed binary layers."""

    nodes: list[Node]
    tensors: dict[str, np.ndarray]
    layers: dict[str, BinaryLayerCode]
    input_shape: tuple[int, int, int]
    model_config: dict[str, Any] = field(default_factory=dict)
    plan_options: dict[str, Any] = field(default_factory=dict)
    #: per full-precision conv/linear node: multiply-accumulates for one input (FLOPs convention)
    fp_macs: dict[str, int] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` (safetensors + JSON header, atomic, checksummed)."""
        from mstc.format.file import save_compressed

        return save_compressed(self, path)

    def tensor(self, node: Node, param: str) -> np.ndarray | None:
        return self.tensors.get(f"{node.name}.{param}")


def _shape_pass(model: nn.Module, input_shape) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """Output size of every binary conv and MACs of full-precision convs/linears for one input."""
    out_hw: dict[str, tuple[int, int]] = {}
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):

            def hook(mod, inp, out, name=name):
                if isinstance(mod, BinaryConv2d):
                    out_hw[name] = (int(out.shape[2]), int(out.shape[3]))
                elif isinstance(mod, nn.Conv2d) and not hasattr(mod, "activation_ste"):
                    per_pos = mod.weight[0].numel() * mod.out_channels
                    macs[name] = int(per_pos * out.shape[2] * out.shape[3])
                elif isinstance(mod, nn.Linear) and not hasattr(mod, "activation_ste"):
                    macs[name] = int(mod.in_features * mod.out_features)

            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out_hw, macs


def compress(
    model: nn.Module,
    *,
    complement: bool = False,
    max_depth: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> CompressedModel:
    """MST-compress every binary layer of ``model`` (a network built from mstc layers).

    ``complement`` and ``max_depth`` are passed to :func:`mstc.mst.plan`. ``input_shape`` (C, H, W)
    fixes the positions used for cost accounting (default from the model's config).
    """
    config = dict(getattr(model, "mstc_config", {}) or {})
    if input_shape is None:
        input_shape = default_input_shape(config)
    nodes, tensors, binary = trace_model(model)
    out_hw, macs = _shape_pass(model, input_shape)
    options = {"complement": bool(complement), "max_depth": max_depth}
    layers: dict[str, BinaryLayerCode] = {}
    for qualname, m in binary.items():
        bits = binary_weight_bits(m)
        p = plan_layer(bits, complement=complement, max_depth=max_depth)
        if isinstance(m, BinaryConv2d):
            kh, kw = m.kernel_size
            geometry = dict(
                kind="conv2d",
                cin=m.in_channels,
                kernel_size=(kh, kw),
                stride=tuple(m.stride),
                padding=tuple(m.padding),
                dilation=tuple(m.dilation),
                out_hw=out_hw.get(qualname, (1, 1)),
            )
        else:
            geometry = dict(
                kind="linear",
                cin=m.in_features,
                kernel_size=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                dilation=(1, 1),
                out_hw=(1, 1),
            )
        code = BinaryLayerCode.from_bits(qualname, bits, p, plan_options=dict(options), **geometry)
        if m.scale:
            code.scale = m.channel_scale().detach().float().numpy().copy()
        if m.bias is not None:
            code.bias = m.bias.detach().float().numpy().copy()
        if not np.array_equal(code.weight_bits(), bits):  # lossless, always
            raise AssertionError(f"internal error: {qualname} does not reconstruct its weights")
        layers[qualname] = code
    fp_macs = {
        n.name: macs.get(n.attrs.get("module", ""), 0)
        for n in nodes
        if n.op in ("conv2d", "linear")
    }
    return CompressedModel(
        nodes=nodes,
        tensors=tensors,
        layers=layers,
        input_shape=tuple(int(v) for v in input_shape),
        model_config=config,
        plan_options=options,
        fp_macs=fp_macs,
    )
