"""Model checkpoints: a safetensors file of the state_dict plus a JSON header, never pickle.

The safetensors metadata holds one key, ``"mstc"``: a JSON object
``{"format": "mstc-checkpoint", "version": 1, "model": {create_model kwargs incl. "name"},
"config": {...training config, optional}, "extra": {...}}``. A ``config.json`` written beside it by
the trainer is for people; loading needs only the .safetensors file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mstc.errors import FormatError
from mstc.io import atomic_path

CHECKPOINT_FORMAT = "mstc-checkpoint"
CHECKPOINT_VERSION = 1


def model_config(model: nn.Module) -> dict[str, Any]:
    """The create_model arguments of a model built by ``mstc.models.create_model``."""
    cfg = getattr(model, "mstc_config", None)
    if cfg is None:
        raise ValueError("model was not built by mstc.models.create_model (no mstc_config)")
    return dict(cfg)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state_dict and its config to ``path`` atomically."""
    header = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_config(model),
        "config": config or {},
        "extra": extra or {},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"mstc": json.dumps(header)})
    return path


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise FormatError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    try:
        header = json.loads(meta["mstc"])
    except (KeyError, json.JSONDecodeError):
        raise FormatError(
            f"{path}: no mstc checkpoint header in the safetensors metadata"
        ) from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{path}: not an mstc checkpoint (format={header.get('format')!r})")
    if header.get("version") != CHECKPOINT_VERSION:
        raise FormatError(
            f"{path}: checkpoint version {header.get('version')!r} is not supported "
            f"(this mstc reads version {CHECKPOINT_VERSION})"
        )
    return header


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights; returns (model in eval mode, header)."""
    from mstc.models import create_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    header = read_checkpoint_header(path)
    kwargs = dict(header["model"])
    name = kwargs.pop("name")
    model = create_model(name, **kwargs)
    try:
        state = load_file(str(path))
    except SafetensorError as exc:
        raise FormatError(f"{path}: corrupted checkpoint ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FormatError(f"{path}: weights do not fit the model {name!r}: {exc}") from None
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise FormatError(f"{path}: tensor {k!r} contains NaN or infinite values")
    model.eval()
    return model, header


def load_model_or_checkpoint(spec: str, **model_kwargs) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint path, or a registered model name (random weights, seed 0)."""
    from mstc.models import create_model, list_models

    if spec in list_models():
        torch.manual_seed(model_kwargs.pop("seed", 0))
        model = create_model(spec, **model_kwargs)
        model.eval()
        return model, {"model": model_config(model)}
    if not Path(spec).exists():
        raise FileNotFoundError(
            f"{spec!r} is neither a checkpoint file nor a model name ({', '.join(list_models())})"
        )
    return load_checkpoint(spec)
