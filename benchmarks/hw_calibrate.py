"""Calibrate the area model of mstc.hw.model on the synthesised layers of hw_synth_table.py
(cached results: run that script first), report the fit error, then print whole-network
estimates (dense vs MST) for resnet20, vgg_small and resnet18 with the fitted coefficients.

    python benchmarks/hw_calibrate.py [--metric lut_equiv|comb_cells] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from mstc.hw.model import estimate, fit_area, layer_cost
from mstc.hw.spec import LayerSpec, clustered_bits, random_bits
from mstc.hw.synth import synthesize

SIZES = [(16, 72), (32, 144), (32, 288)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--metric", default="lut_equiv", choices=["lut_equiv", "comb_cells"])
    ap.add_argument("--budget", type=float, default=80_000.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    costs, measured, names, fmax = [], [], [], {"dense": [], "mst": []}
    for cout, n in SIZES:
        for kind in ("random", "clustered"):
            if kind == "random":
                bits, name = random_bits(cout, n, seed=0), f"random{cout}x{n}s0"
            else:
                bits = clustered_bits(cout, n, centres=4, flip=0.05, seed=0)
                name = f"clustered{cout}x{n}k4f0.05s0"
            spec = LayerSpec.from_plan(bits, name=name)
            r = synthesize(spec)
            for label, s in (("dense", spec.dense()), ("mst", spec)):
                costs.append(layer_cost(s))
                measured.append(r[label][args.metric])
                names.append(f"{name}/{label}")
                fmax[label].append(r[label]["fmax_mhz"])
    coef, err = fit_area(costs, measured)
    f = {k: float(np.mean(v)) for k, v in fmax.items()}
    out = {
        "metric": args.metric,
        "coef": [float(c) for c in coef],
        "fit": [
            {
                "design": nm,
                "measured": m,
                "predicted": round(float(np.dot(c.features(), coef))),
                "rel_error": round(e, 4),
            }
            for nm, m, c, e in zip(names, measured, costs, err, strict=True)
        ],
        "max_abs_rel_error": round(max(abs(e) for e in err), 4),
        "mean_abs_rel_error": round(float(np.mean(np.abs(err))), 4),
        "fmax_mean_mhz": f,
        "networks": {},
    }
    for net in ("resnet20", "vgg_small", "resnet18"):
        for weights in ("random", "clustered:8:0.05"):
            e = estimate(net, weights=weights, lut_budget=args.budget, fmax_mhz=f, coef=tuple(coef))
            out["networks"][f"{net}/{weights}"] = {
                "xnor_ratio": round(e["xnor_ratio"], 4),
                "area_ratio": round(e["area_ratio"], 4),
                "fps_dense": round(e["dense"]["fps"]),
                "fps_mst": round(e["mst"]["fps"]),
                "fps_gain": round(e["fps_gain"], 3),
                "latency_us_dense": round(e["dense"]["latency_us"], 1),
                "latency_us_mst": round(e["mst"]["latency_us"], 1),
                "pipeline_latency_cycles": [
                    e["dense"]["pipeline_latency_cycles"],
                    e["mst"]["pipeline_latency_cycles"],
                ],
                "max_depth": max(r["depth"] for r in e["layers"]),
            }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(
        f"metric {args.metric}: coef a_fa={coef[0]:.3f} a_ccu={coef[1]:.3f}; "
        f"mean |err| {out['mean_abs_rel_error']:.1%}, max {out['max_abs_rel_error']:.1%}"
    )
    for row in out["fit"]:
        print(
            f"  {row['design']:36s} measured {row['measured']:7d} predicted "
            f"{row['predicted']:7d} ({row['rel_error']:+.1%})"
        )
    print(
        "| network | weights | XNOR ratio | area ratio | FPS dense | FPS MST | gain | "
        "latency us dense/MST | pipeline cycles dense/MST | max depth |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, v in out["networks"].items():
        net, w = key.split("/")
        print(
            f"| {net} | {w} | {v['xnor_ratio']:.3f} | {v['area_ratio']:.3f} | "
            f"{v['fps_dense']} | {v['fps_mst']} | {v['fps_gain']:.2f}x | "
            f"{v['latency_us_dense']}/{v['latency_us_mst']} | "
            f"{v['pipeline_latency_cycles'][0]}/{v['pipeline_latency_cycles'][1]} | "
            f"{v['max_depth']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
