"""Cycle and area model of whole binary networks on the generated datapath (FINN-style folding).

Per layer and per output position, the datapath of :mod:`mstc.hw.datapath` has, counted exactly
from its structure (no synthesis):

- ``fa``: LUT4s of the full-adder layer: 2 per group of 3 taps (n per root, d_j per child) before
  sharing; counted as the number of *distinct* functions, because synthesis merges the parity of
  the same three taps (equal up to an inversion in every channel) and equal majority functions
  across channels, which makes the dense design's first stage almost free for large Cout;
- ``tree``: CCU2C cells of the popcount adder trees (ceil(width / 2) per adder), the first adder
  level counted once per distinct (taps, weights) pair, as synthesis merges equal adders that
  sit before the first register (this is what makes a dense layer of *clustered* weights cheaper
  than a random one: synthesis finds part of the reuse by itself);
- ``child``: CCU2C cells of the child adders h_j = h_p +/- 2 m_j;
- ``cmp``: LUT4s of the threshold compares (an AND/OR chain, about (w - 1) / 3 LUT4s for a
  w-bit h; one per channel, the same in dense and MST);
- ``ffs``: pipeline register bits (approximate: delay registers shared between users are counted
  per user).

Logic area (LUT4 equivalents) = ``a_fa * (fa + cmp) + a_ccu * 2 * (tree + child)``, with the two
coefficients fitted (least squares) on synthesised layers by :func:`fit_area`
(``benchmarks/hw_calibrate.py``; :data:`DEFAULT_COEF` holds the fit of HARDWARE.md, mean
relative error 1.8%). Latency of a layer is the popcount stages of its roots plus one
stage per tree level plus the compare register (the generator's own schedule).

Folding: a layer with P_l output positions and fold factor F_l (cycles per position; F_l < 1 means
1/F_l positions per cycle, F_l > 1 a datapath time-multiplexed over channel groups as FINN's
PE/SIMD folding does) needs area A_l / F_l and has initiation interval II_l = F_l * P_l cycles per
image. Balanced folding gives every layer the same II = C cycles per image (F_l = C / P_l), so a
LUT budget B gives C = sum_l A_l * P_l / B and FPS = f_clk / C. The image latency is
C + sum_l (pipeline latency_l + line-buffer fill_l), fill_l = ((kh - 1) * W_in + kw) * F_l * s_l^2
(s_l the stride), an idealised dataflow estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mstc.hw.spec import LayerSpec, clustered_bits, random_bits


def _bits_for(lo: int, hi: int) -> int:
    """Width of an Amaranth Signal(range(lo, hi + 1))."""
    if lo >= 0:
        return max(1, int(hi).bit_length())
    return max(int(hi).bit_length(), int(-lo - 1).bit_length()) + 1


def popcount_cost(k: int, levels_per_stage: int = 2) -> dict:
    """Structure of the generator's popcount of k taps: fa LUTs, tree CCU2Cs, register bits,
    pipeline slots."""
    if k == 0:
        return {"fa": 0, "tree": 0, "ffs": 0, "slots": 0, "hi": 0}
    g3, rest = divmod(k, 3)
    his = [3] * g3 + ([rest] if rest else [])
    fa = 2 * g3 + (2 if rest == 2 else 0)
    tree = 0
    ffs = 0
    slots = 0
    stage_levels = 1
    while True:
        done = len(his) == 1
        if done or stage_levels >= levels_per_stage:
            ffs += sum(_bits_for(0, h) for h in his)
            slots += 1
            stage_levels = 0
        if done:
            return {"fa": fa, "tree": tree, "ffs": ffs, "slots": slots, "hi": his[0]}
        nxt = []
        for i in range(0, len(his) - 1, 2):
            h = his[i] + his[i + 1]
            tree += math.ceil(_bits_for(0, h) / 2)
            nxt.append(h)
        if len(his) % 2:
            nxt.append(his[-1])
        his = nxt
        stage_levels += 1


@dataclass
class LayerCost:
    """Structural counts of one layer's datapath, per position (see module docstring)."""

    name: str
    cout: int
    n: int
    xnors: int
    depth: int
    fa: int
    tree: int
    child: int
    cmp: int
    ffs: int
    latency: int
    extra: dict = field(default_factory=dict)

    def features(self) -> np.ndarray:
        return np.array([self.fa + self.cmp, 2 * (self.tree + self.child)], dtype=np.float64)


