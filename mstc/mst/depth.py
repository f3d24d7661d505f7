"""Minimum-depth minimum spanning trees (method.md section 3, "MST with minimum depth").

Among all minimum-weight spanning trees and all roots, find one of least height. The height of a
tree over its best root is its radius ceil(diameter / 2), reached at the tree's centre.

- Heuristic (:func:`improve_depth`): start from Prim's MST, root it at its centre, then repeat
  (a) equal-cost reattachment passes (``tree.reattach_pass``: a child moves to an equal-cost
  parent of smaller level), (b) an edge-exchange local search (``tree.exchange_search``: a
  non-tree MST edge replaces an equal-weight tree edge on its cycle when that lowers the
  diameter, then the sum of levels) and (c) re-centring, until the height stops falling. Layers of
  <= MULTI_START_MAX channels also start from the 3 best centres of E* (below).
- Lower bound: every edge of every MST satisfies cost[u, v] == bottleneck[u, v] (cycle property),
  so any MST is a spanning tree of that "MST-edge graph" E* and its height is at least the hop
  radius of E*. A heuristic tree that meets the bound is proven optimal.
- Exact (:func:`enumerate_msts`): the MSTs are exactly the trees that pick, for every weight class
  w, a spanning forest of the graph of weight-w edges between the components of the edges of
  weight < w (Kruskal's structure). When the number of MSTs times Cout is within a budget, every
  MST is enumerated and its radius computed. With the default budget every instance of at most 7
  channels is exact (7^5 trees * 7 <= 2e5).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numba
import numpy as np

from mstc.mst.tree import (
    exchange_search,
    graph_eccentricity,
    levels,
    prim,
    reattach_pass,
    reroot,
    tree_centre,
)

#: default work budget of the exact search: (number of MSTs) * Cout
DEFAULT_EXACT_BUDGET = 200_000
#: layers with at most this many channels try 4 starting roots, larger ones 1
MULTI_START_MAX = 128
#: most trial trees of one exchange search
MAX_EXCHANGE_EVALS = 5_000
#: a weight class with more candidate edges than this is not enumerated (recursion depth)
MAX_CLASS_EDGES = 200


@dataclass(frozen=True)
class DepthResult:
    """A minimum-cost spanning tree rooted at its centre, with what is proven about its height."""

    parent: np.ndarray  # int64, one root
    height: int
    lower_bound: int  # hop radius of the MST-edge graph E*, or the exact optimum when optimal
    optimal: bool  # True when no minimum-cost tree with any root has a smaller height


def improve_depth(
    cost: np.ndarray,
    parent: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    max_evals: int = MAX_EXCHANGE_EVALS,
) -> tuple[np.ndarray, int]:
    """Equal-cost reattachment passes, re-centring and (given the MST edges ``extra`` = E*)
    equal-weight edge exchanges, until the height stops falling.

    Returns (parent rooted at its centre, height). The total cost is unchanged.
    """
    par = np.array(parent, dtype=np.int64)
    best_h = np.iinfo(np.int64).max
    while True:
        while True:
            level, order, _ = levels(par)
            if reattach_pass(cost, par, order, level) == 0:
                break
        if extra is not None and extra[0].size:
            par = exchange_search(cost, par, extra[0], extra[1], max_evals)
        c, rad = tree_centre(par)
        par = reroot(par, c)
        if rad >= best_h:
            return par, int(best_h)
        best_h = rad


@numba.njit(cache=True)
def _tree_from_edges(v_count, eu, ev):  # pragma: no cover - compiled
    """Parent array rooted at 0 of the tree with edges (eu[i], ev[i])."""
    deg = np.zeros(v_count + 1, dtype=np.int64)
    for i in range(eu.shape[0]):
        deg[eu[i] + 1] += 1
        deg[ev[i] + 1] += 1
    start = np.cumsum(deg)
    fill = start[:-1].copy()
    nbr = np.empty(max(start[-1], 1), dtype=np.int64)
    for i in range(eu.shape[0]):
        nbr[fill[eu[i]]] = ev[i]
        fill[eu[i]] += 1
        nbr[fill[ev[i]]] = eu[i]
        fill[ev[i]] += 1
    parent = np.full(v_count, -2, dtype=np.int64)
    parent[0] = -1
    queue = np.empty(v_count, dtype=np.int64)
    queue[0] = 0
    head, tail = 0, 1
    while head < tail:
        u = queue[head]
        head += 1
        for t in range(start[u], start[u + 1]):
            x = nbr[t]
            if parent[x] == -2:
                parent[x] = u
                queue[tail] = x
                tail += 1
    return parent


def _find(uf: list[int], x: int) -> int:
    while uf[x] != x:
        uf[x] = uf[uf[x]]
        x = uf[x]
    return x


def _class_count(pairs: list[tuple[int, int, int, int]]) -> float:
    """Number of spanning forests of the contracted multigraph (Kirchhoff, per component)."""
    comps = sorted({c for p in pairs for c in p[2:]})
    if not comps:
        return 1.0
    index = {c: i for i, c in enumerate(comps)}
    m = len(comps)
    lap = np.zeros((m, m))
    uf = list(range(m))
    for _, _, cu, cv in pairs:
        i, j = index[cu], index[cv]
        lap[i, i] += 1
        lap[j, j] += 1
        lap[i, j] -= 1
        lap[j, i] -= 1
        uf[_find(uf, i)] = _find(uf, j)
    roots = np.asarray([_find(uf, i) for i in range(m)])
    total = 1.0
    for r in np.unique(roots):
        idx = np.flatnonzero(roots == r)[1:]
        if idx.size:
            total *= float(np.linalg.det(lap[np.ix_(idx, idx)]))
    return total


def _class_forests(pairs: list[tuple[int, int, int, int]], k: int) -> list[list[tuple[int, int]]]:
    """All k-edge acyclic subsets of ``pairs`` = (u, v, comp_u, comp_v) (spanning forests).

    Include/exclude recursion that only excludes an edge when the rest can still reach rank k
    and only includes it when it closes no cycle, so every leaf is a forest: O(#forests * E^2).
    """
    out: list[list[tuple[int, int]]] = []
    comps = sorted({c for p in pairs for c in p[2:]})
    index = {c: i for i, c in enumerate(comps)}
    ends = [(index[p[2]], index[p[3]]) for p in pairs]
    e_count = len(pairs)

    def rank_with_rest(uf: list[int], i: int, have: int) -> int:
        uf = list(uf)
        for a, b in ends[i:]:
            ra, rb = _find(uf, a), _find(uf, b)
            if ra != rb:
                uf[ra] = rb
                have += 1
        return have

    def rec(i: int, chosen: list[tuple[int, int]], uf: list[int]) -> None:
        if len(chosen) == k:
            out.append(list(chosen))
            return
        if i == e_count:
            return
        a, b = ends[i]
        ra, rb = _find(uf, a), _find(uf, b)
        if ra != rb:
            uf2 = list(uf)
            uf2[ra] = rb
            chosen.append(pairs[i][:2])
            rec(i + 1, chosen, uf2)
            chosen.pop()
        if rank_with_rest(uf, i + 1, len(chosen)) >= k:
            rec(i + 1, chosen, uf)

    rec(0, [], list(range(len(comps))))
    return out


def mst_classes(
    cost: np.ndarray, parent0: np.ndarray, elig: np.ndarray, limit: int
) -> list[list[list[tuple[int, int]]]] | None:
    """For each weight class of the MST, the list of its possible edge sets (Kruskal structure).

    The MSTs are exactly the unions of one choice per class. None if there are more than
    ``limit`` MSTs (counted first by Kirchhoff's matrix-tree theorem) or a class has more than
    MAX_CLASS_EDGES candidate edges. ``elig`` is the MST-edge graph E*: its weight-w edges are
    exactly the candidates of class w.
    """
    v_count = cost.shape[0]
    child = np.flatnonzero(parent0 >= 0)
    tw = cost[child, parent0[child]]
    iu, iv = np.nonzero(np.triu(elig, 1))
    cu = cost[iu, iv]
    weights, k_w = np.unique(tw, return_counts=True)
    scu = np.sort(cu)
    p_w = np.searchsorted(scu, weights, side="right") - np.searchsorted(scu, weights, side="left")
    # a class with p candidates and rank k has at least p - k + 1 bases
    if np.prod((p_w - k_w + 1).astype(float)) > limit or p_w.max() > MAX_CLASS_EDGES:
        return None
    uf = list(range(v_count))
    all_pairs = []
    total = 1.0
    for w in weights.tolist():
        sel = np.flatnonzero(cu == w)
        pairs = [
            (int(iu[s]), int(iv[s]), _find(uf, int(iu[s])), _find(uf, int(iv[s])))
            for s in sel.tolist()
        ]
        total *= _class_count(pairs)
        if total > limit + 0.5:
            return None
        all_pairs.append(pairs)
        for j in child[tw == w].tolist():
            a, b = _find(uf, j), _find(uf, int(parent0[j]))
            uf[a] = b
    return [_class_forests(pairs, int(k)) for pairs, k in zip(all_pairs, k_w, strict=True)]


def count_msts(classes: list[list[list[tuple[int, int]]]]) -> int:
    """Number of minimum spanning trees (product of the per-class choices)."""
    total = 1
    for c in classes:
        total *= len(c)
    return total


def enumerate_msts(cost: np.ndarray, parent0: np.ndarray, elig: np.ndarray, budget: int):
    """Yield the parent array (rooted at 0) of every MST; None if over ``budget`` (#MSTs * Cout)."""
    v_count = cost.shape[0]
    limit = max(1, budget // max(v_count, 1))
    classes = mst_classes(cost, parent0, elig, limit)
    if classes is None or count_msts(classes) > limit:
        return None

    def gen():
        for combo in itertools.product(*classes):
            edges = np.asarray([e for part in combo for e in part], dtype=np.int64).reshape(-1, 2)
            yield _tree_from_edges(v_count, edges[:, 0].copy(), edges[:, 1].copy())

    return gen()


def min_depth_mst(cost: np.ndarray, *, exact_budget: int = DEFAULT_EXACT_BUDGET) -> DepthResult:
    """A minimum-weight spanning tree of least height over all MSTs and roots (see module doc)."""
    cost = np.ascontiguousarray(cost, dtype=np.int64)
    v_count = cost.shape[0]
    if v_count <= 1:
        return DepthResult(np.full(v_count, -1, dtype=np.int64), 0, 0, True)
    parent0, bott = prim(cost)
    elig = cost == bott
    np.fill_diagonal(elig, False)
    ecc = graph_eccentricity(elig)
    lb = int(ecc.min())
    c0, _ = tree_centre(parent0)
    # all MST edges: exchange_search skips those in the current tree
    iu, iv = np.nonzero(np.triu(elig, 1))
    extra = (iu.astype(np.int64), iv.astype(np.int64))
    # extra starting roots (centres of E*) rarely help on large layers: only for small ones
    n_extra = 3 if v_count <= MULTI_START_MAX else 0
    starts = [int(c0)] + [int(s) for s in np.argsort(ecc, kind="stable")[:n_extra]]
    best_par, best_h = None, None
    for s in dict.fromkeys(starts):
        par, h = improve_depth(cost, reroot(parent0, s), extra)
        if best_h is None or h < best_h:
            best_par, best_h = par, h
        if best_h <= lb:
            break
    if best_h <= lb:
        return DepthResult(best_par, best_h, lb, True)
    trees = enumerate_msts(cost, parent0, elig, exact_budget)
    if trees is None:
        return DepthResult(best_par, best_h, lb, False)
    for par in trees:
        c, rad = tree_centre(par)
        if rad < best_h:
            best_par, best_h = reroot(par, c), int(rad)
            if best_h <= lb:
                break
    return DepthResult(best_par, best_h, best_h, True)
