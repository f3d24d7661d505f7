"""Spanning forests over the output channels of one binary layer (method.md sections 3-4).

Cost per output position of a forest: n for every root (computed densely) plus, for every child,
its edge cost d(parent, child) (or min(d, n - d) with a negate flag when ``complement=True``).
Without a depth bound the plan is an exact minimum spanning tree (one root: a root costs n, never
less than an edge) of least height over all MSTs and roots (:mod:`mstc.mst.depth`); with
``max_depth=k`` it is a heuristic forest of height <= k (:mod:`mstc.mst.bounded`).
See docs/planner.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstc.mst.bounded import bounded_forest
from mstc.mst.depth import DEFAULT_EXACT_BUDGET, min_depth_mst
from mstc.mst.hamming import as_bits, hamming_matrix
from mstc.mst.tree import levels


@dataclass(frozen=True)
class Plan:
    """A rooted spanning forest over the Cout channels of one layer.

    parent[j] = -1 for a root, else the channel j is computed from. negate[j] is True for a
    complement edge (child = -parent + correction). order lists channels parents-first.
    edge_cost[j] = n for a root, else the number of differing taps stored for j.
    """

    n: int
    parent: np.ndarray  # int64 (Cout,)
    negate: np.ndarray  # bool (Cout,)
    order: np.ndarray  # int64 (Cout,), topological
    level: np.ndarray  # int64 (Cout,), 0 for roots
    edge_cost: np.ndarray  # int64 (Cout,)
    complement: bool = False
    #: True when no minimum-cost spanning forest (any root) has a smaller height; for a binding
    #: ``max_depth`` it is False (the cost is then heuristic)
    depth_optimal: bool = False
    #: True when xnors is the exact minimum (always for max_depth=None)
    cost_optimal: bool = True
    #: proven lower bound on the height of a minimum-cost tree (hop radius of the MST-edge graph)
    depth_lower_bound: int = 0
    #: the bound the plan was made under (None: unbounded)
    max_depth: int | None = None

    @property
    def cout(self) -> int:
        return int(self.parent.shape[0])

    @property
    def depth(self) -> int:
        """Height of the forest: the largest number of edges from a root to a channel."""
        return int(self.level.max()) if self.level.size else 0

    @property
    def roots(self) -> np.ndarray:
        return np.flatnonzero(self.parent < 0)

    @property
    def xnors(self) -> int:
        """XNORs per output position: n per root plus the edge costs."""
        return int(self.edge_cost.sum())

    @property
    def dense_xnors(self) -> int:
        return self.cout * self.n


def forest_order(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(level, order) of a parent array (BFS, parents first); ValueError if not a forest."""
    parent = np.asarray(parent, dtype=np.int64)
    if parent.ndim != 1:
        raise ValueError("parent must be 1-D")
    level, order, ok = levels(parent)
    if not ok:
        raise ValueError("parent array is not a forest (cycle or unreachable channel)")
    return level, order


def edge_costs(bits: np.ndarray, *, complement: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(cost, negate) matrices: cost = d, or min(d, n - d) with negate = n - d < d."""
    bits = as_bits(bits)
    n = bits.shape[1]
    d = hamming_matrix(bits).astype(np.int64)
    if not complement:
        return d, np.zeros(d.shape, dtype=bool)
    negate = (n - d) < d
    return np.where(negate, n - d, d), negate


def plan_from_costs(
    cost: np.ndarray,
    n: int,
    *,
    negate: np.ndarray | None = None,
    complement: bool = False,
    max_depth: int | None = None,
    exact_budget: int = DEFAULT_EXACT_BUDGET,
) -> Plan:
    """Plan on a symmetric integer cost matrix with entries in [0, n] (root cost n)."""
    cost = np.ascontiguousarray(cost, dtype=np.int64)
    cout = cost.shape[0] if cost.ndim else 0
    if cost.ndim != 2 or cost.shape != (cout, cout):
        raise ValueError(f"cost must be square, got {cost.shape}")
    if max_depth is not None and max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    res = min_depth_mst(cost, exact_budget=exact_budget)
    parent = res.parent
    depth_optimal, cost_optimal = res.optimal, True
    if max_depth is not None and res.height > max_depth:
        parent = bounded_forest(cost, n, max_depth, parent)
        depth_optimal = cost_optimal = False
    level, order = forest_order(parent)
    child = np.flatnonzero(parent >= 0)
    edge_cost = np.full(cout, n, dtype=np.int64)
    edge_cost[child] = cost[parent[child], child]
    neg = np.zeros(cout, dtype=bool)
    if negate is not None:
        neg[child] = negate[parent[child], child]
    return Plan(
        n=int(n),
        parent=parent,
        negate=neg,
        order=order,
        level=level,
        edge_cost=edge_cost,
        complement=complement,
        depth_optimal=depth_optimal,
        cost_optimal=cost_optimal,
        depth_lower_bound=res.lower_bound,
        max_depth=max_depth,
    )


def plan(
    bits: np.ndarray,
    *,
    complement: bool = False,
    max_depth: int | None = None,
    exact_budget: int = DEFAULT_EXACT_BUDGET,
) -> Plan:
    """Plan the MST compression of one layer whose binary filters are the rows of ``bits``.

    bits: (Cout, n) array of {0,1}. complement: edge cost min(d, n - d) (negate flag, method.md
    section 2). max_depth: bound on the height (None: exact MST of least height).
    exact_budget: work budget (#MSTs * Cout) of the exact height search.
    """
    bits = as_bits(bits)
    n = bits.shape[1]
    cost, negate = edge_costs(bits, complement=complement)
    return plan_from_costs(
        cost,
        n,
        negate=negate if complement else None,
        complement=complement,
        max_depth=max_depth,
        exact_budget=exact_budget,
    )
