"""Core commands: summary, compress, inspect, verify."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import mstc
from mstc.checkpoint import load_model_or_checkpoint
from mstc.costs import format_table, network_costs


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--complement", action="store_true", help="allow complement (inverse) edges")
    p.add_argument("--max-depth", type=int, default=None, help="bound the height of every tree")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (model names only)")
    p.add_argument("--num-classes", type=int, default=None, help="(model names only)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (model names only)")


def _load_model(args):
    kw = {"width": args.width, "seed": args.seed}
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    return load_model_or_checkpoint(args.model, **kw)


def _check_max_depth(v):
    if v is not None and v < 0:
        raise SystemExit("mstc: error: --max-depth must be >= 0")


def cmd_summary(args) -> int:
    _check_max_depth(args.max_depth)
    model, _ = _load_model(args)
    cm = mstc.compress(model, complement=args.complement, max_depth=args.max_depth)
    costs = network_costs(cm)
    if args.json:
        print(json.dumps(costs.to_json(), indent=2))
    else:
        print(format_table(costs))
    return 0


def _verify_inputs(cm, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *cm.input_shape), generator=g)


def cmd_compress(args) -> int:
    from mstc.verify import verify

    _check_max_depth(args.max_depth)
    model, _ = _load_model(args)
    cm = mstc.compress(model, complement=args.complement, max_depth=args.max_depth)
    if not args.no_verify:
        result = verify(cm, model, _verify_inputs(cm, 2, args.seed))
        if not result.ok:
            print(f"refusing to write {args.output}: {result}")
            return 1
        print(f"verified before writing: {result}")
    path = cm.save(args.output)
    costs = network_costs(cm)
    print(format_table(costs))
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


def cmd_inspect(args) -> int:
    cm = mstc.load(args.file)
    costs = network_costs(cm)
    size = Path(args.file).stat().st_size
    if args.json:
        out = {
            "file": str(args.file),
            "bytes": size,
            "model": cm.model_config,
            "input_shape": list(cm.input_shape),
            "plan_options": cm.plan_options,
            "nodes": len(cm.nodes),
            "costs": costs.to_json(),
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"file: {args.file} ({size:,} bytes), format version {mstc.format.FORMAT_VERSION}")
    print(f"model: {cm.model_config}  input: {list(cm.input_shape)}  plan: {cm.plan_options}")
    print(f"graph: {len(cm.nodes)} nodes, {len(cm.layers)} binary layers")
    print(format_table(costs))
    return 0


def cmd_verify(args) -> int:
    from mstc.verify import verify

    cm = mstc.load(args.file)
    args.model = args.against
    model, _ = _load_model(args)
    if args.batch < 1:
        raise SystemExit("mstc: error: --batch must be >= 1")
    result = verify(cm, model, _verify_inputs(cm, args.batch, args.seed), backend=args.backend)
    print(result)
    return 0 if result.ok else 1


def register(sub) -> None:
    p = sub.add_parser("summary", help="per-layer cost table of a model or checkpoint")
    p.add_argument("model", help="checkpoint (.safetensors) or model name")
    _plan_args(p)
    _model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("compress", help="MST-compress a checkpoint into an .mstc file")
    p.add_argument("model", metavar="CHECKPOINT", help="checkpoint (.safetensors) or model name")
    p.add_argument("-o", "--output", required=True, help="output .mstc file")
    _plan_args(p)
    _model_args(p)
    p.add_argument("--no-verify", action="store_true", help="skip the bit-exact check")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("inspect", help="show an .mstc file's header and per-layer costs")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="bit-exact check of an .mstc file against its checkpoint")
    p.add_argument("file")
    p.add_argument("--against", required=True, help="checkpoint (or model name) to compare with")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backend", default="reference")
    _model_args(p)
    p.set_defaults(func=cmd_verify)
