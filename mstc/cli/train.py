"""``mstc train``, ``mstc eval`` and ``mstc demo``: thin wrappers over :mod:`mstc.train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: (flag, config key, type, help) of every TrainConfig field settable from the command line
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--model", "model", str, "architecture (mstc.models.list_models())"),
    ("--width", "width", float, "channel width multiplier"),
    ("--image-size", "image_size", int, "vgg_small input size (default: the data set's)"),
    ("--dataset", "dataset", str, "fashion-mnist | mnist | cifar10 | imagefolder | synthetic"),
    ("--data-root", "data_root", str, "data folder (default $MSTC_DATA or ~/.cache/mstc/data)"),
    ("--train-subset", "train_subset", int, "train on the first N of a seeded permutation"),
    ("--test-subset", "test_subset", int, "evaluate on N test images"),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--batch-size", "batch_size", int, "global batch size"),
    ("--optimizer", "optimizer", str, "adam | sgd"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--weight-decay", "weight_decay", float, "decay of real-valued conv/linear weights"),
    ("--binary-weight-decay", "binary_weight_decay", float, "decay of latent binary weights"),
    ("--schedule", "schedule", str, "cosine | constant"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warm-up length"),
    ("--stage1-epochs", "stage1_epochs", int, "two-stage: epochs with real-valued weights"),
    ("--label-smoothing", "label_smoothing", float, "cross-entropy label smoothing"),
    ("--mst-lambda", "mst_lambda", float, "weight of the MST regularizer (0 = baseline)"),
    ("--centers", "centers", int, "K centre channels per binary layer"),
    ("--mst-variant", "mst_variant", str, "ste-hamming | masked-hamming | latent-l1"),
    ("--mst-target", "mst_target", str, "centers | forest | mst"),
    ("--mst-update-every", "mst_update_every", int, "steps between re-assignments"),
    ("--mst-freeze-epochs", "mst_freeze_epochs", int, "last epochs with frozen assignments"),
    ("--mst-layer-weighting", "mst_layer_weighting", str, "uniform | bops (layer l x P_l/mean P)"),
    ("--center-init-noise", "center_init_noise", float, "noise of --center-init (x std)"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto | cpu | cuda[:N]"),
    ("--threads", "threads", int, "torch CPU threads"),
    ("--eval-every", "eval_every", int, "evaluate every N epochs (always after the last)"),
    ("--out", "out", str, "output folder (default runs/train)"),
]
_BOOL_FLAGS: list[tuple[str, str, str]] = [
    ("--augment", "augment", "random crop (+ flip where the data set allows)"),
    ("--two-stage", "two_stage", "binary activations first, then weights (ReActNet)"),
    ("--center-init", "center_init", "initialise channels as noisy copies of K centres"),
    ("--complement", "complement", "allow complement (inverted) tree edges"),
    ("--mst-detach-target", "mst_detach_target", "only the child moves towards its target"),
    ("--progress", "progress", "show progress bars"),
    ("--compress", "compress", "compress at the end and print the cost table"),
]


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    for _, key, _, _ in _FLAGS:
        if key == "image_size":
            continue
        out[key] = getattr(args, key)
    for _, key, _ in _BOOL_FLAGS:
        out[key] = getattr(args, key)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from mstc.train import resolve_config, train
    from mstc.train.config import load_config_file

    overrides = _overrides(args)
    if args.image_size is not None:
        base = load_config_file(args.config) if args.config else {}
        overrides["model_kwargs"] = {**base.get("model_kwargs", {}), "image_size": args.image_size}
    cfg = resolve_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    s = result.summary
    if not s:  # a non-zero DDP rank: rank 0 reports
        return 0
    print(
        f"accuracy {s['accuracy']:.4f}  BOP reduction {s['bop_reduction']:.2f}x  "
        f"weight-bit reduction {s['weight_bit_reduction']:.2f}x  max depth {s['max_depth']}"
    )
    print(result.summary_path)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mstc.checkpoint import load_checkpoint
    from mstc.costs import format_table, network_costs
    from mstc.format import compress
    from mstc.train.data import load_split
    from mstc.train.loop import evaluate

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if str(args.checkpoint).endswith(".mstc"):
        return _eval_compressed(args)
    model, header = load_checkpoint(args.checkpoint)
    config = header.get("config") or {}
    dataset = args.dataset or config.get("dataset")
    if not dataset:
        from mstc.errors import MSTCError

        raise MSTCError("the checkpoint does not name its data set: pass --dataset")
    root = args.data_root or config.get("data_root")
    data = load_split(dataset, root, "test", subset=args.test_subset, seed=config.get("seed", 0))
    info = data.info
    acc, loss = evaluate(model, data, batch_size=args.batch_size)
    shape = (info.in_channels, info.image_size, info.image_size)
    costs = network_costs(compress(model, complement=args.complement, input_shape=shape))
    print(format_table(costs))
    result = {
        "checkpoint": str(args.checkpoint),
        "dataset": dataset,
        "images": len(data),
        "accuracy": acc,
        "loss": loss,
        "bop_reduction": costs.bop_reduction,
        "weight_bit_reduction": costs.weight_bit_reduction,
        "max_depth": costs.max_depth,
    }
    print(
        json.dumps(result, indent=2)
        if args.json
        else f"{dataset} test: accuracy {acc:.4f} ({len(data)} images), loss {loss:.4f}; "
        f"BOP reduction {costs.bop_reduction:.2f}x, weight bits {costs.weight_bit_reduction:.2f}x, "
        f"max depth {costs.max_depth}"
    )
    return 0


def _eval_compressed(args: argparse.Namespace) -> int:
    """Accuracy of a compressed .mstc file, run by an engine backend (default: the MST engine)."""
    import numpy as np

    import mstc
    from mstc.costs import format_table, network_costs
    from mstc.engine import Runtime
    from mstc.errors import MSTCError
    from mstc.train.data import load_split

    if not args.dataset:
        raise MSTCError("a .mstc file does not name its data set: pass --dataset")
    cm = mstc.load(args.checkpoint)
    data = load_split(args.dataset, args.data_root, "test", subset=args.test_subset)
    correct = 0
    runtime = Runtime(cm, args.backend, args.threads)  # once: plans, packed weights, autotunes
    for start in range(0, len(data), args.batch_size):
        x = data.images[start : start + args.batch_size].numpy()
        logits = runtime.run(x)
        correct += int(
            (np.asarray(logits).argmax(1) == data.labels[start : start + len(x)].numpy()).sum()
        )
    costs = network_costs(cm)
    print(format_table(costs))
    acc = correct / len(data)
    result = {
        "compressed": str(args.checkpoint),
        "backend": args.backend,
        "dataset": args.dataset,
        "images": len(data),
        "accuracy": acc,
        "bop_reduction": costs.bop_reduction,
        "weight_bit_reduction": costs.weight_bit_reduction,
        "max_depth": costs.max_depth,
    }
    print(
        json.dumps(result, indent=2)
        if args.json
        else f"{args.dataset} test: accuracy {acc:.4f} ({len(data)} images, {args.backend} engine)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mstc.train.demo import run_demo

    summary_path = run_demo(
        out=Path(args.out),
        data_root=args.data_root,
        baseline=not args.no_baseline,
        quick=args.quick,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(summary_path)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a binary network with the MST regularizer",
        description="Train a BNN; flags override --config (YAML). Writes checkpoint, log.csv, "
        "model.mstc and summary.json to --out.",
    )
    p.add_argument("--config", help="YAML file of TrainConfig fields")
    for flag, key, typ, help_ in _FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)
    for flag, key, help_ in _BOOL_FLAGS:
        p.add_argument(
            flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_
        )
    p.add_argument("--resume", action="store_true", help="continue from --out/state.safetensors")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="evaluate a training checkpoint on a test set")
    e.add_argument(
        "checkpoint",
        help="a .safetensors checkpoint written by mstc train, or a compressed .mstc file "
        "(run by an engine; needs --dataset)",
    )
    e.add_argument("--backend", default="mst", help="engine for a .mstc file (default mst)")
    e.add_argument("--dataset", help="data set (default: the one it was trained on)")
    e.add_argument("--data-root", help="data folder")
    e.add_argument("--test-subset", type=int, help="evaluate on N test images")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--threads", type=int)
    e.add_argument("--complement", action="store_true", help="plan with complement edges")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_eval)

    d = subparsers.add_parser(
        "demo",
        help="fetch Fashion-MNIST, train a small BNN with and without the regularizer, compress, "
        "verify bit-exactly, print the table and the headline (< 10 min on 2 cores)",
    )
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--data-root", help="data folder (default $MSTC_DATA or ~/.cache/mstc/data)")
    d.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the lambda=0 baseline training (halves the time)",
    )
    d.add_argument("--quick", action="store_true", help="a much shorter recipe (smoke test)")
    d.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)
