"""Hardware commands: ``mstc hw synth``, ``mstc hw sim``, ``mstc hw estimate``."""

from __future__ import annotations

import argparse
import json


def _spec(args):
    from mstc.hw.spec import LayerSpec, clustered_bits, random_bits, spec_from_model

    if args.random:
        cout, n = args.random
        bits = random_bits(cout, n, seed=args.seed)
        name = f"random{cout}x{n}s{args.seed}"
    elif args.clustered:
        cout, n = args.clustered
        bits = clustered_bits(cout, n, centres=args.centres, flip=args.flip, seed=args.seed)
        name = f"clustered{cout}x{n}k{args.centres}f{args.flip:g}s{args.seed}"
    else:
        if not args.file or not args.layer:
            raise SystemExit("mstc: error: give FILE.mstc --layer L, --random or --clustered")
        import mstc

        return spec_from_model(mstc.load(args.file), args.layer)
    name += "c" if args.complement else ""
    name += f"d{args.max_depth}" if args.max_depth is not None else ""
    return LayerSpec.from_plan(
        bits, name=name, complement=args.complement, max_depth=args.max_depth
    )


def _layer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="a compressed .mstc file")
    p.add_argument("--layer", help="binary layer name in FILE")
    p.add_argument(
        "--random",
        nargs=2,
        type=int,
        metavar=("COUT", "N"),
        help="a random layer of COUT channels and N taps instead of FILE",
    )
    p.add_argument(
        "--clustered",
        nargs=2,
        type=int,
        metavar=("COUT", "N"),
        help="a 'regularized-like' layer: --centres filters, --flip taps flipped",
    )
    p.add_argument("--centres", type=int, default=4)
    p.add_argument("--flip", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--complement", action="store_true", help="allow complement edges")
    p.add_argument("--max-depth", type=int, default=None)
    p.add_argument("--parallel", type=int, default=1, help="positions per cycle")
    p.add_argument(
        "--levels-per-stage", type=int, default=2, help="logic levels between pipeline registers"
    )
    p.add_argument("--json", action="store_true")


def cmd_synth(args) -> int:
    from mstc.hw.synth import synthesize

    if args.target != "ecp5":
        raise SystemExit("mstc: error: only --target ecp5 is supported")
    spec = _spec(args)
    r = synthesize(
        spec,
        parallel=args.parallel,
        levels_per_stage=args.levels_per_stage,
        device=args.device,
        package=args.package,
        freq_mhz=args.freq,
        use_cache=not args.no_cache,
    )
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(
        f"layer {r['layer']}: Cout={r['cout']} n={r['n']} depth={r['depth']} "
        f"XNORs dense={r['xnors']['dense']} mst={r['xnors']['mst']} "
        f"(ratio {r['xnor_ratio']:.3f})"
    )
    keys = [
        ("LUT4", "luts"),
        ("CCU2C", "ccu2c"),
        ("LUT4-equiv", "lut_equiv"),
        ("FF", "ffs"),
        ("TRELLIS_COMB", "comb_cells"),
        ("Fmax MHz", "fmax_mhz"),
        ("latency cyc", "latency_cycles"),
        ("Mpos/s", "throughput_mpos_s"),
    ]
    print(f"{'':14s}{'dense':>10s}{'mst':>10s}{'mst/dense':>11s}")
    for label, k in keys:
        d, m = r["dense"][k], r["mst"][k]
        ratio = f"{m / d:.3f}" if d else "-"
        print(f"{label:14s}{d:>10}{m:>10}{ratio:>11s}")
    print(f"LUT reduction / XNOR reduction = {r['lut_reduction_vs_xnor_reduction']}")
    return 0


def cmd_sim(args) -> int:
    import numpy as np

    from mstc.hw.datapath import LayerDatapath
    from mstc.hw.reference import layer_bits, layer_sums
    from mstc.hw.sim import simulate

    spec = _spec(args)
    rng = np.random.default_rng(args.seed)
    a = rng.integers(0, 2, size=(args.vectors, args.parallel, spec.n), dtype=np.uint8)
    out = {}
    for label, s in (("dense", spec.dense()), ("mst", spec)):
        dut = LayerDatapath(
            s, parallel=args.parallel, levels_per_stage=args.levels_per_stage, emit_sums=True
        )
        r = simulate(dut, a, stall_seed=args.seed)
        ok = bool((r.sums == layer_sums(s, a)).all() and (r.bits == layer_bits(s, a)).all())
        out[label] = {"equal": ok, "latency_cycles": dut.latency, "cycles": r.cycles}
    print(json.dumps({"layer": spec.name, "vectors": args.vectors, **out}, indent=1))
    return 0 if all(v["equal"] for v in out.values()) else 1


def cmd_estimate(args) -> int:
    from mstc.hw.model import estimate

    coef = tuple(args.coef) if args.coef else None
    r = estimate(
        args.network,
        weights=args.weights,
        complement=args.complement,
        lut_budget=args.budget,
        fmax_mhz={"dense": args.fmax[0], "mst": args.fmax[1]},
        **({"coef": coef} if coef else {}),
    )
    if args.json:
        print(json.dumps(r, indent=1, default=float))
        return 0
    print(f"{r['network']} ({r['weights']} weights), LUT budget {r['lut_budget']:.0f}")
    print(
        f"{'layer':18s}{'n':>6s}{'cout':>6s}{'pos':>6s}{'xnor r':>8s}{'lut r':>8s}"
        f"{'depth':>6s}{'lat d/m':>9s}"
    )
    for row in r["layers"]:
        print(
            f"{row['layer']:18s}{row['n']:>6d}{row['cout']:>6d}{row['positions']:>6d}"
            f"{row['xnor_ratio']:>8.3f}{row['lut_ratio']:>8.3f}{row['depth']:>6d}"
            f"{row['dense_latency']:>4d}/{row['mst_latency']:<4d}"
        )
    for label in ("dense", "mst"):
        t = r[label]
        print(
            f"{label:6s} cycles/image {t['cycles_per_image']:.0f}  FPS {t['fps']:.0f}  "
            f"latency {t['latency_us']:.1f} us  (f = {t['fmax_mhz']} MHz)"
        )
    print(
        f"XNOR ratio {r['xnor_ratio']:.3f}  area ratio {r['area_ratio']:.3f}  "
        f"FPS gain {r['fps_gain']:.2f}x"
    )
    return 0


def register(sub) -> None:
    hw = sub.add_parser("hw", help="hardware datapath: synthesis, simulation, estimates")
    hsub = hw.add_subparsers(dest="hw_command", required=True)

    p = hsub.add_parser("synth", help="synthesise dense and MST designs of one layer (ECP5)")
    _layer_args(p)
    p.add_argument("--target", default="ecp5")
    p.add_argument("--device", default="85k", choices=["25k", "45k", "85k"])
    p.add_argument("--package", default="CABGA381")
    p.add_argument("--freq", type=float, default=250.0, help="nextpnr target MHz")
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = hsub.add_parser("sim", help="simulate dense and MST designs against the numpy reference")
    _layer_args(p)
    p.add_argument("--vectors", type=int, default=32)
    p.set_defaults(func=cmd_sim)

    p = hsub.add_parser("estimate", help="whole-network cycle/area estimate, dense vs MST")
    p.add_argument(
        "--network",
        default="resnet20",
        choices=["resnet20", "vgg_small", "resnet18", "resnet18_imagenet"],
    )
    p.add_argument("--weights", default="random", help="random or clustered[:K[:flip]]")
    p.add_argument("--complement", action="store_true")
    p.add_argument("--budget", type=float, default=80_000.0, help="LUT4-equivalents")
    p.add_argument(
        "--fmax",
        type=float,
        nargs=2,
        default=[142.0, 176.0],
        metavar=("DENSE", "MST"),
        help="clock of each design kind (default: mean measured Fmax, HARDWARE.md)",
    )
    p.add_argument("--coef", type=float, nargs=2, default=None, metavar=("A_FA", "A_CCU"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_estimate)
