"""Run a grid of trainings from one YAML file, several at a time, each as ``mstc train``.

The file has ``base`` (TrainConfig fields shared by every run), ``out`` (the parent folder) and
``runs`` (a list of mappings: ``name`` plus the fields that differ). Each run is exactly::

    mstc train --config <base + run as YAML> --out <out>/<name>

and is skipped when ``<out>/<name>/summary.json`` exists. Usage::

    python -m mstc.train.sweep configs/sweep_fmnist.yaml [--jobs 4] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mstc.train.config import TrainConfig


def load_sweep(
    path: str | os.PathLike, out: str | None = None
) -> tuple[Path, list[tuple[str, dict[str, Any]]]]:
    spec = yaml.safe_load(Path(path).read_text())
    base = dict(spec.get("base") or {})
    out = Path(out or spec.get("out", "runs/sweep"))
    runs = []
    for r in spec["runs"]:
        r = dict(r)
        name = r.pop("name")
        cfg = {**base, **r, "out": str(out / name)}
        TrainConfig.from_dict(cfg).validate()  # fail early on a bad entry
        runs.append((name, cfg))
    return out, runs


def command_line(cfg: dict[str, Any]) -> str:
    """The equivalent ``mstc train`` flags of a run (for RESULTS.md)."""
    default = TrainConfig().to_dict()
    parts = ["mstc train"]
    for k, v in cfg.items():
        if k in ("progress",) or default.get(k) == v:
            continue
        flag = "--" + k.replace("_", "-")
        if k == "model_kwargs":
            for kk, vv in v.items():
                parts.append(f"--{kk.replace('_', '-')} {vv}")
        elif isinstance(v, bool):
            parts.append(flag if v else f"--no-{k.replace('_', '-')}")
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--set", nargs="*", default=[], help="KEY=YAML overrides for every run")
    ap.add_argument("--print", action="store_true", help="print the commands and exit")
    ap.add_argument("--out", help="parent folder of the runs (default: the file's out)")
    args = ap.parse_args(argv)
    out, runs = load_sweep(args.sweep, args.out)
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.only:
        runs = [(n, c) for n, c in runs if n in set(args.only)]
    if args.print:
        for name, cfg in runs:
            print(f"{name}: {command_line({**cfg, **extra})}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    pending = [(n, {**c, **extra}) for n, c in runs if not (out / n / "summary.json").exists()]
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = []
    t0 = time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            name, cfg = pending.pop(0)
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            cfg_path = folder / "sweep_config.yaml"
            cfg_path.write_text(yaml.safe_dump({**cfg, "progress": False}))
            cmd = [
                sys.executable,
                "-c",
                "import sys; from mstc.cli import main; sys.exit(main(sys.argv[1:]))",
                "train",
                "--config",
                str(cfg_path),
                "--resume",
            ]
            logf = open(folder / "train.log", "a")  # noqa: SIM115
            running.append((name, subprocess.Popen(cmd, stdout=logf, stderr=logf), time.time()))
            print(f"[{time.time() - t0:6.0f}s] start {name}", flush=True)
        time.sleep(1.0)
        for item in list(running):
            name, proc, start = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED rc={proc.returncode}"
                if proc.returncode != 0:
                    failed.append(name)
                print(
                    f"[{time.time() - t0:6.0f}s] {status} {name} ({time.time() - start:.0f}s)",
                    flush=True,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
