"""Cost accounting: dense totals equal method.md's table exactly; MST numbers follow the plans."""

import pytest
import torch

import mstc
from mstc.costs import format_table, network_costs
from mstc.models import create_model

# method.md section 4: binary 3x3 convs only
DENSE = {
    "resnet18": (10_985_472, 1_676_279_808),
    "resnet18_cifar": (10_985_472, 547_356_672),
    "vgg_small": (4_571_136, 603_979_776),
}


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_totals_equal_method_table(name):
    torch.manual_seed(0)
    costs = network_costs(mstc.compress(create_model(name)))
    assert (costs.binary_params_dense, costs.bops_dense) == DENSE[name]


def test_resnet20_totals_match_rounded_table():
    costs = network_costs(mstc.compress(create_model("resnet20")))
    assert round(costs.binary_params_dense / 1e6, 3) == 0.267
    assert round(costs.bops_dense / 1e9, 3) == 0.040


def test_mst_costs_follow_the_layer_codes():
    torch.manual_seed(1)
    cm = mstc.compress(create_model("resnet20", width=0.45), complement=True)
    costs = network_costs(cm)
    for layer, code in zip(costs.layers, cm.layers.values(), strict=True):
        bits = code.weight_bits()
        # recompute from the bits: n per root + Hamming distance (or n - d) per edge
        total = 0
        for j in range(code.cout):
            p = code.parent[j]
            if p < 0:
                total += code.n
            else:
                d = int((bits[j] != bits[p]).sum())
                total += code.n - d if code.negate[j] else d
        assert layer.mst_xnors == total
        assert layer.mst_bops == total * layer.positions
        assert layer.depth == code.depth
    assert 1.5 < costs.bop_reduction < 3.5  # random weights: about 2.1x (method.md)
    assert costs.ops_mst < costs.ops_dense
    text = format_table(costs)
    assert "binary 3x3 convs" in text and str(costs.bops_dense // 1) in text.replace(",", "")
    js = costs.to_json()
    assert js["bop_reduction"] == pytest.approx(costs.bop_reduction)


def test_non_3x3_binary_layers_are_listed_but_not_counted():
    from torch import nn

    from mstc.nn import BinaryConv2d, BinaryLinear

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        BinaryConv2d(8, 8, 3, padding=1),
        BinaryConv2d(8, 6, 1),
        nn.Flatten(),
        BinaryLinear(6 * 16, 5),
    )
    costs = network_costs(mstc.compress(net, input_shape=(3, 4, 4)))
    assert [c.counted for c in costs.layers] == [True, False, False]
    assert costs.bops_dense == 8 * 72 * 16
