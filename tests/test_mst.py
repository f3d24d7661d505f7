"""Tests of the MST planner (mstc.mst): distances, exact MST cost, minimum height, depth bound."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import minimum_spanning_tree

from mstc.mst import Plan, forest_order, hamming_matrix, plan, plan_from_costs
from mstc.mst.bounded import forest_cost
from mstc.mst.ilp import exact_bounded_forest

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- helpers


def random_bits(seed: int, cout: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (cout, n)).astype(np.uint8)


def clustered_bits(seed: int, cout: int, n: int, centres: int, flip: float) -> np.ndarray:
    """Copies of a few centre filters with a few flipped taps (duplicates are common)."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 2, (centres, n))
    rows = c[rng.integers(0, centres, cout)]
    return (rows ^ (rng.random((cout, n)) < flip)).astype(np.uint8)


def ref_hamming(bits: np.ndarray) -> np.ndarray:
    return (bits[:, None, :] != bits[None, :, :]).sum(-1)


def scipy_mst_cost(cost: np.ndarray, n: int) -> int:
    """n + MST weight; +1 on every edge so that scipy keeps zero-weight edges."""
    v = cost.shape[0]
    if v == 0:
        return 0
    w = minimum_spanning_tree((cost + 1) * (1 - np.eye(v, dtype=np.int64))).sum()
    return int(round(w)) - (v - 1) + n


def check_valid(p: Plan, bits: np.ndarray, max_depth: int | None = None) -> None:
    """A forest, order topological, levels consistent, costs recomputed from the bits."""
    cout, n = bits.shape
    assert p.cout == cout and p.n == n
    level, _ = forest_order(p.parent)  # raises on a non-forest
    np.testing.assert_array_equal(level, p.level)
    assert sorted(p.order.tolist()) == list(range(cout))
    pos = np.empty(cout, dtype=np.int64)
    pos[p.order] = np.arange(cout)
    child = np.flatnonzero(p.parent >= 0)
    assert (pos[p.parent[child]] < pos[child]).all()
    assert (p.level[child] == p.level[p.parent[child]] + 1).all()
    assert (p.level[p.parent < 0] == 0).all()
    d = ref_hamming(bits)
    expect = np.full(cout, n)
    dc = d[p.parent[child], child]
    expect[child] = np.where(p.negate[child], n - dc, dc)
    np.testing.assert_array_equal(p.edge_cost, expect)
    assert p.xnors == int(expect.sum())
    assert not p.negate[p.parent < 0].any()
    if not p.complement:
        assert not p.negate.any()
    if max_depth is not None:
        assert p.depth <= max_depth


