"""``mstc bench``: torch float vs the "packed" and "mst" engines, each in its own process."""

from __future__ import annotations

import argparse
import json


def _cluster(args) -> dict | None:
    if args.cluster is None:
        return None
    return {"centres": args.cluster, "flip": args.flip, "invert": args.invert, "seed": args.seed}


def cmd_bench(args) -> int:
    from pathlib import Path

    from mstc.bench import format_report, memory_report, run_bench
    from mstc.models import list_models

    if args.batch < 1 or args.threads < 1 or args.reps < 1:
        raise SystemExit("mstc: error: --batch, --threads and --reps must be >= 1")
    if args.model not in list_models() and not Path(args.model).exists():
        raise FileNotFoundError(
            f"{args.model!r} is neither a checkpoint or .mstc file nor a model name "
            f"({', '.join(list_models())})"
        )
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    from mstc.engine import backends as engine_backends

    unknown = [b for b in backends if b != "torch" and b not in engine_backends()]
    if unknown or not backends:
        raise SystemExit(
            f"mstc: error: unknown backend(s) {unknown}; choose from torch, {engine_backends()}"
        )
    if args.memory:
        r = memory_report(
            args.model,
            width=args.width,
            seed=args.seed,
            batch=args.batch,
            cluster=_cluster(args),
            backends=tuple(b for b in backends if b != "torch"),
        )
        print(json.dumps(r, indent=2))
        return 0
    r = run_bench(
        args.model,
        batch=args.batch,
        threads=args.threads,
        width=args.width,
        seed=args.seed,
        reps=args.reps,
        min_time=args.min_time,
        cluster=_cluster(args),
        backends=backends,
        clock=args.clock,
    )
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time torch float, packed and mst on a model or checkpoint",
        description="Time the PyTorch float model and the packed and mst engines, each in its "
        "own process, interleaved over several rounds; print per-layer and whole-network "
        "medians, their ratios and the theoretical BOP ratio.",
    )
    p.add_argument(
        "model", help="checkpoint path, .mstc file (model rebuilt) or model name (random weights)"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (model names only)")
    p.add_argument("--seed", type=int, default=0, help="weight / input seed")
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds per backend")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per round and backend")
    p.add_argument("--backends", default="torch,packed,mst", help="comma-separated list")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or CPU time of each worker (robust to other load; 1 thread only)",
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=None,
        metavar="K",
        help="simulate a regularized model: K centre filters per binary conv",
    )
    p.add_argument("--flip", type=float, default=0.03, help="with --cluster: flipped tap fraction")
    p.add_argument("--invert", type=float, default=0.0, help="with --cluster: inverted filters")
    p.add_argument("--memory", action="store_true", help="report file size and peak memory instead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)
