"""The MST regularizer: targets, gradients, and that it shortens the trees it is asked to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mstc.mst import plan
from mstc.nn import BinaryConv2d, binary_weight_bits
from mstc.regularize import (
    MSTRegularizer,
    assign_targets,
    choose_centers,
    init_from_centers,
    layer_tree,
)


def _net(cout: int = 16, cin: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(BinaryConv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout))


def _bits(cout=12, n=40, seed=0):
    return np.random.default_rng(seed).integers(0, 2, size=(cout, n), dtype=np.uint8)


@pytest.mark.parametrize("variant", ["ste-hamming", "latent-l1"])
def test_penalty_gradient_reaches_latent_weights(variant):
    net = _net()
    reg = MSTRegularizer(net, lam=1e-3, centers=2, variant=variant)
    p = reg.penalty()
    assert p.requires_grad and float(p.detach()) > 0
    p.backward()
    g = net[0].weight.grad
    assert g is not None and g.abs().sum() > 0


def test_ste_hamming_penalty_is_lambda_times_hamming_distance():
    net = _net()
    reg = MSTRegularizer(net, lam=0.5, centers=3, target="forest")
    bits = binary_weight_bits(net[0])
    t = reg.targets["0"].numpy()
    expected = sum(int((bits[c] != bits[t[c]]).sum()) for c in range(len(t)) if t[c] >= 0)
    assert float(reg.penalty().detach()) == pytest.approx(0.5 * expected)


def test_latent_l1_penalty_formula():
    net = _net()
    reg = MSTRegularizer(net, lam=2.0, centers=1, variant="latent-l1", target="centers")
    w = net[0].weight.detach().flatten(1)
    t = reg.targets["0"]
    has = t >= 0
    expected = (w[has] - w[t[has]]).abs().sum()
    assert float(reg.penalty().detach()) == pytest.approx(2.0 * float(expected), rel=1e-5)


def test_centers_are_deterministic_and_distinct():
    bits = _bits()
    c1 = choose_centers(bits, 4)
    assert np.array_equal(c1, choose_centers(bits, 4))
    assert len(set(c1.tolist())) == 4
    assert len(choose_centers(bits, 100)) == bits.shape[0]


def test_target_modes():
    bits = _bits(cout=15, n=50, seed=3)
    centers = choose_centers(bits, 3)
    t, _ = assign_targets(bits, centers, "centers")
    assert set(np.flatnonzero(t < 0)) == set(centers.tolist())
    assert set(t[t >= 0].tolist()) <= set(centers.tolist())
    t, _ = assign_targets(bits, centers, "forest")
    assert set(np.flatnonzero(t < 0)) == set(centers.tolist())  # the centres are the roots
    # a forest: following parents from any channel ends at a centre
    for c in range(len(t)):
        seen, j = 0, c
        while t[j] >= 0:
            j, seen = t[j], seen + 1
            assert seen <= len(t)
        assert j in centers
    t, _ = assign_targets(bits, centers, "mst")
    assert np.array_equal(t, plan(bits).parent)


def test_forest_with_one_center_costs_the_mst():
    bits = _bits(cout=10, n=30, seed=5)
    from mstc.mst import hamming_matrix

    d = hamming_matrix(bits)
    t, _ = assign_targets(bits, choose_centers(bits, 1), "forest")
    cost = sum(int(d[c, t[c]]) for c in range(len(t)) if t[c] >= 0)
    p = plan(bits)
    assert cost == p.xnors - p.n


def test_complement_targets_pull_towards_the_inverse():
    bits = _bits(cout=2, n=20)
    bits[1] = 1 - bits[0]
    bits[1, 0] = bits[0, 0]  # distance 19 = n - 1: a complement edge of cost 1
    t, neg = assign_targets(bits, np.array([0]), "centers", complement=True)
    assert t[1] == 0 and neg[1]
    conv = BinaryConv2d(1, 2, (4, 5))
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(bits, dtype=torch.float32).mul(2).sub(1).view(2, 1, 4, 5))
    reg = MSTRegularizer(nn.Sequential(conv), lam=1.0, centers=1, target="centers", complement=True)
    assert float(reg.penalty().detach()) == pytest.approx(1.0)


@pytest.mark.parametrize("variant", ["ste-hamming", "latent-l1"])
def test_training_with_the_penalty_shrinks_the_tree(variant):
    torch.manual_seed(0)
    net = _net(cout=16, cin=8)
    x = torch.randn(32, 8, 6, 6)
    target = torch.randn(32, 16, 6, 6)
    before = layer_tree("0", net[0]).xnors
    lam = 2e-3 if variant == "ste-hamming" else 2e-2
    reg = MSTRegularizer(net, lam=lam, centers=2, variant=variant, update_every=10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        reg.step()
        loss = nn.functional.mse_loss(net(x), target) + reg.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = layer_tree("0", net[0]).xnors
    assert after < 0.6 * before, (before, after)


def test_zero_lambda_has_no_effect_on_gradients():
    net = _net()
    reg = MSTRegularizer(net, lam=0.0)
    reg.penalty().backward()
    g = net[0].weight.grad
    assert g is None or float(g.abs().sum()) == 0.0


def test_init_from_centers_gives_short_trees():
    net = _net(cout=32, cin=16)
    before = layer_tree("0", net[0]).xnors
    g = torch.Generator().manual_seed(0)
    centers = init_from_centers(net, 2, noise=0.05, generator=g)
    assert len(centers["0"]) == 2
    after = layer_tree("0", net[0])
    assert after.xnors < 0.35 * before
    # centres unchanged by the noise; every channel close to its centre
    bits = binary_weight_bits(net[0])
    c = centers["0"]
    for j in range(32):
        assert (bits[j] != bits[c[j % 2]]).mean() < 0.15


def test_update_schedule_and_freeze():
    net = _net()
    reg = MSTRegularizer(net, lam=1e-3, update_every=3, target="mst")
    calls = []
    orig = reg.update_targets
    reg.update_targets = lambda: calls.append(reg.steps) or orig()
    for _ in range(7):
        reg.step()
    assert calls == [3, 6]
    reg.freeze()
    for _ in range(5):
        reg.step()
    assert calls == [3, 6]


def test_state_dict_round_trip():
    net = _net()
    reg = MSTRegularizer(net, lam=1e-3, centers=3, complement=True)
    for _ in range(4):
        reg.step()
    state = reg.state_dict()
    other = MSTRegularizer(_net(seed=1), lam=1e-3, centers=3, complement=True)
    other.load_state_dict(state)
    assert other.steps == 4
    assert torch.equal(other.targets["0"], reg.targets["0"])
    assert torch.equal(other.signs["0"], reg.signs["0"])


@pytest.mark.parametrize(
    "kw",
    [
        dict(variant="l2"),
        dict(target="ring"),
        dict(lam=-1.0),
        dict(centers=0),
        dict(update_every=0),
    ],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        MSTRegularizer(_net(), **kw)


def test_masked_hamming_same_value_gradient_only_on_differing_taps():
    net = _net(cout=6, cin=2)
    plain = MSTRegularizer(net, lam=1.0, centers=1, variant="ste-hamming", target="centers")
    masked = MSTRegularizer(net, lam=1.0, centers=1, variant="masked-hamming", target="centers")
    assert float(masked.penalty().detach()) == float(plain.penalty().detach())
    masked.penalty().backward()
    g = net[0].weight.grad.flatten(1)
    bits = binary_weight_bits(net[0])
    c = int(masked.centers["0"][0])
    agree = bits == bits[c]
    assert float(g[torch.as_tensor(agree)].abs().sum()) == 0.0
    assert float(g.abs().sum()) > 0


def test_layer_weights_scale_each_layer_distance():
    torch.manual_seed(0)
    net = nn.Sequential(BinaryConv2d(4, 8, 3, padding=1), BinaryConv2d(8, 6, 3, padding=1))
    plain = MSTRegularizer(net, lam=0.1, centers=2)
    d0 = float(plain.layer_distance("0", net[0]).detach())
    d1 = float(plain.layer_distance("1", net[1]).detach())
    assert d0 > 0 and d1 > 0
    weighted = MSTRegularizer(net, lam=0.1, centers=2, layer_weights={"0": 3.0, "1": 0.25})
    assert float(weighted.penalty().detach()) == pytest.approx(0.1 * (3.0 * d0 + 0.25 * d1))
    with pytest.raises(ValueError, match="unknown layer or negative"):
        MSTRegularizer(net, lam=0.1, layer_weights={"2": 1.0})
    with pytest.raises(ValueError, match="unknown layer or negative"):
        MSTRegularizer(net, lam=0.1, layer_weights={"0": -1.0})


def test_bops_layer_weighting_in_the_trainer():
    from mstc.train.config import TrainConfig
    from mstc.train.loop import _layer_weights

    cfg = TrainConfig(mst_layer_weighting="bops")
    w = _layer_weights(cfg, {"a": 784, "b": 196, "c": 49})
    assert w == pytest.approx({"a": 784 / 343, "b": 196 / 343, "c": 49 / 343})
    assert _layer_weights(TrainConfig(), {"a": 784}) is None
