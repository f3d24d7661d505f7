"""``mstc demo``: the whole flow on Fashion-MNIST in a few minutes on a small CPU.

1. fetch Fashion-MNIST (offline, :func:`mstc.data.fetch`);
2. train the demo recipe twice: lambda = 0 (the uncompressed baseline) and with the MST
   regularizer (same seed, data, schedule);
3. compress the regularized model (:func:`mstc.compress`), save and reload ``model.mstc``;
4. verify it bit-exactly: on the whole test set with the compiled MST engine (backend "mst",
   which walks the trees), and on the first ``reference_images`` with the readable numpy
   reference engine: every binary layer's integer sums equal the PyTorch model's, and the
   logits equal the PyTorch eval logits;
5. print the per-layer cost table and the headline, and write ``summary.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mstc.checkpoint import load_checkpoint
from mstc.io import write_text_atomic
from mstc.train.config import TrainConfig

#: the demo recipe (regularized run); the baseline is the same with mst_lambda = 0
DEMO_RECIPE = dict(
    model="vgg_small",
    width=0.125,
    dataset="fashion-mnist",
    train_subset=12000,
    epochs=4,
    batch_size=64,
    optimizer="adam",
    lr=2e-3,
    mst_lambda=5e-5,
    centers=4,
    mst_variant="masked-hamming",
    mst_detach_target=True,
    mst_target="forest",
    mst_update_every=20,
    mst_freeze_epochs=1,
    eval_every=4,
    seed=0,
)
QUICK_RECIPE = dict(train_subset=1024, test_subset=512, epochs=1, eval_every=1)


def demo_config(out: Path, *, quick: bool = False, **changes: Any) -> TrainConfig:
    recipe = dict(DEMO_RECIPE)
    if quick:
        recipe.update(QUICK_RECIPE)
    recipe.update(changes)
    return TrainConfig(out=str(out), **recipe).validate()


def verify_on_test_set(
    compressed,
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    backend: str = "reference",
    batch: int = 500,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run an engine backend and the PyTorch model on every image; compare exactly.

    Returns counts of images, layers checked, mismatching integer sums, the max logit difference
    and the engine's predictions (argmax of its logits).
    """
    from mstc.engine import Runtime
    from mstc.verify import torch_integer_sums

    mismatched = 0
    max_diff = 0.0
    preds = []
    layers = 0
    runtime = Runtime(compressed, backend, threads)  # once: plans, packed weights, autotunes
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        ref_logits, ref_sums = torch_integer_sums(model, x)
        logits, sums = runtime.run(x.numpy(), return_sums=True)
        layers = len(ref_sums)
        for name, ref in ref_sums.items():
            got = sums.get(name)
            if got is None or got.shape != ref.shape:
                mismatched += int(ref.size)
            else:
                mismatched += int((np.asarray(got) != ref).sum())
        max_diff = max(max_diff, float(np.abs(logits - ref_logits).max()))
        preds.append(np.asarray(logits).argmax(1))
    return {
        "backend": backend,
        "images": int(len(images)),
        "binary_layers": layers,
        "mismatched_integer_sums": mismatched,
        "max_logit_diff": max_diff,
        "bit_exact": mismatched == 0 and max_diff == 0.0,
        "predictions": np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64),
    }


def _describe(check: dict[str, Any]) -> str:
    return (
        f"{check['backend']:>9s} engine: {check['images']} images, {check['binary_layers']} "
        f"binary layers, {check['mismatched_integer_sums']} mismatching integer sums, "
        f"max |logit diff| {check['max_logit_diff']:.3g} -> "
        f"{'BIT-EXACT' if check['bit_exact'] else 'MISMATCH'}"
    )


def _train_worker(cfg: dict[str, Any], tag: str) -> dict[str, Any]:
    """Train one config in a worker process; its log lines carry ``tag``."""
    from mstc.train.loop import train

    def log(msg: str) -> None:
        print("\n".join(f"[{tag}] {line}" for line in msg.splitlines()), flush=True)

    return train(TrainConfig.from_dict(cfg), log=log).summary


