"""Whole forward passes of the engines, min and median thread CPU time: one line per checkout.

Uses only ``mstc.engine.Runtime`` (in mstc since the first session), so the same script times an
older checkout too, for side-by-side comparisons on a noisy machine (alternate the runs):

    .venv/bin/python benchmarks/passes.py
    git worktree add /tmp/old 490f178 && PYTHONPATH=/tmp/old .venv/bin/python benchmarks/passes.py

``--ab FLAG`` instead alternates, in one process, two runtimes of the current code that differ
only in the Runtime flag FLAG, after checking that their logits are identical:
``epilogues_in_xnor`` (``--ab-epilogue``: the XNOR kernel applying Bi-Real epilogues as it
counts, or the sums then the epilogue pass), ``float_convs`` (full-precision convs by
``mstc.engine.floatconv`` into pooled buffers, or torch's), ``prepared_steps`` (compiled steps
with their arguments bound once and Bi-Real runs chained in one call, ``mstc.engine.chain``, or
every step through the general calls).
``--avg-pool`` times torch's ``avg_pool2d`` against ``mstc.engine.floatops.avg_pool2d`` on the
shortcut pools of resnet20 at batch 32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mstc
from mstc.engine import Runtime
from mstc.models import create_model

TRAINED = "results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc"


def _model(name: str):
    if name == "trained":
        return mstc.load(TRAINED)
    if name.endswith(".mstc"):  # any compressed checkpoint
        return mstc.load(name)
    torch.manual_seed(0)
    return mstc.compress(create_model(name).eval(), complement=True)


def _input(cm, batch: int) -> np.ndarray:
    shape = (batch, *cm.input_shape)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _stats(ts: list[float]) -> str:
    return f"min {min(ts) * 1e3:.3f} med {np.median(ts) * 1e3:.3f} ms"


def passes(models, backends, batches, n) -> None:
    out = []
    for name in models:
        cm = _model(name)
        for batch in batches:
            x = _input(cm, batch)
            for be in backends:
                rt = Runtime(cm, be, threads=1)
                for _ in range(3):
                    rt.run(x)
                ts = []
                for _ in range(n if batch == 1 else max(5, n // 10)):
                    t = time.thread_time()
                    rt.run(x)
                    ts.append(time.thread_time() - t)
                out.append(f"{name} b{batch} {be}: {_stats(ts)}")
    print(f"mstc from {mstc.__file__}")
    print("\n".join(out))


def ab_flag(flag: str, models, backends, batches, n) -> None:
    """Alternate, in one process, two runtimes that differ only in the boolean Runtime attribute
    ``flag`` (logits checked identical first)."""
    for name in models:
        cm = _model(name)
        for batch in batches:
            x = _input(cm, batch)
            for be in backends:
                on, off = Runtime(cm, be, threads=1), Runtime(cm, be, threads=1)
                setattr(off, flag, False)
                a, b = on.run(x), off.run(x)
                assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
                ta, tb = [], []
                for _ in range(n if batch == 1 else max(5, n // 10)):
                    for rt, ts in ((on, ta), (off, tb)):
                        t = time.thread_time()
                        rt.run(x)
                        ts.append(time.thread_time() - t)
                print(
                    f"{name} b{batch} {be}: {flag} on {_stats(ta)} | off {_stats(tb)}"
                    f" | off/on {np.median(tb) / np.median(ta):.3f} (median)"
                    f" {min(tb) / min(ta):.3f} (min)"
                )


def avg_pool(n: int) -> None:
    import torch.nn.functional as F

    from mstc.engine.floatops import avg_pool2d

    torch.set_num_threads(1)
    for shape in ((32, 16, 32, 32), (32, 32, 16, 16)):
        x = torch.randn(shape)
        xn = x.numpy()
        out = np.empty((shape[0], shape[1], shape[2] // 2, shape[3] // 2), np.float32)
        for label, f in (
            ("torch", lambda: F.avg_pool2d(x, 2, 2, 0, True, False)),  # noqa: B023
            ("floatops", lambda: avg_pool2d(xn, (2, 2), (2, 2), (0, 0), True, False, out=out)),  # noqa: B023
        ):
            f()
            ts = []
            for _ in range(n):
                t = time.thread_time()
                f()
                ts.append(time.thread_time() - t)
            print(f"avg_pool2d {shape} {label}: {_stats(ts)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", default="resnet20,trained", help='registered names, "trained", .mstc files'
    )
    p.add_argument("--backends", default="packed,mst")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--passes", type=int, default=300, help="at batch 1 (a tenth at larger)")
    p.add_argument("--ab-epilogue", action="store_true", help="--ab epilogues_in_xnor")
    p.add_argument("--ab", metavar="FLAG", help="A/B of a Runtime flag, e.g. float_convs")
    p.add_argument("--avg-pool", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    models, backends = a.models.split(","), a.backends.split(",")
    batches = [int(b) for b in a.batches.split(",")]
    if a.avg_pool:
        avg_pool(a.passes)
    elif a.ab_epilogue or a.ab:
        ab_flag(a.ab or "epilogues_in_xnor", models, backends, batches, a.passes)
    else:
        passes(models, backends, batches, a.passes)
