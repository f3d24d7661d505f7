"""sign with straight-through estimators (STEs), registered by name.

Forward of every estimator: sign(x) with sign(0) = +1 (``mstc.conventions``), so the outputs are
exactly +-1. Backward rules:

- ``"ste"``: clipped identity (Hubara et al. 2016): dsign/dx = 1 if |x| <= 1 else 0.
- ``"approx"``: Bi-Real Net's piecewise polynomial (Liu et al. 2018):
  F(x) = -1 (x < -1), 2x + x^2 (-1 <= x < 0), 2x - x^2 (0 <= x < 1), 1 (x >= 1), so
  dF/dx = 2 - 2|x| for |x| < 1 else 0.
- ``"identity"``: plain straight-through, dsign/dx = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_REGISTRY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def register_ste(name: str):
    """Decorator: register a sign function with a custom autograd rule under ``name``."""

    def deco(fn: Callable[[torch.Tensor], torch.Tensor]):
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is already registered")
        _REGISTRY[name] = fn
        fn.ste_name = name  # type: ignore[attr-defined]
        return fn

    return deco


def get_ste(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The sign function registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; known: {sorted(_REGISTRY)}") from None


def list_ste() -> list[str]:
    return sorted(_REGISTRY)


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, no gradient rule (values are exactly +-1, same dtype as x)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _ClippedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


class _IdentitySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


@register_ste("ste")
def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """sign, clipped-identity gradient."""
    return _ClippedSTE.apply(x)


@register_ste("approx")
def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """sign, Bi-Real piecewise-polynomial gradient."""
    return _ApproxSign.apply(x)


@register_ste("identity")
def identity_sign(x: torch.Tensor) -> torch.Tensor:
    """sign, identity gradient."""
    return _IdentitySTE.apply(x)