def run_demo(
    out: Path = Path("runs/demo"),
    *,
    data_root: str | None = None,
    baseline: bool = True,
    quick: bool = False,
    threads: int | None = None,
    progress: bool = True,
    reference_images: int = 200,
    log=None,
) -> Path:
    """Run the demo into ``out``; returns the path of ``out/summary.json``."""
    import mstc
    from mstc.data import fetch
    from mstc.train.data import load_split
    from mstc.train.loop import train

    log = log or (lambda msg: print(msg, flush=True))
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"[1/5] fetching Fashion-MNIST into {data_root or 'the default data root'}")
    fetch("fashion-mnist", data_root, log=log)
    cores = max(1, os.cpu_count() or 1)
    parallel = baseline and cores >= 2 and threads is None
    # one thread per training: several torch threads on a busy small machine can be 10x slower
    per_run = threads or (1 if parallel else min(cores, 2))
    common = dict(data_root=data_root, progress=progress and not parallel, threads=per_run)
    cfg = demo_config(out / "mst", quick=quick, **common)
    cfg0 = demo_config(out / "baseline", quick=quick, mst_lambda=0.0, compress=False, **common)

    base_summary = None
    if parallel:
        log("[2-3/5] training the baseline (lambda = 0) and the MST-regularized model side by side")
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            f0 = pool.submit(_train_worker, cfg0.to_dict(), "baseline")
            f1 = pool.submit(_train_worker, cfg.to_dict(), "mst")
            base_summary, summary = f0.result(), f1.result()
    else:
        if baseline:
            log("[2/5] training the baseline (lambda = 0)")
            base_summary = train(cfg0, log=log).summary
        else:
            log("[2/5] baseline skipped (--no-baseline)")
        log("[3/5] training with the MST regularizer")
        summary = train(cfg, log=log).summary
    t_train = time.time() - t0
    torch.set_num_threads(per_run)
    model, _ = load_checkpoint(summary["checkpoint"])

    log("[4/5] reloading model.mstc and verifying it bit-exactly on the test set")
    compressed = mstc.load(summary["compressed"])
    test = load_split(cfg.dataset, data_root, "test", subset=cfg.test_subset, seed=cfg.seed)
    model = model.cpu().eval()
    # the readable numpy reference engine on the first images (it walks every tree in Python),
    # and the compiled MST engine (same trees, numba) on the whole test set
    ref_check = verify_on_test_set(
        compressed,
        model,
        test.images[:reference_images],
        backend="reference",
        batch=100,
        threads=per_run,
    )
    ref_check.pop("predictions")
    log("      " + _describe(ref_check))
    check = verify_on_test_set(compressed, model, test.images, backend="mst", threads=per_run)
    engine_acc = float((check.pop("predictions") == test.labels.numpy()).mean())
    log("      " + _describe(check))

    log("[5/5] headline")
    headline = {
        "accuracy": summary["accuracy"],
        "engine_accuracy": engine_acc,
        "baseline_accuracy": base_summary["accuracy"] if base_summary else None,
        "baseline": (
            "lambda = 0 run of the same recipe (same seed, data and schedule)"
            if base_summary
            else "not trained (--no-baseline)"
        ),
        "bop_reduction": summary["bop_reduction"],
        "weight_bit_reduction": summary["weight_bit_reduction"],
        "max_depth": summary["max_depth"],
        "baseline_bop_reduction": base_summary["bop_reduction"] if base_summary else None,
        "baseline_max_depth": base_summary["max_depth"] if base_summary else None,
        "baseline_weight_bit_reduction": (
            base_summary["weight_bit_reduction"] if base_summary else None
        ),
        "verification": check,
        "verification_reference": ref_check,
        "checkpoint": summary["checkpoint"],
        "compressed": summary["compressed"],
        "baseline_checkpoint": base_summary["checkpoint"] if base_summary else None,
        "recipe": cfg.to_dict(),
        "seconds": round(time.time() - t0, 1),
        "train_seconds": round(t_train, 1),
    }
    log(format_headline(headline))
    path = out / "summary.json"
    write_text_atomic(path, json.dumps(headline, indent=2) + "\n")
    return path


def format_headline(h: dict[str, Any]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    lines = [
        f"{'':28s} {'baseline (lambda=0)':>20s} {'MST-regularized':>16s}",
        f"{'test accuracy':28s} {pct(h['baseline_accuracy']):>20s} {pct(h['accuracy']):>16s}",
        f"{'BOP reduction (3x3 convs)':28s} {x(h['baseline_bop_reduction']):>20s} "
        f"{x(h['bop_reduction']):>16s}",
        f"{'weight-bit reduction':28s} {x(h.get('baseline_weight_bit_reduction')):>20s} "
        f"{x(h['weight_bit_reduction']):>16s}",
        f"{'max tree depth':28s} {str(h['baseline_max_depth'] or '-'):>20s} {h['max_depth']:>16d}",
        f"compressed model (mst engine) accuracy {pct(h['engine_accuracy'])}, "
        f"{'bit-exact' if h['verification']['bit_exact'] else 'NOT bit-exact'} on all "
        f"{h['verification']['images']} test images (reference engine: "
        f"{'bit-exact' if h['verification_reference']['bit_exact'] else 'NOT bit-exact'} on "
        f"{h['verification_reference']['images']}); total {h['seconds']:.0f} s",
    ]
    return "\n".join(lines)
