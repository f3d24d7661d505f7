"""The bit-sliced kernel on small grids (batch 1): per layer, the word kernels against the tile
kernel, and the cost of the taps alone.

For each fused-able layer of a model at the given batch, times ``run_layer`` with the vector word
kernel (``sliced._vwords``, four words per register, grids of <= ``VECTOR_WORDS`` words) and with
the tile kernel, the scalar word kernel (``sliced._words``, its reference) on the same
arguments, all exact; then a loop that only accumulates the layer's taps (the same Harley-Seal
adders, no tree walk, no emission) over the grid's words one at a time, to show how much of the
scalar kernel the taps are. Minimum of many calls, thread CPU time:

    .venv/bin/python benchmarks/sliced_small.py results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

import mstc
import mstc.engine.sliced as sliced
from mstc.engine.sliced import (
    SlicedLayer,
    _csa,
    _match4,
    grid_words,
    pack_planes,
    plane_geometry,
    run_layer,
    sliceable,
)


@njit(cache=True)
def _taps_only(XT, ti, tflip, ptr, reps):  # pragma: no cover - numba
    """Harley-Seal accumulation of every node's taps over one word of tap values XT."""
    acc = np.uint64(0)
    for _ in range(reps):
        for e in range(ptr.shape[0] - 1):
            q = np.uint64(ptr[e])
            q1 = np.uint64(ptr[e + 1])
            o1 = o2 = o4 = np.uint64(0)
            while q + np.uint64(4) <= q1:
                a0, a1, a2, a3 = _match4(XT, ti, tflip, q)
                tA, o1 = _csa(o1, a0, a1)
                tB, o1 = _csa(o1, a2, a3)
                c4, o2 = _csa(o2, tA, tB)
                o4 ^= c4
                q += np.uint64(4)
            acc ^= o1 ^ o2 ^ o4
    return acc


def _min_time(n: int, f, *args, **kwargs) -> float:
    f(*args, **kwargs)
    best = float("inf")
    for _ in range(n):
        t = time.thread_time()
        f(*args, **kwargs)
        best = min(best, time.thread_time() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .mstc file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args()
    cm = mstc.load(args.model)
    shapes = {}
    rt = mstc.engine.Runtime(cm, "packed", threads=1)
    conv2d = rt.backend.conv2d

    def record(layer, x):
        shapes[layer.name] = tuple(x.shape)
        return conv2d(layer, x)

    rt.backend.conv2d = record
    rt.run(np.zeros((args.batch, *cm.input_shape), np.float32))
    rng = np.random.default_rng(0)
    print(f"{args.model} batch {args.batch}: us per call (min of {args.calls})")
    print(f"{'layer':14s} {'words':>5s} {'taps':>6s} {'vector words':>12s} {'tile kernel':>12s}"
          f" {'scalar words':>12s} {'taps only':>10s}")  # fmt: skip
    for name, shape in shapes.items():
        layer = cm.layers[name]
        if not sliceable(layer):
            continue
        st = SlicedLayer(layer)
        g = plane_geometry(layer, *shape[:1], *shape[2:])
        planes = pack_planes(rng.standard_normal(shape).astype(np.float32), g)
        emit = st.emit_rule(np.full(layer.cout, 2, np.int8), np.full(layer.cout, layer.n // 2))
        ow = grid_words(g.n, g.hp, g.wp)
        t = {}
        for kernel, vector in (("word", 10**9), ("tile", 0)):
            sliced.VECTOR_WORDS, keep = vector, sliced.VECTOR_WORDS
            try:
                t[kernel] = _min_time(
                    args.calls, run_layer, st, planes, emit=emit, want_planes=False
                )
            finally:
                sliced.VECTOR_WORDS = keep
        _, kargs = sliced._layer_kernel(st, g, emit, 1)
        OB = np.zeros((layer.cout, ow + 1), np.uint64)
        VS = np.zeros((0, st.planes, ow), np.uint64)
        t["scalar"] = _min_time(args.calls, sliced._words, planes.bits, *kargs, OB, VS)
        XT = rng.integers(0, 2**63, layer.n, dtype=np.uint64)
        ti = st.tap_idx.astype(np.uint64)
        taps = _min_time(args.calls, _taps_only, XT, ti, st.tap_flip, st.ptr, ow)
        print(f"{name:14s} {ow:5d} {int(st.ptr[-1]):6d} {t['word'] * 1e6:12.1f}"
              f" {t['tile'] * 1e6:12.1f} {t['scalar'] * 1e6:12.1f} {taps * 1e6:10.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
