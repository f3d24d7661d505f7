"""The table-lookup XNOR kernel (``mstc.engine.lut``) against the popcount kernel, side by side
in one process (``mstc.engine.packed.XNOR_KERNEL`` switched between calls; thread CPU time, min /
25th percentile):

- ``--layers``: one binary 3x3 conv (``xnor_layer``: packing included, int32 sums) at the shapes
  of resnet20 (16/32/64 channels on 32/16/8 maps) and vgg_small (128-512 channels, and the
  Fashion-MNIST checkpoints' 28/14/7 maps);
- otherwise whole forward passes of a model's engine (``Runtime.run``), the two kernels in
  alternating passes.

    .venv/bin/python benchmarks/lut.py --layers --batch 32
    .venv/bin/python benchmarks/lut.py resnet20 --batch 32 --backend mst
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch

import mstc
import mstc.engine.packed as pk
from mstc.engine import Runtime
from mstc.models import create_model

SHAPES = [  # (cin, h, cout)
    (16, 32, 16), (32, 16, 32), (64, 8, 64),
    (128, 32, 128), (256, 16, 256), (512, 8, 512),
    (32, 28, 64), (64, 14, 128), (128, 7, 256),
]  # fmt: skip


def _interleaved(fs: dict, reps: int) -> dict[str, tuple[float, float]]:
    ts: dict[str, list[float]] = {k: [] for k in fs}
    for f in fs.values():
        f()
    for _ in range(reps):
        for k, f in fs.items():
            t0 = time.thread_time()
            f()
            ts[k].append(time.thread_time() - t0)
    return {k: (min(v) * 1e3, float(np.percentile(v, 25)) * 1e3) for k, v in ts.items()}


def _kernel(name: str, f):
    def g():
        pk.XNOR_KERNEL = name
        return f()

    return g


def layers(batch: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    print(f"batch {batch}: ms, min / 25th percentile of {reps}")
    for cin, h, cout in SHAPES:
        x = rng.standard_normal((batch, cin, h, h)).astype(np.float32)
        wT = pk.packed_weights(rng.integers(0, 2, (cout, cin * 9)).astype(np.uint8), cin, 3, 3)
        layer = SimpleNamespace(
            name=f"{cin}-{h}-{cout}", n=cin * 9, cin=cin, cout=cout, kind="conv2d", kernel_size=(3, 3), stride=(1, 1),
            padding=(1, 1), dilation=(1, 1),
        )  # fmt: skip
        sums: dict[str, np.ndarray] = {}

        def call(k, layer=layer, x=x, wT=wT, sums=sums):
            sums[k] = pk.xnor_layer(layer, x, wT, 1, None)

        fs = {k: _kernel(k, lambda k=k: call(k)) for k in ("popcount", "lut")}
        r = _interleaved(fs, reps)
        assert np.array_equal(sums["popcount"], sums["lut"])
        (p, p25), (q, q25) = r["popcount"], r["lut"]
        print(f"  {cin:3d}->{cout:3d} {h:2d}x{h:<2d}  popcount {p:8.3f} / {p25:8.3f}"
              f"  lut {q:8.3f} / {q25:8.3f}  popcount/lut {p / q:4.2f}")  # fmt: skip


def passes(model: str, batch: int, backend: str, reps: int) -> None:
    torch.manual_seed(0)
    cm = mstc.compress(create_model(model).eval(), complement=True)
    rt = Runtime(cm, backend, threads=1)
    x = np.random.default_rng(0).standard_normal((batch, *cm.input_shape)).astype(np.float32)
    out = {}
    fs = {k: _kernel(k, lambda k=k: out.__setitem__(k, rt.run(x))) for k in ("popcount", "auto")}
    for f in fs.values():  # warm-up: compilation, autotuning, buffers
        f()
        f()
    r = _interleaved(fs, reps)
    assert np.array_equal(out["popcount"].view(np.int32), out["auto"].view(np.int32))
    (p, p25), (q, q25) = r["popcount"], r["auto"]
    print(f"{model} batch {batch} {backend}: whole pass ms, min / 25th percentile of {reps}")
    print(f"  popcount {p:8.3f} / {p25:8.3f}   auto (lookups) {q:8.3f} / {q25:8.3f}"
          f"   popcount/auto {p / q:4.2f} / {p25 / q25:4.2f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="resnet20")
    p.add_argument("--layers", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--backend", default="mst")
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.layers:
        layers(args.batch, args.reps)
    else:
        passes(args.model, args.batch, args.backend, args.reps)


if __name__ == "__main__":
    main()
