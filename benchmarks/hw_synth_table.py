"""Synthesise dense vs MST datapaths for a few layer sizes (random and clustered weights) and
print one JSON line per layer plus a markdown table (the numbers of HARDWARE.md).

    python benchmarks/hw_synth_table.py [--quick]

Each row is also reproducible alone with ``mstc hw synth --random COUT N --json`` or
``mstc hw synth --clustered COUT N --centres 4 --flip 0.05 --json`` (results are cached).
"""

from __future__ import annotations

import argparse
import json
import sys

from mstc.hw.spec import LayerSpec, clustered_bits, random_bits
from mstc.hw.synth import synthesize

SIZES = [(16, 72), (32, 144), (32, 288)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the smallest size")
    ap.add_argument("--kinds", default="random,clustered")
    ap.add_argument("--device", default="85k")
    args = ap.parse_args(argv)
    rows = []
    for cout, n in SIZES[:1] if args.quick else SIZES:
        for kind in args.kinds.split(","):
            if kind == "random":
                bits = random_bits(cout, n, seed=0)
                name = f"random{cout}x{n}s0"
                cmd = f"mstc hw synth --random {cout} {n} --json"
            else:
                bits = clustered_bits(cout, n, centres=4, flip=0.05, seed=0)
                name = f"clustered{cout}x{n}k4f0.05s0"
                cmd = f"mstc hw synth --clustered {cout} {n} --centres 4 --flip 0.05 --json"
            spec = LayerSpec.from_plan(bits, name=name)
            r = synthesize(spec, device=args.device)
            r["command"] = cmd
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(
        "| layer | XNOR ratio | depth | LUT4-eq dense | LUT4-eq MST | LUT ratio | "
        "FF dense/MST | Fmax dense/MST (MHz) | latency dense/MST | LUT red./XNOR red. |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, m = r["dense"], r["mst"]
        print(
            f"| {r['layer']} | {r['xnor_ratio']:.3f} | {r['depth']} | {d['lut_equiv']} | "
            f"{m['lut_equiv']} | {r['lut_ratio']:.3f} | {d['ffs']}/{m['ffs']} | "
            f"{d['fmax_mhz']:.0f}/{m['fmax_mhz']:.0f} | {d['latency_cycles']}/"
            f"{m['latency_cycles']} | {r['lut_reduction_vs_xnor_reduction']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
