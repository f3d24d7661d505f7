"""Whole passes of several engine backends, interleaved in one process (CPU time of this thread).

On a shared, noisy machine two runs of the same code can differ by 20-60%; alternating the
backends pass by pass in one process puts them under the same conditions. Complements
``mstc bench`` (one worker process per backend, per-layer times):

    .venv/bin/python benchmarks/interleave.py results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc --batch 1
    .venv/bin/python benchmarks/interleave.py resnet20 --batch 32 --cluster --passes 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mstc
from mstc.bench import cluster_weights
from mstc.engine import Runtime
from mstc.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="registered model name (random weights) or a .mstc file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default="packed,mst")
    p.add_argument("--passes", type=int, default=400)
    p.add_argument("--cluster", action="store_true", help="4 centres, 2%% flips per layer")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.model.endswith(".mstc"):
        cm = mstc.load(args.model)
    else:
        torch.manual_seed(0)
        model = create_model(args.model).eval()
        if args.cluster:
            cluster_weights(model, centres=4, flip=0.02, seed=0)
        cm = mstc.compress(model, complement=True)
    x = np.random.default_rng(0).standard_normal((args.batch, *cm.input_shape))
    x = x.astype(np.float32)
    runtimes = {b: Runtime(cm, b, threads=1) for b in args.backends.split(",")}
    logits = {b: rt.run(x) for b, rt in runtimes.items()}  # plans and autotunes happen here
    first = next(iter(logits.values()))
    for b, out in logits.items():
        if out.view(np.uint32).tolist() != first.view(np.uint32).tolist():
            raise SystemExit(f"backend {b}: logits differ")
    times: dict[str, list[float]] = {b: [] for b in runtimes}
    for _ in range(args.passes):
        for b, rt in runtimes.items():
            t = time.thread_time()
            rt.run(x)
            times[b].append(time.thread_time() - t)
    print(f"{args.model} batch {args.batch}, {args.passes} interleaved passes (thread CPU time)")
    for b, ts in times.items():
        print(f"  {b:14s} min {min(ts) * 1e3:8.3f} ms  median {np.median(ts) * 1e3:8.3f} ms")
    names = list(times)
    for b in names[1:]:
        r = np.median(times[names[0]]) / np.median(times[b])
        print(f"  {names[0]}/{b}: {r:.2f}x (medians)")


if __name__ == "__main__":
    main()
