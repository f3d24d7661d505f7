"""Where the "mst" tree kernel spends its time, per binary layer (BENCHMARKS.md).

Times (CPU time of this thread, min over repetitions) the packed backend and the mst tree kernel
(autotune off) on each binary layer's real input, then the tree kernel with the delta updates
removed and with the XNOR roots removed too; the differences give roots / delta / the rest
(sign + pack of the input, the +-2 int8 planes, the output copy).

    .venv/bin/python benchmarks/bench_mst_phases.py vgg_small --batch 1 --cluster 4 --flip 0.02
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

import mstc
from mstc.bench import load_bench_model
from mstc.engine import get_backend
from mstc.engine.mst_kernel import MSTBackend


def _cpu_ms(f, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.thread_time()
        f()
        best = min(best, time.thread_time() - t)
    return 1e3 * best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--cluster", type=int, default=4)
    p.add_argument("--flip", type=float, default=0.02)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_bench_model(args.model, cluster={"centres": args.cluster, "flip": args.flip})
    cm = mstc.compress(model, complement=True)
    acts: dict[str, np.ndarray] = {}
    for name, m in model.named_modules():
        if name in cm.layers:
            m.register_forward_pre_hook(
                lambda mod, inp, name=name: acts.__setitem__(name, inp[0].numpy().copy())
            )
    with torch.no_grad():
        model(torch.randn(args.batch, *cm.input_shape))
    packed = get_backend("packed")(cm, threads=1)
    full = MSTBackend(cm, threads=1, autotune=False)
    print("| layer (BOP ratio) | batch | packed | mst tree kernel | roots | delta | rest |")
    print("|---|---|---|---|---|---|---|")
    for name, layer in cm.layers.items():
        x = acts[name]
        if layer.kind != "conv2d":
            continue
        sched = full.schedules[name]
        no_delta = copy.copy(sched)
        no_delta.ch_j = sched.ch_j[:0]
        no_delta.ch_ptr = sched.ch_ptr[:1]
        nothing = copy.copy(no_delta)
        nothing.dense = sched.dense[:0]
        nothing.wTd = np.ascontiguousarray(sched.wTd[:, :0])
        kh, kw = layer.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
        n_, _, h, w = x.shape
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        geom = (kh, kw, sh, sw, dh, dw, ph, pw, ho, wo)
        out = np.empty((n_, layer.cout, ho * wo), np.int32)

        def tree(s, out=out, x=x, layer=layer, geom=geom):
            return lambda: full._delta(layer, s, x, geom, out, 1)

        t = {
            "packed": _cpu_ms(lambda x=x, layer=layer: packed.conv2d(layer, x), args.reps),
            "full": _cpu_ms(tree(sched), args.reps),
            "no_delta": _cpu_ms(tree(no_delta), args.reps),
            "nothing": _cpu_ms(tree(nothing), args.reps),
        }
        ratio = layer.dense_xnors / max(layer.xnors, 1)
        print(
            f"| {name} ({ratio:.1f}x) | {args.batch} | {t['packed']:.3f} | {t['full']:.3f} "
            f"| {t['no_delta'] - t['nothing']:.3f} | {t['full'] - t['no_delta']:.3f} "
            f"| {t['nothing']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
