"""Cost accounting of a CompressedModel (method.md section 4).

Per binary layer, with P output positions:

- XNORs per position: dense Cout*n; MST n per root + sum over children of |D_j|.
- BOPs = P * XNORs per position (dense and MST).
- Weight bits: dense Cout*n; MST the same sum as the XNORs (a child stores only positions).
- Index overhead bits (reported separately): |D_j| * ceil(log2 n) + parent id (+ negate flag).

Network totals follow the convention under which the SNN paper's numbers reproduce: only binary
3x3 convolutions count towards BOPs and binary parameters; full-precision layers count as FLOPs
(multiply-accumulates, the Bi-Real/ReActNet convention), and OPs = FLOPs + BOPs / 64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mstc.format import BinaryLayerCode, CompressedModel


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    cin: int
    cout: int
    kernel: str
    n: int
    positions: int
    dense_xnors: int
    mst_xnors: int
    dense_bops: int
    mst_bops: int
    dense_weight_bits: int
    mst_weight_bits: int
    index_bits: int
    roots: int
    depth: int
    counted: bool  # a binary 3x3 conv: counts towards the network totals

    @property
    def xnor_ratio(self) -> float:
        return self.dense_xnors / max(self.mst_xnors, 1)


@dataclass(frozen=True)
class NetworkCost:
    layers: list[LayerCost]
    fp_flops: int
    binary_params_dense: int
    binary_params_mst: int
    bops_dense: int
    bops_mst: int
    index_bits: int
    max_depth: int

    @property
    def ops_dense(self) -> float:
        return self.fp_flops + self.bops_dense / 64

    @property
    def ops_mst(self) -> float:
        return self.fp_flops + self.bops_mst / 64

    @property
    def bop_reduction(self) -> float:
        return self.bops_dense / max(self.bops_mst, 1)

    @property
    def weight_bit_reduction(self) -> float:
        return self.binary_params_dense / max(self.binary_params_mst, 1)

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(
            ops_dense=self.ops_dense,
            ops_mst=self.ops_mst,
            bop_reduction=self.bop_reduction,
            weight_bit_reduction=self.weight_bit_reduction,
        )
        for layer, obj in zip(self.layers, d["layers"], strict=True):
            obj["xnor_ratio"] = layer.xnor_ratio
        return d


def layer_cost(code: BinaryLayerCode) -> LayerCost:
    p = code.positions
    kh, kw = code.kernel_size
    return LayerCost(
        name=code.name,
        kind=code.kind,
        cin=code.cin,
        cout=code.cout,
        kernel=f"{kh}x{kw}",
        n=code.n,
        positions=p,
        dense_xnors=code.dense_xnors,
        mst_xnors=code.xnors,
        dense_bops=p * code.dense_xnors,
        mst_bops=p * code.xnors,
        dense_weight_bits=code.dense_xnors,
        mst_weight_bits=code.xnors,
        index_bits=code.index_bits,
        roots=int(code.roots.size),
        depth=code.depth,
        counted=code.kind == "conv2d" and (kh, kw) == (3, 3),
    )


def network_costs(cm: CompressedModel) -> NetworkCost:
    """Per-layer costs and network totals (binary 3x3 convs only) of a CompressedModel."""
    layers = [layer_cost(c) for c in cm.layers.values()]
    counted = [c for c in layers if c.counted]
    return NetworkCost(
        layers=layers,
        fp_flops=int(sum(cm.fp_macs.values())),
        binary_params_dense=sum(c.dense_weight_bits for c in counted),
        binary_params_mst=sum(c.mst_weight_bits for c in counted),
        bops_dense=sum(c.dense_bops for c in counted),
        bops_mst=sum(c.mst_bops for c in counted),
        index_bits=sum(c.index_bits for c in counted),
        max_depth=max((c.depth for c in counted), default=0),
    )


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def format_table(costs: NetworkCost) -> str:
    """A per-layer text table with each MST number beside its dense baseline, then the totals."""
    head = (
        f"{'layer':<28} {'k':>3} {'Cin':>5} {'Cout':>5} {'n':>6} {'P':>6} "
        f"{'XNOR dense':>10} {'XNOR MST':>9} {'ratio':>6} {'BOPs dense':>10} {'BOPs MST':>9} "
        f"{'idx bits':>9} {'roots':>5} {'depth':>5}"
    )
    lines = [head, "-" * len(head)]
    for c in costs.layers:
        mark = "" if c.counted else " *"
        lines.append(
            f"{(c.name + mark)[:28]:<28} {c.kernel:>3} {c.cin:>5} {c.cout:>5} {c.n:>6} "
            f"{c.positions:>6} {c.dense_xnors:>10} {c.mst_xnors:>9} {c.xnor_ratio:>5.2f}x "
            f"{_si(c.dense_bops):>10} {_si(c.mst_bops):>9} {_si(c.index_bits):>9} {c.roots:>5} "
            f"{c.depth:>5}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"binary 3x3 convs: BOPs {costs.bops_dense:,} -> {costs.bops_mst:,} "
        f"({costs.bop_reduction:.2f}x); weight bits {costs.binary_params_dense:,} -> "
        f"{costs.binary_params_mst:,} ({costs.weight_bit_reduction:.2f}x); "
        f"index overhead {costs.index_bits:,} bits; max tree depth {costs.max_depth}"
    )
    lines.append(
        f"full-precision FLOPs {costs.fp_flops:,}; OPs = FLOPs + BOPs/64: "
        f"{_si(costs.ops_dense)} -> {_si(costs.ops_mst)} "
        f"({costs.ops_dense / max(costs.ops_mst, 1):.2f}x)"
    )
    if any(not c.counted for c in costs.layers):
        lines.append("* not a binary 3x3 conv: listed, excluded from the totals (method.md §4)")
    return "\n".join(lines)