def layer_cost(spec: LayerSpec, levels_per_stage: int = 2) -> LayerCost:
    """Exact structural counts of :class:`mstc.hw.LayerDatapath` for ``spec`` (one position)."""
    n = spec.n
    fa = tree = child = cmp = ffs = 0
    ready = np.zeros(spec.cout, dtype=np.int64)
    sigma = np.ones(spec.cout, dtype=np.int64)
    offset = np.zeros(spec.cout, dtype=np.int64)
    pc_cache: dict[int, dict] = {}
    ffs += n  # input register
    fa_keys: list[np.ndarray] = []  # full-adder functions: synthesis shares equal ones
    add_keys: list[np.ndarray] = []  # first-level adders (same stage as the FA layer)
    add_cost: list[np.ndarray] = []
    for j in spec.order.tolist():
        k = len(spec.diff[j])
        pc = pc_cache.get(k) or pc_cache.setdefault(k, popcount_cost(k, levels_per_stage))
        fa += pc["fa"]
        tree += pc["tree"]
        taps = spec.diff[j]
        if k:
            # leaves of the FA layer: (tap triple, weight pattern), triples encoded base n + 1
            g = -(-k // 3)
            t = np.zeros(3 * g, dtype=np.int64)
            t[:k] = taps + 1
            wb = np.zeros(3 * g, dtype=np.int64)
            wb[:k] = spec.bits[j, taps]
            t = t.reshape(g, 3)
            code = (t[:, 0] * (n + 1) + t[:, 1]) * (n + 1) + t[:, 2]
            pat = wb.reshape(g, 3) @ np.array([1, 2, 4])
            size = (t > 0).sum(axis=1)
            full = (1 << size) - 1
            multi = size >= 2
            fa_keys.append(np.stack([code[multi], np.full(multi.sum(), -1)], axis=1))
            canon = np.minimum(pat, pat ^ full)
            fa_keys.append(np.stack([code[multi], canon[multi]], axis=1))
            if levels_per_stage >= 2 and g > 1:
                # the first adder level sits before the first register: equal adders (same
                # taps, same weights) in different channels are merged by synthesis
                h = g // 2 * 2
                leaf = code * 8 + pat
                add_keys.append(np.stack([leaf[0:h:2], leaf[1:h:2]], axis=1))
                his = size[0:h:2] + size[1:h:2]
                add_cost.append(np.array([math.ceil(_bits_for(0, int(x)) / 2) for x in his]))
        ffs += pc["ffs"]
        p = int(spec.parent[j])
        if p < 0:
            ready[j] = pc["slots"]
        else:
            if spec.negate[j]:
                sigma[j] = -sigma[p]
                offset[j] = n - k - offset[p]
            else:
                sigma[j] = sigma[p]
                offset[j] = offset[p] - k
            if k == 0:
                ready[j] = ready[p]
                continue
            t = max(int(ready[p]), pc["slots"])
            o = int(offset[j])
            lo, hi = (-o, n - o) if sigma[j] > 0 else (o - n, o)
            w = _bits_for(lo, hi)
            child += math.ceil((w + 1) / 2)
            ffs += w  # the h_j register
            # delays of the parent's result and of m_j up to slot t
            ffs += (t - pc["slots"]) * _bits_for(0, pc["hi"])
            ready[j] = t + 1
    width = np.array(
        [
            _bits_for(*((-int(o), n - int(o)) if s > 0 else (int(o) - n, int(o))))
            for s, o in zip(sigma, offset, strict=True)
        ]
    )
    cmp = int(np.ceil((width - 1) / 3).sum())  # LUT4s of the AND/OR compare chains
    n_fa = len(np.unique(np.concatenate(fa_keys), axis=0)) if fa_keys else 0
    if add_keys:
        keys = np.concatenate(add_keys)
        cost = np.concatenate(add_cost)
        _, first = np.unique(keys, axis=0, return_index=True)
        tree -= int(cost.sum() - cost[first].sum())  # only the first copy of each adder counts
    final = int(ready.max()) + 1
    ffs += spec.cout + int((final - (ready + 1)).sum())  # output bits and their delays
    return LayerCost(
        spec.name,
        spec.cout,
        n,
        spec.xnors,
        spec.depth,
        n_fa,
        tree,
        child,
        cmp,
        ffs,
        final + 1,
        {"fa_unshared": fa},
    )


def fit_area(costs: list[LayerCost], measured: list[float]) -> tuple[np.ndarray, list[float]]:
    """Least-squares coefficients (a_fa, a_ccu) of measured = a_fa*fa + a_ccu*2*CCU2C, and the
    relative error of the fit on each design."""
    X = np.stack([c.features() for c in costs])
    y = np.asarray(measured, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ coef
    return coef, [float(e) for e in (pred - y) / y]


#: default coefficients: LUT4-equivalents per FA LUT and per CCU2C half, fitted on the synthesised
#: layers of HARDWARE.md (``python benchmarks/hw_calibrate.py``; mean |error| 1.8%)
DEFAULT_COEF = (0.925, 1.038)
#: mean measured Fmax (MHz) of the synthesised layers of HARDWARE.md, per design kind
DEFAULT_FMAX = {"dense": 142.0, "mst": 176.0}


# --- network shapes: binary 3x3 convolutions only (method.md section 4 convention) ------------


@dataclass(frozen=True)
class ConvShape:
    name: str
    cin: int
    cout: int
    h_out: int
    w_out: int
    stride: int = 1
    k: int = 3

    @property
    def n(self) -> int:
        return self.cin * self.k * self.k

    @property
    def positions(self) -> int:
        return self.h_out * self.w_out


def network_shapes(name: str) -> list[ConvShape]:
    """Binary 3x3 conv shapes of ``vgg_small``, ``resnet20``, ``resnet18`` (CIFAR stem, 32x32) or
    ``resnet18_imagenet`` (224x224)."""
    if name == "vgg_small":
        return [
            ConvShape("conv2", 128, 128, 32, 32),
            ConvShape("conv3", 128, 256, 16, 16),
            ConvShape("conv4", 256, 256, 16, 16),
            ConvShape("conv5", 256, 512, 8, 8),
            ConvShape("conv6", 512, 512, 8, 8),
        ]
    if name == "resnet20":
        out = []
        for stage, (c, s) in enumerate([(16, 32), (32, 16), (64, 8)]):
            for blk in range(3):
                for conv in range(2):
                    cin = c // 2 if (stage and blk == 0 and conv == 0) else c
                    stride = 2 if (stage and blk == 0 and conv == 0) else 1
                    out.append(
                        ConvShape(f"layer{stage + 1}.{blk}.conv{conv + 1}", cin, c, s, s, stride)
                    )
        return out
    if name in ("resnet18", "resnet18_imagenet"):
        base = 32 if name == "resnet18" else 56
        out = []
        for stage, c in enumerate([64, 128, 256, 512]):
            s = base >> stage
            for blk in range(2):
                for conv in range(2):
                    first = stage and blk == 0 and conv == 0
                    out.append(
                        ConvShape(
                            f"layer{stage + 1}.{blk}.conv{conv + 1}",
                            c // 2 if first else c,
                            c,
                            s,
                            s,
                            2 if first else 1,
                        )
                    )
        return out
    raise ValueError(f"unknown network {name!r}")


def _layer_spec(shape: ConvShape, weights: str, seed: int, complement: bool) -> LayerSpec:
    if weights == "random":
        bits = random_bits(shape.cout, shape.n, seed=seed)
    elif weights.startswith("clustered"):
        # clustered[:K[:flip]]
        parts = weights.split(":")
        k = int(parts[1]) if len(parts) > 1 else 8
        flip = float(parts[2]) if len(parts) > 2 else 0.05
        bits = clustered_bits(shape.cout, shape.n, centres=k, flip=flip, seed=seed)
    else:
        raise ValueError(f"unknown weights {weights!r}: random or clustered[:K[:flip]]")
    return LayerSpec.from_plan(bits, name=shape.name, complement=complement)


def estimate(
    network: str | list[ConvShape],
    *,
    weights: str = "random",
    complement: bool = False,
    lut_budget: float = 80_000.0,
    fmax_mhz: dict | None = None,
    coef: tuple[float, float] = DEFAULT_COEF,
    levels_per_stage: int = 2,
    seed: int = 0,
) -> dict:
    """Whole-network dense vs MST estimate under a LUT budget with balanced folding.

    Returns per-layer rows (n, cout, positions, xnors, depth, area per position, latency) and per
    design the cycles per image C = sum_l A_l P_l / budget, FPS = f / C and latency.
    """
    shapes = network_shapes(network) if isinstance(network, str) else list(network)
    fmax = {**DEFAULT_FMAX, **(fmax_mhz or {})}
    rows = []
    totals = {}
    for label in ("dense", "mst"):
        area_pos = 0.0
        layer_rows = []
        for i, sh in enumerate(shapes):
            spec = _layer_spec(sh, weights, seed + i, complement)
            if label == "dense":
                spec = spec.dense()
            c = layer_cost(spec, levels_per_stage)
            a = float(np.dot(c.features(), coef))
            area_pos += a * sh.positions
            layer_rows.append((sh, c, a))
        cycles = area_pos / lut_budget
        latency = cycles
        for sh, c, _a in layer_rows:
            fold = cycles / sh.positions
            w_in = sh.w_out * sh.stride
            latency += c.latency + ((sh.k - 1) * w_in + sh.k) * fold * sh.stride**2
        f = fmax[label]
        totals[label] = {
            "xnors_per_image": int(sum(c.xnors * sh.positions for sh, c, _ in layer_rows)),
            "lut_positions": area_pos,
            "cycles_per_image": cycles,
            "fps": f * 1e6 / cycles,
            "latency_cycles": latency,
            "latency_us": latency / f,
            "pipeline_latency_cycles": int(sum(c.latency for _, c, _ in layer_rows)),
            "fmax_mhz": f,
        }
        for sh, c, a in layer_rows:
            if label == "dense":
                rows.append(
                    {
                        "layer": sh.name,
                        "cin": sh.cin,
                        "cout": sh.cout,
                        "n": sh.n,
                        "positions": sh.positions,
                        "dense_xnors": c.xnors,
                        "dense_lut_per_pos": round(a),
                        "dense_latency": c.latency,
                    }
                )
            else:
                r = next(r for r in rows if r["layer"] == sh.name)
                r.update(
                    {
                        "mst_xnors": c.xnors,
                        "depth": c.depth,
                        "mst_lut_per_pos": round(a),
                        "mst_latency": c.latency,
                        "xnor_ratio": round(c.xnors / r["dense_xnors"], 4),
                        "lut_ratio": round(a / r["dense_lut_per_pos"], 4),
                    }
                )
    d, m = totals["dense"], totals["mst"]
    return {
        "network": network if isinstance(network, str) else "custom",
        "weights": weights,
        "complement": complement,
        "lut_budget": lut_budget,
        "coef": list(coef),
        "layers": rows,
        "dense": d,
        "mst": m,
        "xnor_ratio": m["xnors_per_image"] / d["xnors_per_image"],
        "area_ratio": m["lut_positions"] / d["lut_positions"],
        "fps_gain": m["fps"] / d["fps"],
    }
