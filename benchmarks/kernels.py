"""Engine kernels on fixed shapes, and page faults per runtime pass: one line per measurement.

Only entry points that exist since commit 3431940 are used, so the same script times an older
checkout too (its ``mstc`` first on ``PYTHONPATH``), for side-by-side comparisons on a noisy
machine (alternate the two runs):

    .venv/bin/python benchmarks/kernels.py
    git worktree add /tmp/old 3431940 && PYTHONPATH=/tmp/old .venv/bin/python benchmarks/kernels.py

Times are the minimum over repeated calls of thread CPU time. ``--faults BACKEND`` instead counts
the minor page faults of a resnet20 pass at batch 32 in a process that has run nothing else
(how many a pass takes depends on what the process allocated and freed before).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

import mstc
from mstc.engine import Runtime
from mstc.engine.binarize import packed_input
from mstc.engine.epilogue import epilogue
from mstc.engine.packed import xnor_conv
from mstc.engine.sliced import SlicedLayer, emit_planes, pack_planes, plane_geometry, run_layer
from mstc.models import create_model

TRAINED = "results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc"


def _ms(f, n: int = 30) -> float:
    f()
    best = float("inf")
    for _ in range(n):
        t = time.thread_time()
        f()
        best = min(best, time.thread_time() - t)
    return best * 1e3


def xnor_paths() -> None:
    """The direct 3-word XNOR path against the zero-padded 4-word one (what xnor_conv ran
    before 71b9625) on resnet20's first-stage shape, alternating in one process."""
    rng = np.random.default_rng(0)
    shape, cout, n = (32, 16, 32, 32), 16, 16 * 9
    xp = packed_input(rng.standard_normal(shape).astype(np.float32), (1, 1), 1)
    w3 = rng.integers(0, 2**63, (3, cout), dtype=np.uint64)
    w4 = np.concatenate([w3, np.zeros((1, cout), np.uint64)])
    out3, out4 = (np.empty((32, cout, 1024), np.int32) for _ in range(2))
    geom = (3, 3, 1, 1, 1, 1)
    for _ in range(3):
        t3 = _ms(lambda: xnor_conv(xp, w3, n, geom, 32, 32, out3, 1))
        t4 = _ms(lambda: xnor_conv(xp, w4, n, geom, 32, 32, out4, 1))
        assert np.array_equal(out3, out4)
        print(f"xnor_conv {shape} -> {cout}: 3 words {t3:.3f} ms, zero-padded to 4 {t4:.3f} ms")


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"mstc from {mstc.__file__}")
    for shape, couts in (((32, 16, 32, 32), (1, 16)), ((32, 128, 7, 7), (128,))):
        x = rng.standard_normal(shape).astype(np.float32)
        xp = packed_input(x, (1, 1), 1)
        n = shape[1] * 9
        for cout in couts:
            wT = rng.integers(0, 2**63, ((n + 63) // 64, cout), dtype=np.uint64)
            out = np.empty((shape[0], cout, shape[2] * shape[3]), np.int32)
            geom = (3, 3, 1, 1, 1, 1)
            t = _ms(lambda: xnor_conv(xp, wT, n, geom, shape[2], shape[3], out, 1))  # noqa: B023
            print(f"xnor_conv {shape} -> {cout} channels: {t:.3f} ms")
    for shape in ((32, 64, 8, 8), (32, 16, 32, 32)):
        x = rng.standard_normal(shape).astype(np.float32)
        print(f"packed_input {shape}: {_ms(lambda: packed_input(x, (1, 1), 1)):.3f} ms")  # noqa: B023
    N, C, H, W = shape = (32, 64, 8, 8)
    n = C * 9
    sums = (2 * rng.integers(0, n + 1, shape) - n).astype(np.int32)
    table = np.sort(rng.standard_normal((C, n + 1)).astype(np.float32), axis=1)
    shortcut = rng.standard_normal(shape).astype(np.float32)
    alpha = rng.random(C).astype(np.float32)
    coef = rng.random((4, C)).astype(np.float32)
    t = _ms(lambda: epilogue(sums, table, n, shortcut, alpha, 1, affine=(coef, True)))
    print(f"epilogue closed form + add + PReLU {shape}: {t:.3f} ms")

    cm = mstc.load(TRAINED)
    layer = cm.layers["features.0"]
    st = SlicedLayer(layer)
    g = plane_geometry(layer, 32, 28, 28)
    x = rng.standard_normal((32, 32, 28, 28)).astype(np.float32)
    print(f"pack_planes features.0, batch 32: {_ms(lambda: pack_planes(x, g)):.3f} ms")
    planes = pack_planes(x, g)
    emit = st.emit_rule(np.full(layer.cout, 2, np.int8), np.full(layer.cout, layer.n // 2))
    OB, _ = run_layer(st, planes, emit=emit, want_planes=False)
    nxt = plane_geometry(cm.layers["features.3"], 32, 14, 14)
    t = _ms(lambda: emit_planes(st, OB, g, True, nxt))
    print(f"emit_planes with 2x2 pool, features.0, batch 32: {t:.3f} ms")


def faults(backend: str) -> None:
    torch.manual_seed(0)
    cm = mstc.compress(create_model("resnet20").eval(), complement=True)
    x = np.random.default_rng(0).standard_normal((32, *cm.input_shape)).astype(np.float32)
    rt = Runtime(cm, backend, threads=1)
    for _ in range(3):
        rt.run(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        rt.run(x)
    per_pass = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
    print(f"mstc from {mstc.__file__}")
    print(f"resnet20 batch 32, {backend}: {per_pass:.0f} minor page faults per pass")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faults", metavar="BACKEND", help="count page faults of a runtime pass")
    p.add_argument("--xnor-paths", action="store_true", help="3-word vs zero-padded 4-word")
    args = p.parse_args()
    if args.faults:
        faults(args.faults)
    elif args.xnor_paths:
        xnor_paths()
    else:
        main()