@functools.cache
def all_trees(v: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges (T, v-1, 2), radius (T,)) of every labelled tree on v nodes (Pruefer decoding)."""
    trees = []
    for seq in itertools.product(range(v), repeat=max(v - 2, 0)):
        deg = [1] * v
        for s in seq:
            deg[s] += 1
        edges = []
        for s in seq:
            leaf = min(i for i in range(v) if deg[i] == 1)
            edges.append((leaf, s))
            deg[leaf] -= 1
            deg[s] -= 1
        u, w = (i for i in range(v) if deg[i] == 1)
        edges.append((u, w))
        trees.append(edges)
    e = np.asarray(trees, dtype=np.int64).reshape(len(trees), v - 1, 2)
    big = 10 * v
    dist = np.full((len(trees), v, v), big, dtype=np.int64)
    t = np.arange(len(trees))[:, None]
    dist[t, e[:, :, 0], e[:, :, 1]] = 1
    dist[t, e[:, :, 1], e[:, :, 0]] = 1
    dist[:, np.arange(v), np.arange(v)] = 0
    for k in range(v):
        dist = np.minimum(dist, dist[:, :, k, None] + dist[:, None, k, :])
    return e, dist.max(axis=2).min(axis=1)


def brute_min_height(cost: np.ndarray) -> tuple[int, int]:
    """(min cost, min height over all min-cost spanning trees and roots), exhaustively."""
    v = cost.shape[0]
    if v == 1:
        return 0, 0
    e, rad = all_trees(v)
    w = cost[e[:, :, 0], e[:, :, 1]].sum(axis=1)
    best = w.min()
    return int(best), int(rad[w == best].min())


# ---------------------------------------------------------------- hamming


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 20), st.integers(0, 200))
def test_hamming_matches_reference(seed: int, cout: int, n: int) -> None:
    bits = random_bits(seed, cout, n)
    d = hamming_matrix(bits)
    assert d.dtype == np.int32 and d.shape == (cout, cout)
    np.testing.assert_array_equal(d, ref_hamming(bits))


def test_hamming_large_and_clustered() -> None:
    bits = clustered_bits(0, 70, 4608, 3, 0.01)
    np.testing.assert_array_equal(hamming_matrix(bits), ref_hamming(bits))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(5),
        np.zeros((2, 3, 4)),
        np.array([[0, 1, 2]]),
        np.array([[0, -1, 1]]),
        np.array([[0.0, np.nan]]),
        np.array([[0.5, 1.0]]),
    ],
)
def test_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        hamming_matrix(bad)
    with pytest.raises(ValueError):
        plan(bad)


def test_bad_max_depth_and_parent() -> None:
    with pytest.raises(ValueError):
        plan(random_bits(0, 4, 8), max_depth=-1)
    with pytest.raises(ValueError):
        forest_order(np.array([1, 0, -1]))  # cycle
    with pytest.raises(ValueError):
        forest_order(np.array([0]))  # self loop
    with pytest.raises(ValueError):
        plan_from_costs(np.zeros((2, 3)), 4)


def test_float_and_bool_bits_accepted() -> None:
    bits = random_bits(3, 6, 40)
    p = plan(bits)
    for other in (bits.astype(float), bits.astype(bool)):
        q = plan(other)
        np.testing.assert_array_equal(p.parent, q.parent)


def test_degenerate_shapes() -> None:
    p = plan(np.zeros((0, 5), dtype=np.uint8))
    assert p.cout == 0 and p.xnors == 0 and p.depth == 0
    p = plan(np.ones((1, 5), dtype=np.uint8))
    assert p.parent.tolist() == [-1] and p.xnors == 5 and p.depth_optimal
    p = plan(np.ones((4, 9), dtype=np.uint8))  # all equal: a star, cost n
    assert p.xnors == 9 and p.depth == 1 and p.depth_optimal


# ---------------------------------------------------------------- plan properties

bits_strategy = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(1, 40),
    st.integers(1, 130),
    st.booleans(),
    st.integers(1, 4),
    st.sampled_from([0.0, 0.02, 0.1]),
)


def make_bits(args: tuple) -> np.ndarray:
    seed, cout, n, clustered, centres, flip = args
    if clustered:
        return clustered_bits(seed, cout, n, centres, flip)
    return random_bits(seed, cout, n)


@SETTINGS
@given(bits_strategy, st.booleans())
def test_plan_valid_and_exact_cost(args: tuple, complement: bool) -> None:
    bits = make_bits(args)
    n = bits.shape[1]
    p = plan(bits, complement=complement)
    check_valid(p, bits)
    assert len(p.roots) == 1 and p.cost_optimal
    d = ref_hamming(bits)
    cost = np.minimum(d, n - d) if complement else d
    assert p.xnors == scipy_mst_cost(cost, n)
    assert p.depth >= p.depth_lower_bound
    assert p.depth_optimal == (p.depth == p.depth_lower_bound)


@SETTINGS
@given(bits_strategy)
def test_complement_never_costs_more(args: tuple) -> None:
    bits = make_bits(args)
    assert plan(bits, complement=True).xnors <= plan(bits).xnors


@SETTINGS
@given(bits_strategy, st.booleans(), st.integers(0, 4))
def test_max_depth_valid(args: tuple, complement: bool, k: int) -> None:
    bits = make_bits(args)
    p = plan(bits, complement=complement, max_depth=k)
    check_valid(p, bits, max_depth=k)
    free = plan(bits, complement=complement)
    assert p.xnors >= free.xnors
    if free.depth <= k:
        assert p.xnors == free.xnors and p.depth == free.depth


def test_deterministic() -> None:
    bits = clustered_bits(5, 64, 300, 4, 0.05)
    for kw in ({}, {"complement": True}, {"max_depth": 2}):
        a, b = plan(bits, **kw), plan(bits.copy(), **kw)
        np.testing.assert_array_equal(a.parent, b.parent)
        np.testing.assert_array_equal(a.negate, b.negate)


def test_complement_uses_inverse_filters() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, (1, 64))
    bits = np.concatenate([base, 1 - base, base]).astype(np.uint8)
    p = plan(bits, complement=True)
    assert p.xnors == 64 and p.negate.sum() == 1
    assert plan(bits).xnors > 64 + 0


# ---------------------------------------------------------------- minimum height, exhaustively


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 7), st.integers(1, 4))
def test_min_height_exhaustive_costs(seed: int, v: int, wmax: int) -> None:
    """Small integer costs (many ties): plan is exact on <= 7 nodes, equal to brute force."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, wmax + 1, (v, v))
    cost = np.triu(c, 1) + np.triu(c, 1).T
    p = plan_from_costs(cost, wmax + 1)
    best_cost, best_h = brute_min_height(cost)
    assert p.xnors == best_cost + wmax + 1
    assert p.depth_optimal
    assert p.depth == best_h


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(2, 7), st.integers(1, 12), st.booleans())
def test_min_height_exhaustive_bits(seed: int, v: int, n: int, complement: bool) -> None:
    bits = clustered_bits(seed, v, n, 2, 0.2)
    p = plan(bits, complement=complement)
    d = ref_hamming(bits)
    cost = np.minimum(d, n - d) if complement else d
    best_cost, best_h = brute_min_height(cost)
    assert p.xnors == best_cost + n
    assert p.depth_optimal and p.depth == best_h


