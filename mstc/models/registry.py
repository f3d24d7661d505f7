"""Model registry: ``create_model(name, ...)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator registering a model factory ``fn(num_classes, in_channels, width, **kw)``."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} already registered")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, **kwargs
) -> nn.Module:
    """Build a registered model. ``width`` multiplies every channel count (rounded, at least 1)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known: {list_models()}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError("num_classes and in_channels must be >= 1")
    model = _MODELS[name](num_classes=num_classes, in_channels=in_channels, width=width, **kwargs)
    model.mstc_config = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "width": width,
        **kwargs,
    }
    return model


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))
