"""The mst engine's fused layers one by one, alternating in one process (min / median thread
CPU time, us): what a pass calls (``MSTBackend.conv2d_fused``: the kernel, the emission of the next
layer's bit planes, and whatever preparation each call makes), the kernel alone
(``run_layer``), and the emission alone (``emit_planes``, 2x2 max-pooled where the layer is
followed by a pool).

Only entry points that exist since commit 11db55a are used, so the same script times an older
checkout too (its ``mstc`` first on ``PYTHONPATH``); alternate the two runs on this noisy
machine:

    .venv/bin/python benchmarks/fused_layers.py results/models/vgg_small_w0.25_fmnist_lam3e-4_k4.mstc --batch 1
    git worktree add /tmp/old 11db55a && PYTHONPATH=/tmp/old .venv/bin/python benchmarks/fused_layers.py ...
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from chain_end import fused_runtime  # the script's directory is on sys.path

from mstc.engine.sliced import emit_planes, output_hw, plane_geometry, run_layer


def _alternate(fs: dict, reps: int) -> dict[str, tuple[float, float]]:
    times: dict[str, list[int]] = {k: [] for k in fs}
    for _ in range(reps):
        for k, f in fs.items():
            t0 = time.thread_time_ns()
            f()
            times[k].append(time.thread_time_ns() - t0)
    return {k: (min(v) / 1e3, float(np.median(v)) / 1e3) for k, v in times.items()}


def _layer_times(be, fused, call: tuple, reps: int) -> tuple[str, dict]:
    layer, xin, rule, pool, consumer = call
    planes = be._as_planes(layer, xin)
    fused(layer, planes, rule, pool, consumer)  # the emit rule and any preparation
    st = be._sliced(layer)
    emit = be._emit_cache[layer.name]
    g = planes.geometry
    OB, _ = run_layer(st, planes, emit=emit, want_planes=False)
    ho, wo = output_hw(layer, g)
    nxt = plane_geometry(consumer, g.n, *((ho // 2, wo // 2) if pool else (ho, wo)))
    res = _alternate(
        {
            "conv2d_fused": lambda: fused(layer, planes, rule, pool, consumer),
            "run_layer": lambda: run_layer(st, planes, emit=emit, want_planes=False),
            "emit_planes": lambda: emit_planes(st, OB, g, pool, nxt),
        },
        reps,
    )
    return f"{layer.name} (grid {g.n}x{g.hp}x{g.wp}, {'pooled' if pool else 'not pooled'})", res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .mstc file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=300)
    args = p.parse_args()
    rt, x = fused_runtime(args.model, args.batch)  # the fused plan, whatever the autotune chose
    be = rt.backend
    calls: dict[str, tuple] = {}
    fused = be.conv2d_fused

    def capture(layer, xin, rule, pool, consumer, *, want_sums=False):
        calls[layer.name] = (layer, xin, rule, pool, consumer)
        return fused(layer, xin, rule, pool, consumer, want_sums=want_sums)

    be.conv2d_fused = capture
    rt.run(x)
    be.conv2d_fused = fused
    total = {"conv2d_fused": 0.0, "run_layer": 0.0, "emit_planes": 0.0}
    for call in calls.values():
        title, res = _layer_times(be, fused, call, args.reps)
        print(title)
        for k, (lo, med) in res.items():
            print(f"  {k:<14} {lo:8.1f} / {med:8.1f} us")
            total[k] += lo
    print("sum of minima: " + ", ".join(f"{k} {v:.1f} us" for k, v in total.items()))


if __name__ == "__main__":
    main()
