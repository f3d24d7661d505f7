"""Spanning forests of bounded height (hop-constrained MST, NP-hard: a heuristic).

Cost of a forest = n per root + sum of its edge costs; height = largest level (roots at 0).
Given a bound k and a start tree (the minimum-depth MST), the heuristic is:

1. Construction, top-down over the start tree (parents first); each channel v attaches to an
   already placed channel or becomes a root (cost n), so the result is always a forest:
   - "fit": cheapest option whose level leaves room for v's start subtree height h(v)
     (level + h(v) <= k), the start parent winning ties; if none fits, as "lazy".
   - "lazy": keep the start parent when its level is < k, else the cheapest placed u of level
     < k, or a new root when that is cheaper.
2. Descent on each construction: move any channel v (a root or a child) to the cheapest parent u
   outside v's subtree with cost[u, v] < current cost and level(u) + 1 + h(v) <= k; repeat
   until no move lowers the cost.
3. Layers of <= PERTURB_MAX channels: iterated local search. For every channel v, toggle it
   (a child becomes a root; a root becomes the child of its cheapest parent of level < k outside
   its subtree), repair the height top-down as "lazy", descend as in 2, and keep the result when
   it is cheaper; at most PERTURB_ROUNDS rounds. Layers of <= SWAP_MAX channels also try every
   swap (a root becomes a child and a child a root at once) in each round.
4. Keep the cheaper result (then the lower height; then "fit").

Measured against the exact ILP of :mod:`mstc.mst.ilp` in docs/planner.md.
"""

from __future__ import annotations

import numba
import numpy as np

from mstc.mst.tree import levels, subtree_heights

#: layers with at most this many channels also get the iterated local search (step 4)
PERTURB_MAX = 64
#: layers with at most this many channels also try root/child swaps in the local search
SWAP_MAX = 32
#: most rounds of the iterated local search
PERTURB_ROUNDS = 5


@numba.njit(cache=True)
def _construct(cost, n, k, start, order, h, fit):  # pragma: no cover - compiled
    v_count = start.shape[0]
    placed = np.zeros(v_count, dtype=np.bool_)
    lev = np.full(v_count, -1, dtype=np.int64)
    par = np.full(v_count, -1, dtype=np.int64)
    for t in range(v_count):
        v = order[t]
        p = start[v]
        if p < 0:
            lev[v] = 0
            placed[v] = True
            continue
        best = -2
        if fit:
            bc = 0
            if h[v] <= k:
                best = -1
                bc = n
            # the start parent first so that it wins ties
            if lev[p] + 1 + h[v] <= k and (best == -2 or cost[p, v] <= bc):
                best = p
                bc = cost[p, v]
            for u in range(v_count):
                if placed[u] and lev[u] + 1 + h[v] <= k:
                    c = cost[u, v]
                    if best == -2 or c < bc:
                        best = u
                        bc = c
        if best == -2:
            if lev[p] + 1 <= k:
                best = p
            else:
                best = -1
                bc = n
                for u in range(v_count):
                    if placed[u] and lev[u] + 1 <= k and cost[u, v] < bc:
                        best = u
                        bc = cost[u, v]
        par[v] = best
        lev[v] = 0 if best < 0 else lev[best] + 1
        placed[v] = True
    return par


@numba.njit(cache=True)
def _in_subtree(par, u, v):  # pragma: no cover - compiled
    """True when u is v or a descendant of v (walks u's ancestors)."""
    while u >= 0:
        if u == v:
            return True
        u = par[u]
    return False


@numba.njit(cache=True)
def _descent(cost, n, k, par):  # pragma: no cover - compiled
    v_count = par.shape[0]
    lev, order, _ = levels(par)
    h = subtree_heights(par, order)
    improved = True
    while improved:
        improved = False
        for v in range(v_count):
            cur = n if par[v] < 0 else cost[par[v], v]
            best = -2
            bc = cur
            for u in range(v_count):
                if u == v or lev[u] + 1 + h[v] > k:
                    continue
                c = cost[u, v]
                if c < bc or (c == bc and best != -2 and lev[u] < lev[best]):
                    if not _in_subtree(par, u, v):
                        best = u
                        bc = c
            if best != -2:
                par[v] = best
                improved = True
                lev, order, _ = levels(par)
                h = subtree_heights(par, order)
    return par


