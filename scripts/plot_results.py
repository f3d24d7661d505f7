"""Accuracy vs BOP reduction from training logs: a PNG and a Markdown table.

Reads every ``summary.json`` under the given folders (written by ``mstc train``), or, for a run
that did not finish, the last row of its ``log.csv`` (marked "partial"). Usage::

    python scripts/plot_results.py runs/gpu runs/gpu2 --out results/accuracy_vs_bops.png \
        --table results/table.md
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any


def _variant(cfg: dict[str, Any]) -> str:
    if not cfg.get("mst_lambda"):
        return "baseline"
    parts = [cfg.get("mst_variant", "ste-hamming")]
    parts.append("detach" if cfg.get("mst_detach_target", False) else "symmetric")
    parts.append(cfg.get("mst_target", "forest"))
    if cfg.get("center_init"):
        parts.append("cinit")
    if cfg.get("complement"):
        parts.append("compl")
    if cfg.get("mst_layer_weighting", "uniform") != "uniform":
        parts.append(cfg["mst_layer_weighting"])
    return "/".join(parts)


def collect(folders: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for folder in folders:
        for run in sorted(p for p in folder.iterdir() if p.is_dir()):
            summary, log = run / "summary.json", run / "log.csv"
            if summary.is_file():
                s = json.loads(summary.read_text())
                cfg, status = s["config"], "done"
                acc, bops, wb, depth = (
                    s["accuracy"],
                    s["bop_reduction"],
                    s["weight_bit_reduction"],
                    s["max_depth"],
                )
                epochs_done = cfg["epochs"]
            elif log.is_file() and (run / "config.json").is_file():
                hist = list(csv.DictReader(log.open()))
                if not hist:
                    continue
                last = hist[-1]
                cfg, status = json.loads((run / "config.json").read_text()), "partial"
                acc, bops = float(last["test_accuracy"]), float(last["bop_reduction"])
                wb, depth = float(last["weight_bit_reduction"]), int(last["max_depth"])
                epochs_done = int(last["epoch"])
            else:
                continue
            rows.append(
                dict(
                    sweep=folder.name,
                    name=run.name,
                    status=status,
                    epochs=f"{epochs_done}/{cfg['epochs']}",
                    dataset=cfg["dataset"],
                    model=cfg["model"] + (f" w{cfg['width']:g}" if cfg["width"] != 1 else ""),
                    lam=cfg["mst_lambda"],
                    k=cfg["centers"],
                    variant=_variant(cfg),
                    seed=cfg["seed"],
                    accuracy=acc,
                    bop_reduction=bops,
                    weight_bit_reduction=wb,
                    max_depth=depth,
                )
            )
    return rows


def baseline_of(rows: list[dict[str, Any]], r: dict[str, Any]) -> float | None:
    """Mean accuracy of the finished lambda=0 runs of the same data set and model."""
    accs = [
        b["accuracy"]
        for b in rows
        if b["variant"] == "baseline"
        and b["status"] == "done"
        and (b["dataset"], b["model"]) == (r["dataset"], r["model"])
    ]
    return sum(accs) / len(accs) if accs else None


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| sweep | run | data | model | lambda | K | variant | seed | epochs | accuracy | "
        "vs baseline | BOP red. | weight-bit red. | depth |"
    )
    lines = [head, "|" + "---|" * 14]

    def key(r):
        return (
            r["dataset"],
            r["model"],
            r["variant"] != "baseline",
            r["lam"],
            r["k"],
            r["variant"],
            r["seed"],
        )

    for r in sorted(rows, key=key):
        base = baseline_of(rows, r)
        delta = "" if base is None else f"{100 * (r['accuracy'] - base):+.2f}"
        status = "" if r["status"] == "done" else " (partial)"
        lines.append(
            f"| {r['sweep']} | {r['name']}{status} | {r['dataset']} | {r['model']} | "
            f"{r['lam']:g} | {r['k']} | {r['variant']} | {r['seed']} | {r['epochs']} | "
            f"{100 * r['accuracy']:.2f} | {delta} | {r['bop_reduction']:.2f}x | "
            f"{r['weight_bit_reduction']:.2f}x | {r['max_depth']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    groups = sorted({(r["dataset"], r["model"]) for r in rows})
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.8 * nrows), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    markers = {"baseline": "*"}
    colors = {v: f"C{i}" for i, v in enumerate(sorted({r["variant"] for r in rows}))}
    for ax, (ds, model) in zip(axes.flat, groups, strict=False):
        sel = [r for r in rows if (r["dataset"], r["model"]) == (ds, model)]
        variants = sorted({r["variant"] for r in sel})
        for v in variants:
            color = colors[v]
            done = [r for r in sel if r["variant"] == v and r["status"] == "done"]
            part = [r for r in sel if r["variant"] == v and r["status"] != "done"]
            for pts, hollow in ((done, False), (part, True)):
                if not pts:
                    continue
                ax.scatter(
                    [r["bop_reduction"] for r in pts],
                    [100 * r["accuracy"] for r in pts],
                    marker=markers.get(v, "o"),
                    s=120 if v == "baseline" else 40,
                    facecolors="none" if hollow else color,
                    edgecolors=color,
                    label=v + (" (partial run: last epoch reached)" if hollow else ""),
                )
            for r in done + part:
                if v != "baseline":
                    ax.annotate(
                        f"λ={r['lam']:g},K={r['k']}",
                        (r["bop_reduction"], 100 * r["accuracy"]),
                        fontsize=6,
                        alpha=0.7,
                    )
        base = baseline_of(rows, {"dataset": ds, "model": model})
        if base is not None:
            ax.axhline(100 * base - 1.0, color="grey", ls="--", lw=0.8, label="baseline - 1 pt")
        ax.axvline(10.0, color="grey", ls=":", lw=0.8, label="10x BOPs")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("BOP reduction on binary 3x3 convs (x, log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model} on {ds}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="sweep folders holding one run each")
    ap.add_argument("--out", type=Path, default=Path("results/accuracy_vs_bops.png"))
    ap.add_argument("--table", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    rows = collect(args.folders)
    text = table(rows)
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    plot(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
