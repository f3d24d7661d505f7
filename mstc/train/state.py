"""The resumable training state: model, optimizer, regularizer, RNG, history; one atomic file.

``state.safetensors`` holds tensors ``model.<key>``, ``optim.<param index>.<key>`` and
``rng.torch`` (plus ``rng.cuda`` where used); its metadata key ``"mstc-train-state"`` is a JSON
object with the format, version, completed epochs, global step, the optimizer's non-tensor state,
the regularizer's state, the resolved config and the per-epoch history. Everything needed to
continue is in this one file, written with :func:`mstc.io.atomic_path`, so a crash mid-write
leaves the previous state intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mstc.errors import FormatError
from mstc.io import atomic_path

STATE_FORMAT = "mstc-train-state"
STATE_VERSION = 1
META_KEY = "mstc-train-state"


def _split_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
) -> Path:
    """Write the training state atomically; ``info`` is JSON-able (epoch, step, history, ...)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "optimizer": opt_meta, **info}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a state file; :class:`FormatError` when unreadable or foreign."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable training state ({exc})") from None
    if raw is None:
        raise FormatError(f"{path}: not an mstc training state (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: corrupt training-state header ({exc})") from None
    if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
        raise FormatError(
            f"{path}: unsupported training state {meta.get('format')!r} "
            f"version {meta.get('version')!r}"
        )
    return tensors, meta


def restore_state(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Load model and optimizer state and the RNG from :func:`read_state`'s output."""
    dev = next(model.parameters()).device
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_state, strict=True)
    opt_state = _join_optimizer(tensors, meta["optimizer"])
    optimizer.load_state_dict(opt_state)
    for st in optimizer.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(dev)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
