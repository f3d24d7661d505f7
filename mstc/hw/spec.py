"""What the hardware generator needs to know about one binary layer.

A :class:`LayerSpec` holds the weight bits (Cout, n), the spanning forest (parent, negate), the
differing taps of every child and the folded thresholds. It is built from plain arrays and a
:func:`mstc.mst.plan` result, or from a ``BinaryLayerCode`` of a ``.mstc`` file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mstc.errors import MSTCError
from mstc.hw.fold import Thresholds, fold_bn_sign
from mstc.mst.plan import forest_order


@dataclass(frozen=True)
class LayerSpec:
    """One binary layer for the datapath generator.

    Channel j is a root (parent[j] = -1: full XNOR-popcount over n taps) or a child computed from
    its parent p over the taps ``diff[j]`` where w_j differs from w_p (or from NOT w_p when
    negate[j]):  y_j = (+/-) y_p + 2 * sum_{k in diff[j]} a_k w_jk.
    """

    name: str
    bits: np.ndarray  # uint8 (Cout, n), bit 1 = +1
    parent: np.ndarray  # int64 (Cout,), -1 for roots
    negate: np.ndarray  # bool (Cout,)
    thresholds: Thresholds
    diff: tuple[np.ndarray, ...] = field(default=())

    def __post_init__(self) -> None:
        bits = np.asarray(self.bits, dtype=np.uint8)
        if bits.ndim != 2:
            raise ValueError("bits must be (Cout, n)")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "parent", np.asarray(self.parent, dtype=np.int64))
        object.__setattr__(self, "negate", np.asarray(self.negate, dtype=bool))
        forest_order(self.parent)  # validates
        if not self.diff:
            object.__setattr__(self, "diff", tuple(self._diff_of(j) for j in range(self.cout)))

    def _diff_of(self, j: int) -> np.ndarray:
        p = int(self.parent[j])
        if p < 0:
            return np.arange(self.n, dtype=np.int64)
        ref = self.bits[p] ^ np.uint8(1) if self.negate[j] else self.bits[p]
        return np.flatnonzero(self.bits[j] != ref).astype(np.int64)

    @property
    def cout(self) -> int:
        return int(self.bits.shape[0])

    @property
    def n(self) -> int:
        return int(self.bits.shape[1])

    @property
    def level(self) -> np.ndarray:
        return forest_order(self.parent)[0]

    @property
    def order(self) -> np.ndarray:
        return forest_order(self.parent)[1]

    @property
    def depth(self) -> int:
        return int(self.level.max()) if self.cout else 0

    @property
    def xnors(self) -> int:
        """XNORs per position: n per root plus |diff| per child (= n + sum d for one tree)."""
        return int(sum(len(d) for d in self.diff))

    @property
    def dense_xnors(self) -> int:
        return self.cout * self.n

    @property
    def is_dense(self) -> bool:
        return bool((self.parent < 0).all())

    def dense(self) -> LayerSpec:
        """The same layer with every channel a root (the dense XNOR-popcount design)."""
        return replace(
            self,
            parent=np.full(self.cout, -1, dtype=np.int64),
            negate=np.zeros(self.cout, dtype=bool),
            diff=(),
        )

    @staticmethod
    def from_plan(
        bits: np.ndarray,
        plan=None,
        *,
        thresholds: Thresholds | None = None,
        name: str = "layer",
        complement: bool = False,
        max_depth: int | None = None,
    ) -> LayerSpec:
        """A spec from (Cout, n) bits and a :class:`mstc.mst.Plan` (planned here when None)."""
        from mstc.mst import plan as make_plan

        bits = np.asarray(bits, dtype=np.uint8)
        if plan is None:
            plan = make_plan(bits, complement=complement, max_depth=max_depth)
        th = thresholds if thresholds is not None else Thresholds.sign(bits.shape[0])
        return LayerSpec(name, bits, plan.parent, plan.negate, th)

    @staticmethod
    def from_code(code, *, thresholds: Thresholds | None = None) -> LayerSpec:
        """A spec from a ``BinaryLayerCode`` (mstc.format): its bits, forest and diff lists."""
        bits = np.asarray(code.weight_bits(), dtype=np.uint8)
        ptr = np.asarray(code.diff_ptr, dtype=np.int64)
        idx = np.asarray(code.diff_idx, dtype=np.int64)
        parent = np.asarray(code.parent, dtype=np.int64)
        diff = tuple(
            np.arange(bits.shape[1], dtype=np.int64) if parent[j] < 0 else idx[ptr[j] : ptr[j + 1]]
            for j in range(bits.shape[0])
        )
        if thresholds is None:
            scale = getattr(code, "scale", None)
            bias = getattr(code, "bias", None)
            if scale is None and bias is None:
                thresholds = Thresholds.sign(bits.shape[0])
            else:
                thresholds = fold_bn_sign(bits.shape[1], scale=scale, bias=bias, cout=bits.shape[0])
        spec = LayerSpec(code.name, bits, parent, np.asarray(code.negate, bool), thresholds)
        for j in range(spec.cout):  # the stored diffs must be the ones the bits imply
            if not np.array_equal(np.sort(diff[j]), spec.diff[j]):
                raise ValueError(f"layer {code.name}: diff list of channel {j} does not match bits")
        return spec


def clustered_bits(
    cout: int, n: int, *, centres: int = 4, flip: float = 0.05, seed: int = 0
) -> np.ndarray:
    """'Regularized-like' weights: K random centre filters, each channel a centre with a fraction
    ``flip`` of its taps flipped (what the MST regularizer drives a layer towards)."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 2, size=(centres, n), dtype=np.uint8)
    assign = np.arange(cout) % centres
    flips = (rng.random((cout, n)) < flip).astype(np.uint8)
    return c[assign] ^ flips


def random_bits(cout: int, n: int, *, seed: int = 0) -> np.ndarray:
    """Uniform random (Cout, n) weight bits (an untrained layer)."""
    return np.random.default_rng(seed).integers(0, 2, size=(cout, n), dtype=np.uint8)


def spec_from_model(model, layer: str) -> LayerSpec:
    """The spec of binary layer ``layer`` of a ``CompressedModel``, with the thresholds of
    sign(BN(scale * y + bias)) when a batch_norm node reads the layer's output directly (else
    sign(scale * y + bias)).

    Only valid as the layer's *output bits* when that BN result is binarised next; a residual add
    between the BN and the next sign is outside this datapath (see HARDWARE.md).
    """
    if layer not in model.layers:
        raise MSTCError(f"no binary layer {layer!r}; layers: {', '.join(model.layers)}")
    code = model.layers[layer]
    node = next(
        (
            nd
            for nd in model.nodes
            if nd.op in ("binary_conv2d", "binary_linear") and nd.attrs.get("layer") == layer
        ),
        None,
    )
    bn = None
    if node is not None:
        bn = next(
            (nd for nd in model.nodes if nd.op == "batch_norm" and nd.inputs == [node.name]), None
        )
    kw = {}
    if bn is not None:
        t = model.tensors
        kw = dict(
            gamma=t.get(f"{bn.name}.weight"),
            beta=t.get(f"{bn.name}.bias"),
            mean=t.get(f"{bn.name}.running_mean"),
            var=t.get(f"{bn.name}.running_var"),
            eps=float(bn.attrs.get("eps", 1e-5)),
        )
    th = fold_bn_sign(code.n, scale=code.scale, bias=code.bias, cout=code.cout, **kw)
    return LayerSpec.from_code(code, thresholds=th)
