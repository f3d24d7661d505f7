"""Reusable work buffers of a runtime: the engine's large arrays are allocated once per shape.

A pass of the engine allocates and frees MB-size arrays (integer sums, float epilogue outputs,
packed inputs) for every layer. glibc serves such blocks with fresh ``mmap`` pages and unmaps
them on free, so every pass pays a page fault (and the kernel's zeroing) per 4 KiB of every
array it touches first -- on a 2 MB sums array, about as long as the XNOR kernel that fills it
(BENCHMARKS.md, "Buffers"). A :class:`BufferPool` lends arrays and takes them back, so from the
second pass on the engine's own arrays are already mapped.

A lent array is uninitialised (stale data from its last use): every user overwrites what it
reads. The owner of a pass gives arrays back when their last reader is done (:meth:`give`), or
all at once at the end of the pass (:meth:`reclaim`); an array that leaves the pass (returned
to the caller) is :meth:`forget`-ten or copied first.
"""

from __future__ import annotations

import numpy as np


class BufferPool:
    """Arrays by (shape, dtype): :meth:`empty` lends a free one or allocates, :meth:`give`
    takes one back for reuse.

    The pool keeps every array it made (free or lent) and their data addresses, looked up by the
    array's ``id`` -- a batch-1 pass lends and takes back some fifty arrays, and numpy's
    ``ctypes.data`` alone costs ~2 us per call."""

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._lent: dict[int, np.ndarray] = {}  # data address -> array
        self._addr: dict[int, int] = {}  # id(array) -> data address, for the pool's arrays

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``, lent until given back."""
        key = (tuple(shape), _char(dtype))
        free = self._free.get(key)
        if free:
            a = free.pop()
            self._lent[self._addr[id(a)]] = a
            return a
        a = np.empty(key[0], dtype)
        if a.size:
            self._addr[id(a)] = address = a.ctypes.data
            self._lent[address] = a
        return a

    def lent(self, address: int) -> bool:
        """Whether the array at data ``address`` is lent by this pool."""
        return address in self._lent

    def _address(self, a: np.ndarray) -> int | None:
        """The data address of ``a``: cached for the pool's arrays and for contiguous views of
        one of them that cover it whole (a reshape), else numpy's."""
        address = self._addr.get(id(a))
        if address is None:
            base = a.base
            address = self._addr.get(id(base)) if base is not None else None
            if address is not None and not (a.flags.c_contiguous and a.nbytes == base.nbytes):
                address = None
            if address is None and a.size:
                address = a.ctypes.data
        return address

    def give(self, a: np.ndarray) -> None:
        """Take back the lent array behind ``a`` (the array or a view starting at its memory);
        anything else is ignored, so giving twice is harmless."""
        self.give_address(self._address(a))

    def give_address(self, address: int | None) -> None:
        """Take back the lent array whose data starts at ``address`` (if any)."""
        root = self._lent.pop(address, None)
        if root is not None:
            self._free.setdefault((root.shape, root.dtype.char), []).append(root)

    def forget(self, a: np.ndarray) -> None:
        """Stop tracking the lent array behind ``a``: it now belongs to the caller."""
        root = self._lent.pop(self._address(a), None)
        if root is not None:
            del self._addr[id(root)]

    def reclaim(self) -> None:
        """Take back every lent array (the end of a pass: nobody reads them any more)."""
        for a in self._lent.values():
            self._free.setdefault((a.shape, a.dtype.char), []).append(a)
        self._lent.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool: free and lent arrays."""
        free = sum(a.nbytes for arrays in self._free.values() for a in arrays)
        return free + sum(a.nbytes for a in self._lent.values())


_CHARS: dict[object, str] = {}


def _char(dtype) -> str:
    """numpy's type character of ``dtype`` (a type, a dtype or a string), cached."""
    c = _CHARS.get(dtype)
    if c is None:
        c = _CHARS[dtype] = np.dtype(dtype).char
    return c


def empty(pool: BufferPool | None, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``pool.empty(shape, dtype)``, or a fresh ``np.empty`` without a pool."""
    return np.empty(shape, dtype) if pool is None else pool.empty(shape, dtype)
