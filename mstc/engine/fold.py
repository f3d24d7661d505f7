"""Exact BN + sign folding: the next binary layer's input bit as an integer threshold on u.

A binary conv followed by BatchNorm (and optionally a max pool) and the next binary conv feeds the
next conv the bit ``f(y) >= 0`` where f is the float32 chain scale -> bias -> BatchNorm that the
runtime applies to the integer sum y = 2u - n (u = number of agreeing taps, 0..n). There are only
n + 1 reachable sums, so the rule is found by *evaluating f on all of them with the runtime's own
torch calls*; it is exact by construction (no reasoning about float rounding is needed). When the
bits are monotone in u -- they are whenever every float op is monotone, which rounding preserves --
the rule is ``u >= t`` (non-decreasing) or ``u <= t`` (non-increasing), or a constant. Anything else
(NaN, infinities, non-monotone bits) is reported as not foldable and the runtime does not fuse.

The same holds for a float input (:func:`float_threshold_rule`): a BatchNorm between a float op
and a binary conv is monotone per channel, so sign(BN(x)) is a threshold on x; the runtime then
skips the BN and packs x with the rule (:class:`RuledInput`).

A 2x2 max pool between them needs no rule of its own: sign(max_p v_p) = OR_p sign(v_p) with the
convention sign(0) = +1 (bit = v >= 0), for any finite v.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mstc.engine.sliced import CONST0, CONST1, GE, LE, float_rule_bits


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


# ------------------------------------------------------------------ rules on float inputs


@dataclass(frozen=True)
class RuledInput:
    """A float NCHW activation that the next binary layer binarises by a per-channel rule instead
    of sign(): bit = sign(f_c(x)) for a monotone f_c the runtime folded away (a BatchNorm).

    ``mode``/``t`` as :func:`threshold_rule`, on floats: GE bit = x >= t, LE bit = x <= t, CONST1
    every non-NaN x, CONST0 none; NaN always gives 0, like f(NaN) = NaN >= 0."""

    x: np.ndarray  # float32 (N, C, H, W)
    mode: np.ndarray  # int8 (C,)
    t: np.ndarray  # float32 (C,)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)


@dataclass(frozen=True)
class PackedBits:
    """A binary conv's input already binarised and packed, in the layout of
    :func:`mstc.engine.binarize.packed_input`: ``words`` uint64 [N, H + 2 ph, W + 2 pw, ceil(C / 64)],
    pad bits 0, for a conv with ``padding`` (ph, pw). The runtime makes it where a float conv's
    only readers are binary convs through one folded BatchNorm
    (:meth:`mstc.engine.floatconv.FloatConv.packed_bits`: the float output never exists)."""

    words: np.ndarray
    shape: tuple[int, int, int, int]  # (N, C, H, W) of the binary activation
    padding: tuple[int, int]


def _key(z: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the order of the values (-0.0 just below +0.0)."""
    i = np.asarray(z, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i >= 0, i, -(i & 0x7FFFFFFF) - 1)


def _unkey(k: np.ndarray) -> np.ndarray:
    i = np.where(k >= 0, k, (-(k + 1)) | 0x80000000).astype(np.uint32)
    return i.view(np.float32)


def float_threshold_rule(f, cout: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The rule (mode, t) with bit = (f_c(x) >= 0) for every float32 x, or None.

    ``f`` maps float32 (m, cout) -> f_c of each column (the runtime evaluates its own torch
    BatchNorm). For monotone f_c (a BatchNorm is: x * alpha + beta, rounded, with or without fma)
    the set {x : f_c(x) >= 0} is a half-line; its end is found by bisection over the ordered
    float32 values from -max to max (~2^32 of them; 34 halvings), then the rule is checked
    against f at the infinities, next to the threshold and on random values; any disagreement
    (a non-monotone f) gives None."""
    fmax = np.float32(np.finfo(np.float32).max)

    def g(z: np.ndarray) -> np.ndarray:
        v = np.asarray(f(np.asarray(z, dtype=np.float32)), dtype=np.float32)
        return v >= 0

    ends = g(np.stack([np.full(cout, -fmax), np.full(cout, fmax)]))
    glo, ghi = ends[0], ends[1]
    lo = np.full(cout, _key(-fmax), np.int64)
    hi = np.full(cout, _key(fmax), np.int64)
    for _ in range(34):
        mid = (lo + hi) // 2
        gm = g(_unkey(mid)[None, :])[0]
        towards_hi = gm == ghi
        hi = np.where(towards_hi, mid, hi)
        lo = np.where(towards_hi, lo, mid)
    mode = np.where(glo == ghi, np.where(ghi, CONST1, CONST0), np.where(ghi, GE, LE))
    mode = mode.astype(np.int8)
    t = np.where(mode == GE, _unkey(hi), np.where(mode == LE, _unkey(lo), 0)).astype(np.float32)
    # check: infinities, the values around the threshold, zeros, random values of many scales
    rng = np.random.default_rng(0)
    near = _unkey(_key(t)[None, :] + np.arange(-3, 4)[:, None])
    probe = np.concatenate(
        [
            np.full((1, cout), np.inf, np.float32),
            np.full((1, cout), -np.inf, np.float32),
            np.zeros((1, cout), np.float32),
            np.full((1, cout), -0.0, np.float32),
            near.astype(np.float32),
            (rng.standard_normal((64, cout)) * 10.0 ** rng.integers(-3, 4, (64, 1))).astype(
                np.float32
            ),
        ]
    )
    want = g(probe)
    got = float_rule_bits(probe.T[None, :, :], mode, t)[0].T
    return (mode, t) if np.array_equal(want, got) else None