def test_heuristic_claims_are_sound_on_larger() -> None:
    """Optimality is claimed exactly when the height meets the (proven) lower bound."""
    for seed in range(5):
        p = plan(clustered_bits(seed, 120, 200, 6, 0.03))
        assert p.depth >= p.depth_lower_bound
        assert p.depth_optimal == (p.depth == p.depth_lower_bound)


# ---------------------------------------------------------------- depth bound vs exact ILP


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.integers(1, 3), st.booleans())
def test_max_depth_against_ilp(seed: int, v: int, k: int, complement: bool) -> None:
    bits = clustered_bits(seed, v, 24, 2, 0.25)
    n = bits.shape[1]
    d = ref_hamming(bits)
    cost = np.minimum(d, n - d) if complement else d
    parent, opt = exact_bounded_forest(cost, n, k)
    level, _ = forest_order(parent)
    assert level.max() <= k and forest_cost(cost, n, parent) == opt
    p = plan(bits, complement=complement, max_depth=k)
    assert p.xnors >= opt
    if plan(bits, complement=complement).depth <= k:
        assert p.xnors == opt


def test_ilp_unbounded_is_mst() -> None:
    bits = random_bits(2, 5, 30)
    d = ref_hamming(bits)
    _, opt = exact_bounded_forest(d, 30, None)
    assert opt == scipy_mst_cost(d, 30) == plan(bits).xnors


# ---------------------------------------------------------------- the reuse identity


@SETTINGS
@given(bits_strategy, st.booleans(), st.integers(0, 2**32 - 1))
def test_reuse_identity(args: tuple, complement: bool, seed: int) -> None:
    """y_child = +-y_parent + 2 * sum_{k in D} a_k w_child_k (method.md section 2)."""
    bits = make_bits(args)
    n = bits.shape[1]
    p = plan(bits, complement=complement)
    w = 2 * bits.astype(np.int64) - 1
    a = 2 * np.random.default_rng(seed).integers(0, 2, n) - 1
    y = w @ a
    for j in np.flatnonzero(p.parent >= 0):
        i = p.parent[j]
        sign = -1 if p.negate[j] else 1
        diff = (sign * w[i]) != w[j]
        assert diff.sum() == p.edge_cost[j]
        assert y[j] == sign * y[i] + 2 * int((a[diff] * w[j][diff]).sum())
