"""Exact BN + sign folding: the next binary layer's input bit as an integer threshold on u.

A binary conv followed by BatchNorm (and optionally a max pool) and the next binary conv feeds the
next conv the bit ``f(y) >= 0`` where f is the float32 chain scale -> bias -> BatchNorm that the
runtime applies to the integer sum y = 2u - n (u = number of agreeing taps, 0..n). There are only
n + 1 reachable sums, so the rule is found by *evaluating f on all of them with the runtime's own
torch calls*; it is exact by construction (no reasoning about float rounding is needed). When the
bits are monotone in u -- they are whenever every float op is monotone, which rounding preserves --
the rule is ``u >= t`` (non-decreasing) or ``u <= t`` (non-increasing), or a constant. Anything else
(NaN, infinities, non-monotone bits) is reported as not foldable and the runtime does not fuse.

A 2x2 max pool between them needs no rule of its own: sign(max_p v_p) = OR_p sign(v_p) with the
convention sign(0) = +1 (bit = v >= 0), for any finite v.
"""

from __future__ import annotations

import numpy as np
import torch

from mstc.engine.sliced import CONST0, CONST1, GE, LE


def threshold_rule(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """From f evaluated at u = 0..n (tensor (Cout, n+1)), the per-channel rule (mode, t) with
    mode in {CONST0, CONST1, GE (bit = u >= t), LE (bit = u <= t)}; None if not foldable."""
    v = values.detach().cpu().numpy()
    if not np.isfinite(v).all():
        return None
    bits = (v >= 0).astype(np.int8)
    cout, m = bits.shape
    mode = np.empty(cout, dtype=np.int8)
    t = np.zeros(cout, dtype=np.int64)
    step = np.diff(bits, axis=1)
    for j in range(cout):
        b = bits[j]
        if b.all():
            mode[j] = CONST1
        elif not b.any():
            mode[j] = CONST0
        elif (step[j] >= 0).all():
            mode[j] = GE
            t[j] = int(np.argmax(b))  # first 1
        elif (step[j] <= 0).all():
            mode[j] = LE
            t[j] = m - 1 - int(np.argmax(b[::-1]))  # last 1
        else:
            return None
    return mode, t


def apply_rule(rule: tuple[np.ndarray, np.ndarray], u: np.ndarray) -> np.ndarray:
    """Bits (uint8) of a rule at agreeing-tap counts u (..., Cout); the plain oracle of the rule."""
    mode, t = rule
    u = np.asarray(u, dtype=np.int64)
    out = np.where(mode == GE, u >= t, u <= t)
    out = np.where(mode == CONST1, True, np.where(mode == CONST0, False, out))
    return out.astype(np.uint8)
