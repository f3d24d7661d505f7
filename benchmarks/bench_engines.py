"""Benchmark matrix of the engines (BENCHMARKS.md): torch float vs "packed" vs "mst" (and the
"sliced-dense" ablation: the fused bit-sliced kernel with every channel a root).

Runs ``mstc.bench.run_bench`` (each backend in its own process, interleaved rounds) over
models x weights (random / clustered / trained) x batch x threads, appends one JSON object per run
to ``--out`` and prints the markdown tables of BENCHMARKS.md. "trained" is the committed
regularized checkpoint ``TRAINED[model]`` (vgg_small only).

    .venv/bin/python benchmarks/bench_engines.py --out /tmp/engines.jsonl
    .venv/bin/python benchmarks/bench_engines.py --table /tmp/engines.jsonl   # tables only
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

from mstc.bench import run_bench

CLUSTER = {"centres": 4, "flip": 0.02, "invert": 0.0, "seed": 0}
TRAINED = {"vgg_small": "results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc"}
BACKENDS = ("torch", "packed", "mst", "sliced-dense")


def _weights(r: dict) -> str:
    if r["model"].endswith(".mstc"):
        return "trained"
    return "clustered" if r.get("cluster") else "random"


def _name(r: dict) -> str:
    m = r["model"]
    return next((k for k, v in TRAINED.items() if v == m), m)


def table(rows: list[dict]) -> str:
    head = (
        "| model | weights | batch | threads | clock | BOP ratio | torch ms | packed ms | mst ms "
        "| sliced-dense ms | torch/packed | packed/mst | torch/mst |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    out = ["### Binary layers only (sum of per-layer medians)", "", head]
    titles = {
        "median_ms": "Whole network (median of full forward passes)",
        "min_ms": "Whole network (fastest full forward pass; less sensitive to other load)",
    }
    for key in ("binary_ms", "median_ms", "min_ms"):
        if key in titles:
            if not all(key in r for r in rows):  # min_ms: results files since the 4th session
                continue
            out += ["", f"### {titles[key]}", "", head]
        for r in rows:
            ms = r[key]
            sd = f"{ms['sliced-dense']:.2f}" if "sliced-dense" in ms else "-"
            out.append(
                f"| {_name(r)} | {_weights(r)} | {r['batch']} | {r['threads']} | {r['clock']} | "
                f"{r['bop_ratio']:.1f} | {ms['torch']:.2f} | {ms['packed']:.2f} | {ms['mst']:.2f} "
                f"| {sd} | {ms['torch'] / ms['packed']:.1f} | {ms['packed'] / ms['mst']:.2f} "
                f"| {ms['torch'] / ms['mst']:.1f} |"
            )
    out += [
        "",
        "### Where the time goes (ms: binary layers / rest = float ops and glue)",
        "",
        "| model | weights | batch | threads | torch | packed | mst |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(
            f"{r['binary_ms'][b]:.2f} / {r['other_ms'][b]:.2f}" for b in ("torch", "packed", "mst")
        )
        out.append(f"| {_name(r)} | {_weights(r)} | {r['batch']} | {r['threads']} | {cells} |")
    return "\n".join(out)


def _json_objects(text: str) -> list[dict]:
    """The JSON objects of a results file: one per line (this script's ``--out``) or pretty
    printed one after the other (``mstc bench --json >> file``)."""
    decoder = json.JSONDecoder()
    rows, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return rows
        row, i = decoder.raw_decode(text, i)
        rows.append(row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/mstc_engines.jsonl")
    p.add_argument("--table", default=None, help="only print the tables of a results file")
    p.add_argument("--models", default="resnet20,vgg_small")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--weights", default="random,clustered,trained")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--clock", default="cpu", help="clock of the 1-thread runs (2 threads: wall)")
    p.add_argument("--min-time", type=float, default=0.2)
    args = p.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table(_json_objects(f.read())))
        return 0
    rows = []
    for model, weights, batch, threads in itertools.product(
        args.models.split(","),
        args.weights.split(","),
        [int(b) for b in args.batches.split(",")],
        [int(t) for t in args.threads.split(",")],
    ):
        if weights == "trained" and model not in TRAINED:
            continue
        t0 = time.time()
        r = run_bench(
            TRAINED[model] if weights == "trained" else model,
            backends=tuple(args.backends.split(",")),
            batch=batch,
            threads=threads,
            reps=args.reps,
            min_time=args.min_time,
            cluster=CLUSTER if weights == "clustered" else None,
            clock=args.clock if threads == 1 else "wall",
        )
        rows.append(r)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(
            f"{model} {weights} b{batch} t{threads}: {r['median_ms']} ({time.time() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
