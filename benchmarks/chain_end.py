"""The mst engine's sums from bit planes (a chain's last binary conv) and its stem bits, kernel by
kernel, alternating the variants in one process (min / median thread CPU time, ms):

- for each binary conv that reads bit planes in the fused plan: XNOR-popcount on the planes
  transposed to words (``MSTBackend._conv``, what the autotune compares against), the bit-sliced
  kernel alone (``run_layer`` with v planes), its v planes unpacked to integer sums by the
  plane-by-plane loop (``sliced._unpack_sums``, the reference) and by bit-matrix transposes
  (``unpack_sums``), and the sums by the integer tree walk (``layer_sums``, what mst runs: the
  tile kernel's, or four words at a time on grids of <= ``VECTOR_WORDS`` words);
- for a float stem read only through a folded BatchNorm: its packed words then ``words_to_planes``
  (before the sixth session) against ``FloatConv.bit_planes`` (the planes made directly).

    .venv/bin/python benchmarks/chain_end.py results/models/vgg_small_w0.25_fmnist_lam1e-4_k4.mstc
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mstc
import mstc.engine.sliced as sliced
from mstc.engine import Runtime
from mstc.engine.floatconv import rule_compare, torch_order
from mstc.engine.sliced import (
    BitPlanes,
    layer_sums,
    output_hw,
    plane_geometry,
    run_layer,
    unpack_sums,
    words_to_planes,
)


def _alternate(fs: dict, reps: int) -> dict[str, tuple[float, float]]:
    times: dict[str, list[int]] = {k: [] for k in fs}
    for _ in range(reps):
        for k, f in fs.items():
            t0 = time.thread_time_ns()
            f()
            times[k].append(time.thread_time_ns() - t0)
    return {k: (min(v) / 1e6, float(np.median(v)) / 1e6) for k, v in times.items()}


def _print(title: str, res: dict[str, tuple[float, float]]) -> None:
    print(title)
    for k, (lo, med) in res.items():
        print(f"  {k:<34} {lo:7.3f} / {med:7.3f} ms")


def _layer_variants(be, pool, layer, inp) -> dict:
    st = be._sliced(layer)
    g = inp.geometry
    _, VS = run_layer(st, inp, emit=None, want_planes=True)
    ho, wo = output_hw(layer, g)
    ref = np.empty((g.n, layer.cout, ho, wo), np.int32)
    sliced._unpack_sums(VS, st.c, layer.n, g.n, g.hp, g.wp, ho, wo, ref)
    assert np.array_equal(unpack_sums(st, VS, g), ref)
    assert np.array_equal(be._conv(layer, inp), ref)
    assert np.array_equal(layer_sums(st, inp), ref)
    return {
        "xnor on transposed planes": lambda: pool.give(be._conv(layer, inp)),
        "bit-sliced kernel (v planes)": lambda: pool.give(
            run_layer(st, inp, emit=None, want_planes=True, pool=pool)[1]
        ),
        "unpack, plane by plane": lambda: sliced._unpack_sums(
            VS, st.c, layer.n, g.n, g.hp, g.wp, ho, wo, ref
        ),
        "unpack, bit-matrix transposes": lambda: pool.give(unpack_sums(st, VS, g, pool)),
        "sums by the integer tree walk": lambda: pool.give(layer_sums(st, inp, pool=pool)),
    }


def _stem_variants(conv, xs, order, compare, reader, pool) -> dict:
    n, _, h, w = conv.output_shape(xs.shape)
    g = plane_geometry(reader, n, h, w)
    pad = tuple(reader.padding)
    want = words_to_planes(conv.packed_bits(xs, order, compare, pad), g).bits
    assert np.array_equal(conv.bit_planes(xs, order, compare, pad, g.words), want)
    return {
        "packed_bits + words_to_planes": lambda: words_to_planes(
            conv.packed_bits(xs, order, compare, pad, pool), g
        ),
        "bit_planes": lambda: conv.bit_planes(xs, order, compare, pad, g.words, pool),
    }


def fused_runtime(model: str, batch: int) -> tuple[Runtime, np.ndarray]:
    """The mst runtime of a .mstc file on one thread (torch's too) after one pass of a Gaussian
    input of ``batch`` images, set to the fused plan whatever its autotune chose; and the input."""
    torch.set_num_threads(1)
    cm = mstc.load(model)
    rt = Runtime(cm, "mst", threads=1)
    x = np.random.default_rng(0).standard_normal((batch, *cm.input_shape)).astype(np.float32)
    rt.run(x)
    rt.plans[x.shape] = frozenset(rt.fusions)
    return rt, x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .mstc file")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=100)
    args = p.parse_args()
    rt, x = fused_runtime(args.model, args.batch)
    cm, be, pool = rt.compressed, rt.backend, rt.pool
    planes_in: dict[str, tuple] = {}
    conv2d = be.conv2d

    def capture(layer, inp):
        if isinstance(inp, BitPlanes):
            planes_in[layer.name] = (layer, inp)
        return conv2d(layer, inp)

    be.conv2d = capture
    rt.run(x, return_sums=True)  # the plain pass: the chain end's input planes
    be.conv2d = conv2d
    for name, (layer, inp) in planes_in.items():
        st = be._sliced(layer)
        g = inp.geometry
        title = f"{name} (planes {st.planes}, grid {g.n}x{g.hp}x{g.wp})"
        _print(title, _alternate(_layer_variants(be, pool, layer, inp), args.reps))
    for conv_name, fold in rt.input_folds.items():
        stem = rt._nodes.get(fold[1])
        conv = rt._float_conv(stem) if stem is not None and stem.op == "conv2d" else None
        if conv is None or not conv.packs_bits:
            continue
        reader = cm.layers[rt._nodes[conv_name].attrs["layer"]]
        xs = np.random.default_rng(1).standard_normal((args.batch, *cm.input_shape))
        xs = xs.astype(np.float32)
        order = torch_order(conv, xs.shape)
        if order is None:
            continue
        fs = _stem_variants(conv, xs, order, rule_compare(fold[2]), reader, pool)
        _print(f"stem {stem.name} -> {reader.name} planes", _alternate(fs, args.reps))


if __name__ == "__main__":
    main()
