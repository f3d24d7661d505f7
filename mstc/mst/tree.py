"""Compiled kernels on parent arrays: Prim's MST, levels, re-rooting, centres, local moves.

A forest is a parent array: parent[j] = -1 for a root, else the channel j is computed from.
All kernels are deterministic (ties go to the smallest index).
"""

from __future__ import annotations

import numba
import numpy as np

_INF = np.iinfo(np.int64).max


@numba.njit(cache=True)
def prim(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Prim's MST on a dense symmetric cost matrix, rooted at 0, O(V^2).

    Returns (parent, bottleneck) where bottleneck[u, v] = largest edge weight on the tree path
    u..v. An edge (u, v) belongs to some MST iff cost[u, v] == bottleneck[u, v] (cycle property).
    """
    v_count = cost.shape[0]
    parent = np.full(v_count, -1, dtype=np.int64)
    bott = np.zeros((v_count, v_count), dtype=np.int64)
    if v_count == 0:
        return parent, bott
    in_tree = np.zeros(v_count, dtype=np.bool_)
    best = np.empty(v_count, dtype=np.int64)
    frm = np.zeros(v_count, dtype=np.int64)
    placed = np.empty(v_count, dtype=np.int64)
    in_tree[0] = True
    placed[0] = 0
    for y in range(v_count):
        best[y] = cost[0, y]
    for it in range(1, v_count):
        v = -1
        bv = _INF
        for y in range(v_count):
            if not in_tree[y] and best[y] < bv:
                bv = best[y]
                v = y
        u = frm[v]
        parent[v] = u
        w = cost[u, v]
        for t in range(it):
            x = placed[t]
            b = bott[u, x] if bott[u, x] > w else w
            bott[v, x] = b
            bott[x, v] = b
        in_tree[v] = True
        placed[it] = v
        for y in range(v_count):
            if not in_tree[y] and cost[v, y] < best[y]:
                best[y] = cost[v, y]
                frm[y] = v
    return parent, bott


@numba.njit(cache=True)
def levels(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:  # pragma: no cover
    """(level, order, ok): BFS levels and a parents-first order; ok=False if not a forest."""
    v_count = parent.shape[0]
    count = np.zeros(v_count + 1, dtype=np.int64)
    for j in range(v_count):
        p = parent[j]
        if p >= v_count or p < -1:
            return np.full(v_count, -1, np.int64), np.arange(v_count), False
        if p >= 0:
            count[p + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    kids = np.empty(max(start[-1], 1), dtype=np.int64)
    for j in range(v_count):
        p = parent[j]
        if p >= 0:
            kids[fill[p]] = j
            fill[p] += 1
    level = np.full(v_count, -1, dtype=np.int64)
    order = np.empty(v_count, dtype=np.int64)
    n_out = 0
    for j in range(v_count):
        if parent[j] < 0:
            order[n_out] = j
            level[j] = 0
            n_out += 1
    head = 0
    while head < n_out:
        u = order[head]
        head += 1
        for t in range(start[u], start[u + 1]):
            c = kids[t]
            level[c] = level[u] + 1
            order[n_out] = c
            n_out += 1
    return level, order, n_out == v_count


@numba.njit(cache=True)
def reroot(parent: np.ndarray, r: int) -> np.ndarray:  # pragma: no cover - compiled
    """Copy of a forest with the tree containing r re-rooted at r (edges on the path flipped)."""
    out = parent.copy()
    prev = -1
    cur = r
    while cur >= 0:
        nxt = parent[cur]
        out[cur] = prev
        prev = cur
        cur = nxt
    return out


@numba.njit(cache=True)
def _adjacency(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    v_count = parent.shape[0]
    deg = np.zeros(v_count + 1, dtype=np.int64)
    for j in range(v_count):
        if parent[j] >= 0:
            deg[j + 1] += 1
            deg[parent[j] + 1] += 1
    start = np.cumsum(deg)
    fill = start[:-1].copy()
    nbr = np.empty(max(start[-1], 1), dtype=np.int64)
    for j in range(v_count):
        p = parent[j]
        if p >= 0:
            nbr[fill[j]] = p
            fill[j] += 1
            nbr[fill[p]] = j
            fill[p] += 1
    return start, nbr


@numba.njit(cache=True)
def _bfs_far(start, nbr, src, dist, pred):  # pragma: no cover - compiled
    dist[:] = -1
    queue = np.empty(dist.shape[0], dtype=np.int64)
    queue[0] = src
    dist[src] = 0
    pred[src] = -1
    head, tail = 0, 1
    far = src
    while head < tail:
        u = queue[head]
        head += 1
        if dist[u] > dist[far] or (dist[u] == dist[far] and u < far):
            far = u
        for t in range(start[u], start[u + 1]):
            x = nbr[t]
            if dist[x] < 0:
                dist[x] = dist[u] + 1
                pred[x] = u
                queue[tail] = x
                tail += 1
    return far


@numba.njit(cache=True)
def _centre_diameter(parent: np.ndarray) -> tuple[int, int, int]:  # pragma: no cover
    v_count = parent.shape[0]
    start, nbr = _adjacency(parent)
    dist = np.empty(v_count, dtype=np.int64)
    pred = np.empty(v_count, dtype=np.int64)
    a = _bfs_far(start, nbr, 0, dist, pred)
    b = _bfs_far(start, nbr, a, dist, pred)
    diam = dist[b]
    path = np.empty(diam + 1, dtype=np.int64)
    cur = b
    for i in range(diam + 1):
        path[i] = cur
        cur = pred[cur]
    c = path[diam // 2]
    if diam % 2 == 1 and path[diam // 2 + 1] < c:
        c = path[diam // 2 + 1]
    return c, (diam + 1) // 2, diam


@numba.njit(cache=True)
def tree_centre(parent: np.ndarray) -> tuple[int, int]:  # pragma: no cover - compiled
    """(centre, radius) of a single tree given as a parent array (double BFS on the diameter).

    radius = ceil(diameter / 2) = the smallest height over all choices of root; of two centres
    the smaller index is returned.
    """
    c, rad, _ = _centre_diameter(parent)
    return c, rad


@numba.njit(cache=True)
def reattach_pass(cost, parent, order, level) -> int:  # pragma: no cover - compiled
    """One top-down pass of equal-cost reattachment; returns the number of moves.

    For v in ``order``, its parent p is replaced by the u of smallest level with
    cost[u, v] == cost[p, v] and level[u] < level[p]. The total cost is unchanged (an exchange of
    two equal edges) and u cannot lie in v's subtree (levels there exceed level[v] > level[p]),
    so the result is still a minimum-cost tree. ``level`` is updated in place only as an upper
    bound; recompute it with :func:`levels` afterwards.
    """
    v_count = parent.shape[0]
    moves = 0
    for t in range(v_count):
        v = order[t]
        p = parent[v]
        if p < 0:
            continue
        w = cost[p, v]
        best = p
        bl = level[p]
        for u in range(v_count):
            if u != v and level[u] < bl and cost[u, v] == w:
                best = u
                bl = level[u]
        if best != p:
            parent[v] = best
            moves += 1
        level[v] = level[parent[v]] + 1
    return moves


@numba.njit(cache=True)
def graph_eccentricity(adj: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Hop eccentricity of every vertex of an undirected graph given by a dense bool matrix."""
    v_count = adj.shape[0]
    deg = np.zeros(v_count + 1, dtype=np.int64)
    for i in range(v_count):
        for j in range(v_count):
            if adj[i, j]:
                deg[i + 1] += 1
    start = np.cumsum(deg)
    nbr = np.empty(max(start[-1], 1), dtype=np.int64)
    fill = start[:-1].copy()
    for i in range(v_count):
        for j in range(v_count):
            if adj[i, j]:
                nbr[fill[i]] = j
                fill[i] += 1
    ecc = np.empty(v_count, dtype=np.int64)
    dist = np.empty(v_count, dtype=np.int64)
    pred = np.empty(v_count, dtype=np.int64)
    for s in range(v_count):
        far = _bfs_far(start, nbr, s, dist, pred)
        ecc[s] = dist[far]
        for i in range(v_count):
            if dist[i] < 0:
                ecc[s] = _INF
                break
    return ecc


@numba.njit(cache=True)
def subtree_heights(parent: np.ndarray, order: np.ndarray) -> np.ndarray:  # pragma: no cover
    """h[v] = height of the subtree rooted at v (0 for a leaf); ``order`` is parents-first."""
    h = np.zeros(parent.shape[0], dtype=np.int64)
    for t in range(order.shape[0] - 1, -1, -1):
        v = order[t]
        p = parent[v]
        if p >= 0 and h[v] + 1 > h[p]:
            h[p] = h[v] + 1
    return h


@numba.njit(cache=True)
def _key(par):  # pragma: no cover - compiled
    """(diameter, sum of levels from the centre, centre) of a single tree."""
    c, _, diam = _centre_diameter(par)
    lev, _, _ = levels(reroot(par, c))
    return diam, lev.sum(), c


@numba.njit(cache=True)
def exchange_search(cost, par, eu, ev, max_evals):  # pragma: no cover - compiled
    """Local search over edge exchanges between equal-weight edges (all MSTs are reachable so).

    A non-tree MST edge f = (x, y) of weight w may replace any tree edge of weight w on the tree
    path x..y; the total cost is unchanged. A move is taken when it lowers (diameter, sum of levels
    from the centre), first improvement, at most ``max_evals`` trial trees. Returns the tree
    rooted at its centre.
    """
    diam, sl, c = _key(par)
    par = reroot(par, c)
    evals = 0
    improved = True
    while improved and evals < max_evals:
        improved = False
        lev, _, _ = levels(par)
        for t in range(eu.shape[0]):
            x = eu[t]
            y = ev[t]
            if par[x] == y or par[y] == x:
                continue
            w = cost[x, y]
            a = x
            b = y
            while a != b and not improved and evals < max_evals:
                # climb the deeper endpoint; the edge (node, parent) is on the path
                if lev[a] >= lev[b]:
                    node = a
                    inner = x
                    outer = y
                    a = par[a]
                else:
                    node = b
                    inner = y
                    outer = x
                    b = par[b]
                if cost[par[node], node] != w:
                    continue
                q = par.copy()
                q[node] = -1
                q = reroot(q, inner)
                q[inner] = outer
                evals += 1
                d2, s2, c2 = _key(q)
                if d2 < diam or (d2 == diam and s2 < sl):
                    diam = d2
                    sl = s2
                    par = reroot(q, c2)
                    improved = True
            if improved:
                break
    return par
