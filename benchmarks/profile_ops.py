"""Where an engine spends its time: CPU time per runtime op and per engine kernel entry point.

Wraps the runtime's float ops (by op type), the epilogue pass and the engine entry points
(``xnor_conv``, ``packed_input``, ``run_layer``, ``layer_sums``, ``pack_planes``,
``emit_planes``, the delta kernel) with thread-CPU-time counters and runs whole passes after two
warm-up passes. Nested entries overlap (``binary sums`` contains the kernels of the layer).

    .venv/bin/python benchmarks/profile_ops.py resnet20 --batch 32 --backend packed
    .venv/bin/python benchmarks/profile_ops.py results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc --batch 32 --backend mst
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import torch

import mstc
import mstc.engine.mst_kernel as mst_kernel
import mstc.engine.packed as packed
from mstc.bench import cluster_weights
from mstc.engine import Runtime
from mstc.models import create_model


def _load(spec: str, cluster: bool):
    if spec.endswith(".mstc"):
        return mstc.load(spec)
    torch.manual_seed(0)
    model = create_model(spec).eval()
    if cluster:  # the simulated regularized weights of BENCHMARKS.md ("clustered")
        cluster_weights(model, centres=4, flip=0.02, seed=0)
    return mstc.compress(model, complement=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="registered model name or a .mstc file")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--backend", default="mst")
    p.add_argument("--passes", type=int, default=10)
    p.add_argument("--plan", choices=["fused", "unfused"], default=None)
    p.add_argument("--cluster", action="store_true", help="4 centres, 2%% flips per layer")
    args = p.parse_args()
    torch.set_num_threads(1)
    cm = _load(args.model, args.cluster)
    rt = Runtime(cm, args.backend, threads=1)
    x = np.random.default_rng(0).standard_normal((args.batch, *cm.input_shape)).astype(np.float32)
    for _ in range(2):
        rt.run(x)
    if args.plan:  # every fused link, or none
        rt.plans[tuple(x.shape)] = frozenset(rt.fusions) if args.plan == "fused" else frozenset()
    spent: collections.Counter[str] = collections.Counter()

    def wrap(obj, attr, key=None):
        if not hasattr(obj, attr):  # older code: an entry point that does not exist there
            return
        orig = getattr(obj, attr)

        def timed(*a, **k):
            t0 = time.thread_time()
            try:
                return orig(*a, **k)
            finally:
                name = key(a) if callable(key) else (key or attr)
                spent[name] += time.thread_time() - t0

        setattr(obj, attr, timed)

    wrap(rt, "_apply", lambda a: f"torch {a[0].op}")
    wrap(rt, "_run_epilogue", "epilogue pass")
    wrap(rt, "_binary_sums", "binary sums (incl. kernels)")
    for mod in (packed, mst_kernel):
        for name in ("xnor_conv", "packed_input"):
            wrap(mod, name, name)
    for name in (
        "run_layer",
        "layer_sums",
        "unpack_sums",
        "pack_planes",
        "emit_planes",
        "signed_planes",
        "rule_planes",
    ):
        wrap(mst_kernel, name)
    wrap(rt.backend, "_delta", "delta kernel")
    wrap(rt.backend, "conv2d_fused", "fused layers (incl. kernels)")
    wrap(rt.backend, "conv2d_epilogue", "binary conv + epilogue in XNOR (incl. kernels)")
    passes = []
    for _ in range(args.passes):
        t0 = time.thread_time()
        rt.run(x)
        passes.append(time.thread_time() - t0)
    plans = {k: sorted(v) for k, v in getattr(rt, "plans", {}).items()} or "n/a"
    print(f"{args.model} batch {args.batch} backend {args.backend} plan {plans}")
    for name, t in spent.most_common():
        print(f"  {name:<30} {t / args.passes * 1e3:8.3f} ms")
    print(f"  {'whole pass (median)':<30} {np.median(passes) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
