"""The full-precision convs inside whole passes, torch's vs mstc.engine.floatconv's.

Each configuration runs in its own process, ``Runtime.float_convs`` off and on alternating
(``--rounds`` pairs): in one process the two would share glibc's heap, and what torch's convs
cost in a pass depends on it (their outputs are fresh allocations whose pages fault again when
glibc has handed them back). Prints, per run, the thread CPU time of the conv nodes summed over a
pass (a conv whose readers only binarise it: conv and packing, ``Runtime._stem_bits``) and of the
whole pass (min / median), and which convs ran in floatconv (as packed bits or floats). The logits of the
two settings are checked bit-identical in every "on" run.

    .venv/bin/python benchmarks/float_convs.py
    .venv/bin/python benchmarks/float_convs.py --models resnet20 --batches 32 --rounds 3

``--mallopt`` raises glibc's mmap and trim thresholds in the workers first (a diagnosis of why
torch's convs cost more in a pass: their outputs' pages fault again; not something the library
does to its host process). ``--kernels`` instead times, alone and alternating, a stem conv whose output only gets binarised:
torch's conv + ``packed_input``, floatconv's float kernel + ``packed_input``, and
``FloatConv.packed_bits`` (one kernel, no float output), min / median ms.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import torch

TRAINED = "results/models/vgg_small_w0.25_fmnist_lam1e-4_k4.mstc"


def one(spec: str, backend: str, batch: int, on: bool, passes: int) -> str:
    import mstc
    import mstc.engine.runtime as runtime
    from mstc.models import create_model

    torch.set_num_threads(1)
    if spec.endswith(".mstc"):
        cm = mstc.load(spec)
    else:
        torch.manual_seed(0)
        cm = mstc.compress(create_model(spec).eval(), complement=True)
    x = np.random.default_rng(0).standard_normal((batch, *cm.input_shape)).astype(np.float32)
    rt = runtime.Runtime(cm, backend, threads=1)
    rt.float_convs = on
    spent: dict[str, list[float]] = defaultdict(list)
    depth = [0]  # _stem_bits may call _conv2d: time the outer call only

    def timer(method):
        def timed(self, node, *args):
            depth[0] += 1
            t = time.thread_time()
            try:
                return method(self, node, *args)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[node.name].append(time.thread_time() - t)

        return timed

    # a conv whose readers only binarise it runs in _stem_bits (conv + packing)
    runtime.Runtime._stem_bits = timer(runtime.Runtime._stem_bits)
    runtime.Runtime._conv2d = timer(runtime.Runtime._conv2d)
    first = rt.run(x)
    for _ in range(2):
        rt.run(x)
    if on:
        ref = runtime.Runtime(cm, backend, threads=1)
        ref.float_convs = False
        assert np.array_equal(first.view(np.uint32), ref.run(x).view(np.uint32))
    spent.clear()
    ts = []
    for _ in range(passes):
        t = time.thread_time()
        rt.run(x)
        ts.append(time.thread_time() - t)
    convs = [sum(v[i] for v in spent.values()) for i in range(passes)]
    used = sorted(
        f"{k[1]} (packed bits)" if k[0] == "bits" else k[0]
        for k, p in rt._float_conv_plans.items()
        if p is not None
    )
    return (
        f"{spec} b{batch} {backend} float_convs {'on ' if on else 'off'}: "
        f"convs min {min(convs) * 1e3:.3f} med {np.median(convs) * 1e3:.3f} ms | "
        f"pass min {min(ts) * 1e3:.2f} med {np.median(ts) * 1e3:.2f} ms | floatconv: {used}"
    )


def kernels(n: int = 30) -> None:
    import torch.nn.functional as F

    from mstc.engine.binarize import packed_input
    from mstc.engine.floatconv import FloatConv, rule_compare, torch_order
    from mstc.engine.fold import GE

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = torch.randn(32, 3, 32, 32)
    w = torch.randn(16, 3, 3, 3)
    alone = []
    with torch.no_grad():
        for _ in range(n + 1):
            t = time.thread_time()
            F.conv2d(x, w, None, 1, 1)
            alone.append(time.thread_time() - t)
    alone = alone[1:]
    print(
        f"resnet20 stem alone, torch F.conv2d 32x3x32x32 -> 16: "
        f"{min(alone) * 1e3:.3f} / {np.median(alone) * 1e3:.3f} ms"
    )
    for shape, cout in (((32, 1, 28, 28), 32), ((32, 3, 32, 32), 128), ((1, 1, 28, 28), 32)):
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal((cout, shape[1], 3, 3)).astype(np.float32)
        conv = FloatConv(w, (1, 1), (1, 1))
        order = torch_order(conv, shape)
        rule = (np.full(cout, GE, np.int8), rng.standard_normal(cout).astype(np.float32))
        compare = rule_compare(rule)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)

        def torch_then_pack(xt=xt, wt=wt, rule=rule):
            return packed_input(F.conv2d(xt, wt, None, 1, 1).numpy(), (1, 1), 1, rule)

        def float_then_pack(conv=conv, x=x, order=order, rule=rule):
            return packed_input(conv(x, order), (1, 1), 1, rule)

        def bits(conv=conv, x=x, order=order, compare=compare):
            return conv.packed_bits(x, order, compare, (1, 1))

        runs = {
            "torch conv + packed_input": torch_then_pack,
            "floatconv + packed_input": float_then_pack,
            "packed_bits": bits,
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.no_grad():
            for f in runs.values():
                f()
            for _ in range(n):
                for k, f in runs.items():
                    t = time.thread_time()
                    f()
                    times[k].append(time.thread_time() - t)
        cells = ", ".join(
            f"{k} {min(v) * 1e3:.3f} / {np.median(v) * 1e3:.3f}" for k, v in times.items()
        )
        print(f"{shape} -> {cout} ({order} order): {cells} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=f"resnet20,vgg_small,{TRAINED}")
    p.add_argument("--backends", default="packed,mst")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--kernels", action="store_true", help="the stem kernels alone")
    p.add_argument(
        "--mallopt",
        action="store_true",
        help="diagnosis: raise glibc's mmap and trim thresholds in the worker processes",
    )
    p.add_argument(
        "--one", nargs=4, metavar=("SPEC", "BACKEND", "BATCH", "ON"), help=argparse.SUPPRESS
    )
    a = p.parse_args()
    if a.kernels:
        kernels()
        return
    if a.one:
        if a.mallopt:  # large blocks then stay in the heap between passes: no fresh pages
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 512 << 20)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        spec, backend, batch, on = a.one
        b = int(batch)
        print(one(spec, backend, b, on == "1", 300 if b == 1 else 20), flush=True)
        return
    for spec in a.models.split(","):
        for batch in a.batches.split(","):
            for backend in a.backends.split(","):
                for _ in range(a.rounds):
                    for on in ("0", "1"):
                        cmd = [sys.executable, __file__, "--one", spec, backend, batch, on]
                        cmd += ["--mallopt"] if a.mallopt else []
                        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
