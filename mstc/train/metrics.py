"""Tree cost of a model during training (method.md section 4, binary 3x3 convs only).

For binary conv l with P_l output positions, Cout_l channels of n_l taps and a current MST of
x_l XNORs per position (n per root + sum of edge costs):

    BOP reduction        = sum_l P_l * Cout_l * n_l / sum_l P_l * x_l
    weight-bit reduction = sum_l Cout_l * n_l / sum_l x_l
    depth                = max_l height of the tree of layer l
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mstc.regularize import LayerTree, binary_conv_layers, layer_tree


def binary_positions(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Output positions H_out * W_out of every binary conv for one input of shape (C, H, W)."""
    layers = dict(binary_conv_layers(model))
    out: dict[str, int] = {}
    hooks = []
    for name, m in layers.items():

        def hook(mod, inp, res, name=name):
            out[name] = int(res.shape[2] * res.shape[3])

        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out


@dataclass
class TreeSummary:
    bops_dense: int
    bops_mst: int
    weight_bits_dense: int
    weight_bits_mst: int
    max_depth: int
    layers: list[LayerTree]

    @property
    def bop_reduction(self) -> float:
        return self.bops_dense / max(self.bops_mst, 1)

    @property
    def weight_bit_reduction(self) -> float:
        return self.weight_bits_dense / max(self.weight_bits_mst, 1)

    def as_dict(self) -> dict:
        return {
            "bops_dense": self.bops_dense,
            "bops_mst": self.bops_mst,
            "bop_reduction": self.bop_reduction,
            "weight_bits_dense": self.weight_bits_dense,
            "weight_bits_mst": self.weight_bits_mst,
            "weight_bit_reduction": self.weight_bit_reduction,
            "max_depth": self.max_depth,
            "layers": [asdict(t) for t in self.layers],
        }


def tree_summary(
    model: nn.Module, positions: dict[str, int], *, complement: bool = False
) -> TreeSummary:
    """Plan every binary conv of ``model`` now and total the costs (see the module formula)."""
    trees = [layer_tree(n, m, complement=complement) for n, m in binary_conv_layers(model)]
    return TreeSummary(
        bops_dense=sum(positions[t.name] * t.dense_xnors for t in trees),
        bops_mst=sum(positions[t.name] * t.xnors for t in trees),
        weight_bits_dense=sum(t.dense_xnors for t in trees),
        weight_bits_mst=sum(t.xnors for t in trees),
        max_depth=max((t.depth for t in trees), default=0),
        layers=trees,
    )
