"""Folding a per-channel scale, bias, BatchNorm and sign into one integer threshold per channel.

The float function a binary layer applies after its integer sum y (method.md section 1) is

    f(y) = ((alpha * y + b) - mean) * (gamma / sqrt(var + eps)) + beta,   bit = f(y) >= 0

evaluated in float32 in that order (alpha = scale or 1, b = bias or 0). Every float32 operation
rounds monotonically, so f is monotone in y: non-decreasing when gamma * alpha > 0, non-increasing
when gamma * alpha < 0, constant when either is 0. Hence, over the integers y in [-n, n],

    bit = (y >= T)   (GE, gamma * alpha >= 0)     or     bit = (y <= T)   (LE, gamma * alpha < 0)

with T the first (last) integer where f(y) >= 0, found by binary search on f itself. The rule is
exact for the float32 reference :func:`bn_sign_reference` at every reachable y, including ties;
constant channels get T = -n - 1 (always 1) or T = n + 1 (always 0) with GE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GE = 1
LE = -1


@dataclass(frozen=True)
class Thresholds:
    """Per-channel integer thresholds: bit_j = y_j >= T_j when direction_j == GE, else y_j <= T_j."""

    t: np.ndarray  # int64 (Cout,)
    direction: np.ndarray  # int8 (Cout,), GE = +1 or LE = -1

    def apply(self, y: np.ndarray) -> np.ndarray:
        """Bits from integer sums y (..., Cout)."""
        y = np.asarray(y, dtype=np.int64)
        ge = y >= self.t
        le = y <= self.t
        return np.where(self.direction == GE, ge, le).astype(np.uint8)

    @staticmethod
    def sign(cout: int) -> Thresholds:
        """Plain sign with sign(0) = +1: bit = y >= 0."""
        return Thresholds(np.zeros(cout, dtype=np.int64), np.full(cout, GE, dtype=np.int8))


def _params(cout: int, scale, bias, gamma, beta, mean, var) -> list[np.ndarray]:
    def arr(x, default: float) -> np.ndarray:
        if x is None:
            return np.full(cout, default, dtype=np.float32)
        a = np.asarray(x, dtype=np.float32).reshape(-1)
        if a.shape[0] != cout:
            raise ValueError(f"parameter of length {a.shape[0]}, expected {cout}")
        return a

    return [
        arr(scale, 1.0),
        arr(bias, 0.0),
        arr(gamma, 1.0),
        arr(beta, 0.0),
        arr(mean, 0.0),
        arr(var, 1.0),
    ]


def bn_sign_reference(
    y: np.ndarray,
    *,
    scale=None,
    bias=None,
    gamma=None,
    beta=None,
    mean=None,
    var=None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Float32 reference: bit = ((alpha*y + b - mean) * (gamma / sqrt(var + eps)) + beta) >= 0.

    ``y`` has shape (..., Cout); every parameter is None (identity) or of length Cout.
    """
    y = np.asarray(y)
    cout = y.shape[-1]
    alpha, b, g, bt, mu, v = _params(cout, scale, bias, gamma, beta, mean, var)
    inv = g / np.sqrt(v + np.float32(eps), dtype=np.float32)
    z = y.astype(np.float32) * alpha + b
    out = (z - mu) * inv + bt
    return (out >= np.float32(0)).astype(np.uint8)


def fold_bn_sign(
    n: int,
    *,
    scale=None,
    bias=None,
    gamma=None,
    beta=None,
    mean=None,
    var=None,
    eps: float = 1e-5,
    cout: int | None = None,
) -> Thresholds:
    """Integer thresholds equal to :func:`bn_sign_reference` for every integer y in [-n, n]."""
    if cout is None:
        for p in (scale, bias, gamma, beta, mean, var):
            if p is not None:
                cout = int(np.asarray(p).reshape(-1).shape[0])
                break
        else:
            raise ValueError("cout is needed when no parameter is given")
    alpha, b, g, bt, mu, v = _params(cout, scale, bias, gamma, beta, mean, var)
    ys = np.arange(-n, n + 1, dtype=np.int64)
    t = np.zeros(cout, dtype=np.int64)
    direction = np.full(cout, GE, dtype=np.int8)
    for j in range(cout):
        params = dict(
            scale=alpha[j : j + 1],
            bias=b[j : j + 1],
            gamma=g[j : j + 1],
            beta=bt[j : j + 1],
            mean=mu[j : j + 1],
            var=v[j : j + 1],
            eps=eps,
        )

        def f(idx: int, params=params) -> bool:
            return bool(bn_sign_reference(ys[idx : idx + 1, None], **params)[0, 0])

        slope = float(alpha[j]) * float(g[j])
        if slope == 0.0 or not np.isfinite(slope):
            t[j] = -n - 1 if f(0) else n + 1
            continue
        if slope > 0:  # f non-decreasing: first index where f is 1
            lo, hi = 0, len(ys)
            while lo < hi:
                mid = (lo + hi) // 2
                if f(mid):
                    hi = mid
                else:
                    lo = mid + 1
            t[j] = ys[lo] if lo < len(ys) else n + 1
        else:  # f non-increasing: last index where f is 1
            direction[j] = LE
            lo, hi = -1, len(ys) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if f(mid):
                    lo = mid
                else:
                    hi = mid - 1
            t[j] = ys[lo] if lo >= 0 else -n - 1
    return Thresholds(t, direction)