@numba.njit(cache=True)
def _cost(cost, n, par):  # pragma: no cover - compiled
    total = 0
    for j in range(par.shape[0]):
        total += n if par[j] < 0 else cost[par[j], j]
    return total


@numba.njit(cache=True)
def _toggle(cost, k, trial, v):  # pragma: no cover - compiled
    """Child -> root, or root -> child of its cheapest parent of level < k; False if impossible."""
    if trial[v] >= 0:
        trial[v] = -1
        return True
    lev, _, _ = levels(trial)
    u_best = -1
    for u in range(trial.shape[0]):
        if lev[u] < k and not _in_subtree(trial, u, v):
            if u_best < 0 or cost[u, v] < cost[u_best, v]:
                u_best = u
    if u_best < 0:
        return False
    trial[v] = u_best
    return True


@numba.njit(cache=True)
def _repair_descend(cost, n, k, trial):  # pragma: no cover - compiled
    _, order, _ = levels(trial)
    h = subtree_heights(trial, order)
    trial = _construct(cost, n, k, trial, order, h, False)
    return _descent(cost, n, k, trial)


@numba.njit(cache=True)
def _perturb(cost, n, k, par, rounds, swaps):  # pragma: no cover - compiled
    """Iterated local search: toggle one channel (or, with ``swaps``, a root and a child at
    once), repair the height top-down ("lazy"), descend; keep strict improvements."""
    v_count = par.shape[0]
    best = par.copy()
    best_cost = _cost(cost, n, best)
    for _ in range(rounds):
        improved = False
        for v in range(v_count):
            trial = best.copy()
            if not _toggle(cost, k, trial, v):
                continue
            trial = _repair_descend(cost, n, k, trial)
            c = _cost(cost, n, trial)
            if c < best_cost:
                best = trial
                best_cost = c
                improved = True
        if swaps:
            for r in range(v_count):
                for v in range(v_count):
                    if best[r] >= 0 or best[v] < 0:
                        continue
                    trial = best.copy()
                    trial[v] = -1
                    if not _toggle(cost, k, trial, r):
                        continue
                    trial = _repair_descend(cost, n, k, trial)
                    c = _cost(cost, n, trial)
                    if c < best_cost:
                        best = trial
                        best_cost = c
                        improved = True
        if not improved:
            break
    return best


def forest_cost(cost: np.ndarray, n: int, parent: np.ndarray) -> int:
    """n per root plus cost[parent[j], j] per child."""
    child = np.flatnonzero(parent >= 0)
    return int(n * (parent.size - child.size) + cost[parent[child], child].sum())


def bounded_forest(cost: np.ndarray, n: int, max_depth: int, start: np.ndarray) -> np.ndarray:
    """A forest of height <= max_depth, cheap by the heuristic of the module docstring."""
    cost = np.ascontiguousarray(cost, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    level, order, ok = levels(start)
    if not ok:
        raise ValueError("start is not a forest")
    if start.size == 0 or level.max() <= max_depth:
        return start.copy()
    h = subtree_heights(start, order)
    best, best_key = None, None
    for fit in (True, False):
        par = _construct(cost, n, max_depth, start, order, h, fit)
        par = _descent(cost, n, max_depth, par)
        if start.size <= PERTURB_MAX:
            swaps = start.size <= SWAP_MAX
            par = _perturb(cost, n, max_depth, par, PERTURB_ROUNDS, swaps)
        lev, _, _ = levels(par)
        key = (forest_cost(cost, n, par), int(lev.max()))
        if best_key is None or key < best_key:
            best, best_key = par, key
    return best
