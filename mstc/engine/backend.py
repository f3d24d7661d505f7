"""The backend interface of the engine and its registry.

A backend computes the integer sums of binary layers; the graph executor
(:mod:`mstc.engine.runtime`) does everything else. For a binary conv with input x (float, NCHW),
the sums are y[n, j, p] = sum_k a_k w_jk with a = sign(x) (sign(0) = +1) over the patch at p,
padding -1, i.e. ``n - 2 * popcount(A XOR W_j)`` on bits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mstc.engine.buffers import BufferPool
from mstc.format import BinaryLayerCode, CompressedModel


class Backend:
    """Base class: subclasses implement :meth:`conv2d` and :meth:`linear`.

    A backend instance is created once per :class:`~mstc.engine.Runtime` and may precompute
    per-layer data in ``__init__`` (packing, tree schedules).
    """

    name = "base"
    #: where the backend takes its large work arrays (set by the Runtime; None: fresh arrays).
    #: Arrays it returns may come from the pool: the caller gives them back or keeps them.
    pool: BufferPool | None = None

    def __init__(self, compressed: CompressedModel, threads: int | None = None) -> None:
        self.compressed = compressed
        self.threads = threads

    def conv2d(self, layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
        """int32 sums (N, Cout, Ho, Wo) of a binary conv for a float32 NCHW input."""
        raise NotImplementedError

    def linear(self, layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
        """int32 sums (N, Cout) of a binary linear layer for a float32 (N, n) input."""
        raise NotImplementedError


def fastest(
    kernels: dict,
    nthreads: int,
    *,
    min_rounds: int = 3,
    budget_s: float = 0.05,
    max_rounds: int = 15,
) -> str:
    """Name of the fastest of some exact, interchangeable kernels (callables).

    Timed on CPU time for one thread (robust to other load) or wall time; round 0 loads them and
    is not counted; the kernels alternate, each keeps its minimum. Short kernels get more rounds
    (until ``budget_s`` is spent, at most ``max_rounds``): on a shared machine two or three
    samples of a 0.5 ms pass decided by noise. Ties go to the first."""
    clock = time.thread_time if nthreads == 1 else time.perf_counter
    times = dict.fromkeys(kernels, float("inf"))
    spent = 0.0
    rnd = 0
    while rnd <= min_rounds or (spent < budget_s and rnd <= max_rounds):
        for name, run in kernels.items():
            t = clock()
            run()
            dt = clock() - t
            if rnd:
                times[name] = min(times[name], dt)
                spent += dt
        rnd += 1
    return min(times, key=times.get)


_BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend] | None = None):
    """Register a backend class (usable as a decorator)."""

    def deco(f):
        _BACKENDS[name] = f
        return f

    return deco(factory) if factory is not None else deco


def backends() -> list[str]:
    """Names of the registered backends."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> Callable[..., Backend]:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {backends()}") from None
