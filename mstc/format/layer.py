"""The compressed code of one binary layer: a spanning forest over its output channels.

Storage (method.md section 4): every root filter as n packed bits; every child as its parent id,
a negate flag and the sorted list D_j of taps where it differs from its parent (from NOT parent
for a complement edge), in CSR form (``diff_ptr``, ``diff_idx``). Reconstruction:

    w_j = (w_parent XOR negate_j) with the taps in D_j flipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mstc.bitpack import pack_bytes, unpack_bytes
from mstc.mst import Plan
from mstc.mst.plan import forest_order


def index_dtype(n: int) -> np.dtype:
    """Smallest dtype of the stored difference indices: uint16 for n <= 65536, else int32."""
    return np.dtype(np.uint16) if n <= 65536 else np.dtype(np.int32)


@dataclass(eq=False)
class BinaryLayerCode:
    """One binary layer in compressed form (see module docstring). Taps are in PyTorch order."""

    name: str
    kind: str  # "conv2d" | "linear"
    cout: int
    cin: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    parent: np.ndarray  # int32 (cout,)
    negate: np.ndarray  # bool (cout,)
    root_bits: np.ndarray  # uint8 (n_roots, ceil(n/8)), roots in increasing channel order
    diff_ptr: np.ndarray  # int64 (cout+1,)
    diff_idx: np.ndarray  # uint16/int32 (nnz,)
    scale: np.ndarray | None = None  # float32 (cout,)
    bias: np.ndarray | None = None  # float32 (cout,)
    out_hw: tuple[int, int] = (1, 1)  # output positions of the traced input shape
    plan_options: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.cin * self.kernel_size[0] * self.kernel_size[1]

    @property
    def roots(self) -> np.ndarray:
        return np.flatnonzero(self.parent < 0)

    @cached_property
    def _levels(self) -> tuple[np.ndarray, np.ndarray]:
        return forest_order(self.parent.astype(np.int64))

    @property
    def level(self) -> np.ndarray:
        return self._levels[0]

    @property
    def order(self) -> np.ndarray:
        """Channels parents-first (a topological order of the forest)."""
        return self._levels[1]

    @property
    def depth(self) -> int:
        return int(self.level.max()) if self.cout else 0

    @property
    def edge_cost(self) -> np.ndarray:
        """n for a root, |D_j| for a child."""
        cost = np.diff(self.diff_ptr).astype(np.int64)
        cost[self.parent < 0] = self.n
        return cost

    @property
    def xnors(self) -> int:
        """XNORs (and stored weight bits) per output position: n per root + sum |D_j|."""
        return int(self.edge_cost.sum())

    @property
    def dense_xnors(self) -> int:
        return self.cout * self.n

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def index_bits(self) -> int:
        """Storage overhead of the tree: ceil(log2 n) bits per stored index, plus per child a
        parent id (ceil(log2 Cout) bits) and a negate flag when complement edges are enabled."""
        children = int((self.parent >= 0).sum())
        per_child = max(1, math.ceil(math.log2(max(self.cout, 2))))
        if self.plan_options.get("complement"):
            per_child += 1
        return int(len(self.diff_idx)) * max(1, math.ceil(math.log2(max(self.n, 2)))) + (
            children * per_child
        )

    def diffs(self, j: int) -> np.ndarray:
        return self.diff_idx[self.diff_ptr[j] : self.diff_ptr[j + 1]].astype(np.int64)

    def weight_bits(self) -> np.ndarray:
        """Reconstruct the (cout, n) {0,1} weight bits by walking the forest parents-first."""
        n = self.n
        bits = np.zeros((self.cout, n), dtype=np.uint8)
        bits[self.roots] = unpack_bytes(self.root_bits, n)
        for j in self.order:
            p = self.parent[j]
            if p < 0:
                continue
            row = bits[p] ^ np.uint8(self.negate[j])
            row[self.diffs(j)] ^= 1
            bits[j] = row
        return bits

    @classmethod
    def from_bits(cls, name: str, bits: np.ndarray, plan: Plan, **geometry) -> BinaryLayerCode:
        """Encode (cout, n) weight bits along a plan's forest."""
        bits = np.asarray(bits, dtype=np.uint8)
        cout, n = bits.shape
        parent = plan.parent.astype(np.int32)
        negate = plan.negate.astype(bool) & (parent >= 0)
        counts = np.zeros(cout, dtype=np.int64)
        rows = []
        for j in range(cout):
            p = parent[j]
            if p < 0:
                rows.append(np.zeros(0, dtype=np.int64))
                continue
            target = bits[p] ^ np.uint8(negate[j])
            d = np.flatnonzero(bits[j] != target)
            rows.append(d)
            counts[j] = d.size
        diff_ptr = np.zeros(cout + 1, dtype=np.int64)
        np.cumsum(counts, out=diff_ptr[1:])
        diff_idx = (np.concatenate(rows) if rows else np.zeros(0)).astype(index_dtype(n))
        root_bits = pack_bytes(bits[parent < 0])
        return cls(
            name=name,
            parent=parent,
            negate=negate,
            root_bits=root_bits,
            diff_ptr=diff_ptr,
            diff_idx=diff_idx,
            cout=cout,
            **geometry,
        )
