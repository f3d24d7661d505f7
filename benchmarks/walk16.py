"""The int16 walk in vector lanes (``mstc.engine.walk16``) against the bit-sliced kernels, layer by
layer, alternating the variants in one process (min / median thread CPU time, us):

- every fused layer (its input bit planes as the compiled pass hands them over): the prepared
  step of each kernel -- ``walk16.FusedWalk`` and ``sliced.FusedStep`` (kernel and emission into
  the next conv's planes) -- and the "int" path (XNOR / int16 delta on transposed planes, then
  ``rule_planes``);
- every layer fed planes for its integer sums (the chain's last conv): ``walk16.Walk16`` with
  sums, ``sliced.layer_sums`` (the bit-sliced integer walk) and XNOR on transposed planes.

    .venv/bin/python benchmarks/walk16.py results/models/vgg_small_w0.25_fmnist_lam3e-4_k4.mstc --batch 1
"""

from __future__ import annotations

import argparse

import numpy as np
from chain_end import _alternate, fused_runtime  # the script's directory is on sys.path

from mstc.engine.sliced import BitPlanes, layer_sums
from mstc.engine.walk16 import Walk16, chunks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .mstc file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=300)
    args = p.parse_args()
    rt, x = fused_runtime(args.model, args.batch)
    be = rt.backend
    fused: dict[str, tuple] = {}
    summed: dict[str, tuple] = {}
    conv2d_fused, conv2d = be.conv2d_fused, be.conv2d

    def capture_fused(layer, inp, rule, pool, consumer, *, want_sums=False):
        if isinstance(inp, BitPlanes):
            fused.setdefault(layer.name, (layer, inp, rule, pool, consumer))
        return conv2d_fused(layer, inp, rule, pool, consumer, want_sums=want_sums)

    def capture(layer, inp):
        if isinstance(inp, BitPlanes):
            summed.setdefault(layer.name, (layer, inp))
        return conv2d(layer, inp)

    be.conv2d_fused, be.conv2d = capture_fused, capture
    rt.run(x)
    be.conv2d_fused, be.conv2d = conv2d_fused, conv2d
    print(f"{args.model}  batch {args.batch}  (us: min / median of {args.reps})")
    for name, (layer, inp, rule, pool, consumer) in fused.items():
        g = inp.geometry
        walk = be._step_for("walk16", layer, g, rule, pool, consumer)
        step = be._step_for("sliced", layer, g, rule, pool, consumer)
        assert np.array_equal(walk(inp).bits, step(inp).bits)
        fs = {
            "walk16 (FusedWalk)": lambda w=walk, i=inp: w(i),
            "sliced (FusedStep)": lambda s=step, i=inp: s(i),
            "int (conv + rule_planes)": lambda a=(layer, inp, rule, pool, consumer): be._fused_int(
                *a, False
            ),
        }
        title = f"{name} fused, grid {g.n}x{g.hp}x{g.wp}, {chunks(be._sliced(layer), g)} chunks"
        _print(title, _alternate(fs, args.reps))
    for name, (layer, inp) in summed.items():
        st = be._sliced(layer)
        walk = Walk16(st, inp.geometry)
        assert np.array_equal(walk(inp, sums=True), layer_sums(st, inp))
        fs = {
            "walk16 sums": lambda w=walk, i=inp: w(i, sums=True),
            "sliced layer_sums": lambda s=st, i=inp: layer_sums(s, i),
            "xnor on transposed planes": lambda a=(layer, inp): be._conv(*a),
        }
        _print(f"{name} sums, grid {inp.geometry.n}x{inp.geometry.hp}x{inp.geometry.wp}",
               _alternate(fs, args.reps))  # fmt: skip


def _print(title: str, res: dict[str, tuple[float, float]]) -> None:
    print(title)
    for k, (lo, med) in res.items():  # ms -> us
        print(f"  {k:<28} {1e3 * lo:8.1f} / {1e3 * med:8.1f}")


if __name__ == "__main__":
    main()
