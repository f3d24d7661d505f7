"""Exact minimum-cost spanning forest of bounded height, as a MILP (small instances only).

Variables: x_ij in {0,1} (i is the parent of j, i != j), r_j in {0,1} (j is a root: an arc from a
virtual root of cost n), levels u_j in [0, k]. Formulation (MTZ, Miller-Tucker-Zemlin 1960):

    min  sum c_ij x_ij + n sum r_j
    s.t. sum_i x_ij + r_j = 1                       (one parent or root per channel)
         u_j >= u_i + 1 - (k + 1)(1 - x_ij)         (levels increase along arcs: no cycles,
                                                     height <= k)
         u_j + r_j >= 1,  u_j + k r_j <= k          (roots at level 0, children below)

Solved with ``scipy.optimize.milp`` (HiGHS). Meant for Cout <= ~12 (used to measure the heuristic).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix


def exact_bounded_forest(
    cost: np.ndarray, n: int, max_depth: int | None = None, *, time_limit: float = 60.0
) -> tuple[np.ndarray, int]:
    """(parent, optimal cost) of a cheapest forest of height <= max_depth (None: no bound)."""
    cost = np.asarray(cost, dtype=np.int64)
    v = cost.shape[0]
    if v == 0:
        return np.zeros(0, dtype=np.int64), 0
    k = v - 1 if max_depth is None else int(max_depth)
    big = k + 1
    ii, jj = np.nonzero(~np.eye(v, dtype=bool))
    m = ii.size
    nx = m + v  # arcs, then roots; then levels
    nvar = nx + v
    c = np.concatenate([cost[ii, jj].astype(float), np.full(v, float(n)), np.zeros(v)])
    # one parent or root per channel
    rows = np.concatenate([jj, np.arange(v)])
    cols = np.concatenate([np.arange(m), m + np.arange(v)])
    a_in = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(v, nvar))
    # u_i - u_j + big * x_ij <= big - 1
    r = np.arange(m)
    a_mtz = coo_matrix(
        (
            np.concatenate([np.ones(m), -np.ones(m), np.full(m, float(big))]),
            (np.concatenate([r, r, r]), np.concatenate([nx + ii, nx + jj, r])),
        ),
        shape=(m, nvar),
    )
    # roots sit at level 0, children at level >= 1: u_j + r_j >= 1 and u_j + k r_j <= k
    jv = np.arange(v)
    a_lo = coo_matrix(
        (np.ones(2 * v), (np.concatenate([jv, jv]), np.concatenate([nx + jv, m + jv]))),
        shape=(v, nvar),
    )
    a_hi = coo_matrix(
        (
            np.concatenate([np.ones(v), np.full(v, float(k))]),
            (np.concatenate([jv, jv]), np.concatenate([nx + jv, m + jv])),
        ),
        shape=(v, nvar),
    )
    cons = [
        LinearConstraint(a_in.tocsr(), 1, 1),
        LinearConstraint(a_mtz.tocsr(), -np.inf, big - 1),
        LinearConstraint(a_lo.tocsr(), 1, np.inf),
        LinearConstraint(a_hi.tocsr(), -np.inf, float(k)),
    ]
    integrality = np.concatenate([np.ones(nx), np.zeros(v)])
    ub = np.concatenate([np.ones(nx), np.full(v, float(k))])
    res = milp(
        c,
        constraints=cons,
        integrality=integrality,
        bounds=Bounds(np.zeros(nvar), ub),
        options={"time_limit": time_limit},
    )
    if res.x is None or res.status != 0:
        raise RuntimeError(f"MILP failed: {res.message}")
    x = np.round(res.x[:m]).astype(bool)
    parent = np.full(v, -1, dtype=np.int64)
    parent[jj[x]] = ii[x]
    return parent, int(round(res.fun))
