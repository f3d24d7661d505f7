"""Amaranth generator: one compressed binary layer (or a chain) as a pipelined, unrolled datapath.

Per position, with input bits a (n taps, one im2col patch) and constant weights w_j:

- every XNOR with a constant weight bit is a wire (w = 1) or an inverter folded into the next LUT
  (w = 0), so the logic follows the number of taps read: n per root plus d_j per child;
- a **root** is a full XNOR-popcount: c_j = popcount(XNOR(a, w_j)) (matches, 0..n), built as a
  layer of LUT full adders (3 bits -> 2-bit count) then a balanced tree of carry-chain adders,
  with a pipeline register every ``levels_per_stage`` logic levels;
- a **child** j of p adds the popcount m_j of its d_j differing taps to the parent's *registered*
  result, one pipeline stage per tree level:  h_j = h_p + 2 * s_j * m_j,  s_j = s_p * (-1 if
  negate_j) (s = +1 for roots). The match count is c_j = s_j * h_j + o_j with the compile-time
  offset o_j = o_p - d_j (plain edge) or o_j = n - d_j - o_p (complement edge), because
  c_j = c_p - d_j + 2 m_j, resp. c_j = n - d_j - c_p + 2 m_j;
- BatchNorm, scale and sign are one constant compare per channel (see :mod:`mstc.hw.fold`):
  y_j = 2 c_j - n >= T_j (or <= T_j) becomes h_j >= C_j or h_j <= C_j, then the bit is delayed to
  the output slot.

The integer sum of channel j is y_j = 2 * c_j - n = n - 2 * popcount(a XOR w_j).

Streaming interface (all signals synchronous to ``sync``)::

    in_data[P*n]  in_valid  -> in_ready        position p of the beat: in_data[p*n:(p+1)*n]
    out_data[P*Cout] out_valid -> out_ready     channel j of position p: out_data[p*Cout + j]

A beat is accepted on a clock edge where valid and ready are both 1 (AXI-stream rules). The whole
pipeline advances together when ``en = ~out_valid | out_ready``; ``in_ready = en``. With a
consumer that is always ready the initiation interval is 1 beat (P positions) per cycle and the
latency is ``latency`` cycles from the accepting edge to the edge where the result is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat, Const, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mstc.hw.fold import GE
from mstc.hw.spec import LayerSpec


@dataclass
class _TV:
    """A value available at pipeline slot ``slot`` (slot 0 = the input register)."""

    value: Value
    slot: int
    lo: int
    hi: int


class _Pipe:
    """Helper that records registers (all enabled by the pipeline's advance signal)."""

    def __init__(self, m: Module, prefix: str) -> None:
        self.m = m
        self.prefix = prefix
        self.stmts: list = []
        self._delays: dict[tuple[int, int], _TV] = {}
        self.count = 0

    def reg(self, value: Value, lo: int, hi: int, name: str) -> Signal:
        s = Signal(range(lo, hi + 1), name=f"{self.prefix}{name}", reset_less=True)
        self.stmts.append(s.eq(value))
        self.count += 1
        return s

    def wire(self, value: Value, lo: int, hi: int, name: str) -> Signal:
        """A kept combinational node, so that Yosys maps each adder to its own carry chain
        instead of merging a stage's adders into one multi-operand adder of LUTs."""
        s = Signal(range(lo, hi + 1), name=f"{self.prefix}{name}", attrs={"keep": 1})
        self.m.d.comb += s.eq(value)
        return s

    def delay(self, tv: _TV, slot: int, name: str) -> _TV:
        """``tv`` moved to a later slot through registers (shared between users)."""
        if slot < tv.slot:
            raise ValueError("cannot move a value back in time")
        cur = tv
        while cur.slot < slot:
            key = (id(cur.value), cur.slot)
            nxt = self._delays.get(key)
            if nxt is None:
                sig = self.reg(cur.value, cur.lo, cur.hi, f"{name}_d{cur.slot + 1}")
                nxt = _TV(sig, cur.slot + 1, cur.lo, cur.hi)
                self._delays[key] = nxt
            cur = nxt
        return cur

    def popcount(self, bits: Value, count: int, slot: int, levels_per_stage: int, name: str) -> _TV:
        """popcount of the ``count`` bits of ``bits`` as a pipelined tree: a layer of LUT full
        adders (3 bits -> 2-bit count), then a balanced tree of carry-chain adders."""
        if count == 0:
            return _TV(Const(0, 1), slot, 0, 0)
        g3 = count // 3
        vals: list[tuple[Value, int]] = []
        if g3:
            x = bits[0 : 3 * g3 : 3]
            y = bits[1 : 3 * g3 : 3]
            z = bits[2 : 3 * g3 : 3]
            s = Signal(g3, name=f"{self.prefix}{name}_fs")
            c = Signal(g3, name=f"{self.prefix}{name}_fc")
            self.m.d.comb += [s.eq(x ^ y ^ z), c.eq((x & y) | (x & z) | (y & z))]
            vals = [(Cat(s[i], c[i]), 3) for i in range(g3)]
        rest = count - 3 * g3
        if rest == 2:
            x, y = bits[count - 2], bits[count - 1]
            vals.append((Cat(x ^ y, x & y), 2))
        elif rest == 1:
            vals.append((bits[count - 1], 1))
        level = 1
        stage_levels = 1
        while True:
            done = len(vals) == 1
            if done or stage_levels >= levels_per_stage:
                vals = [
                    (self.reg(v, 0, hi, f"{name}_s{slot + 1}_{i}"), hi)
                    for i, (v, hi) in enumerate(vals)
                ]
                slot += 1
                stage_levels = 0
            if done:
                v, hi = vals[0]
                return _TV(v, slot, 0, hi)
            nxt = []
            for i in range(0, len(vals) - 1, 2):
                (a, ha), (b, hb) = vals[i], vals[i + 1]
                nxt.append((self.wire(a + b, 0, ha + hb, f"{name}_a{level}_{i // 2}"), ha + hb))
            if len(vals) % 2:
                nxt.append(vals[-1])
            vals = nxt
            level += 1
            stage_levels += 1


def _ge_const(h: Value, c: int) -> Value:
    """h >= c for a constant c as LUT logic (an AND/OR chain from the LSB up), not a carry chain:
    with K the constant, g_i = h_i & g_{i-1} where K_i = 1 and h_i | g_{i-1} where K_i = 0.
    A signed h is compared in offset binary (its sign bit inverted)."""
    w = len(h)
    if h.shape().signed:  # offset binary: u = h + 2^(w-1), unsigned
        u = Cat(h[: w - 1], ~h[w - 1])
        k = c + (1 << (w - 1))
    else:
        u = h
        k = c
    if k <= 0:
        return Const(1, 1)
    if k >= (1 << w):
        return Const(0, 1)
    g: Value = Const(1, 1)  # u >= 0 over no bits
    for i in range(w):
        g = (u[i] & g) if (k >> i) & 1 else (u[i] | g)
    return g


def _ceil_half(x: int) -> int:
    return -((-x) // 2)


class LayerDatapath(wiring.Component):
    """The pipelined datapath of one binary layer, ``parallel`` positions per cycle.

    Parameters: ``spec`` (a :class:`LayerSpec`; use ``spec.dense()`` for the dense design),
    ``parallel`` (positions per cycle P), ``levels_per_stage`` (logic levels between pipeline
    registers in the popcount trees), ``emit_sums`` (keep every channel's h_j aligned to the
    output slot in ``sums[p][j]``, for simulation; y_j = 2 * (sigma_j * h_j + offset_j) - n).

    Attributes after construction: ``latency`` (cycles), ``sigma``, ``offset`` (per channel),
    ``slot_of`` (slot where each h_j is registered).
    """

    def __init__(
        self,
        spec: LayerSpec,
        *,
        parallel: int = 1,
        levels_per_stage: int = 2,
        emit_sums: bool = False,
    ) -> None:
        if parallel < 1 or levels_per_stage < 1:
            raise ValueError("parallel and levels_per_stage must be >= 1")
        self.spec = spec
        self.parallel = parallel
        self.levels_per_stage = levels_per_stage
        self.emit_sums = emit_sums
        n, cout = spec.n, spec.cout
        super().__init__(
            {
                "in_data": In(parallel * n),
                "in_valid": In(1),
                "in_ready": Out(1),
                "out_data": Out(parallel * cout),
                "out_valid": Out(1),
                "out_ready": In(1),
            }
        )
        # compile-time bookkeeping (sigma, offset) per channel
        sigma = np.ones(cout, dtype=np.int64)
        offset = np.zeros(cout, dtype=np.int64)
        for j in spec.order.tolist():
            p = int(spec.parent[j])
            if p < 0:
                continue
            d = len(spec.diff[j])
            if spec.negate[j]:
                sigma[j] = -sigma[p]
                offset[j] = n - d - offset[p]
            else:
                sigma[j] = sigma[p]
                offset[j] = offset[p] - d
        self.sigma = sigma
        self.offset = offset
        self.sums: list[list[Signal]] = []
        self.latency = self._schedule_latency()

    # -- scheduling without building, so that latency is known before elaborate ----------
    def _pop_slots(self, k: int) -> int:
        if k == 0:
            return 0
        nvals = (k + 2) // 3
        levels = 1
        while nvals > 1:
            nvals = (nvals + 1) // 2
            levels += 1
        return _ceil_half_levels(levels, self.levels_per_stage)

    def _schedule_latency(self) -> int:
        spec = self.spec
        ready = np.zeros(spec.cout, dtype=np.int64)
        for j in spec.order.tolist():
            p = int(spec.parent[j])
            t_m = self._pop_slots(len(spec.diff[j]))
            if p < 0:
                ready[j] = t_m
            elif len(spec.diff[j]) == 0:
                ready[j] = ready[p]
            else:
                ready[j] = max(int(ready[p]), t_m) + 1
        self.slot_of = ready
        final = int(ready.max()) + 1  # threshold compare registered
        return final + 1

    # -- hardware -------------------------------------------------------------------------
    def _position(self, pipe: _Pipe, a: Value, pos: int) -> list[_TV]:
        spec = self.spec
        n = spec.n
        lps = self.levels_per_stage
        h: dict[int, _TV] = {}
        for j in spec.order.tolist():
            p = int(spec.parent[j])
            taps = spec.diff[j].tolist()
            if taps:  # XNOR with constant weights: a wire or an inverter per tap
                sel = Cat(*(a[k] for k in taps))
                inv = sum(1 << i for i, k in enumerate(taps) if not spec.bits[j, k])
                xn = Signal(len(taps), name=f"p{pos}_x{j}")
                pipe.m.d.comb += xn.eq(sel ^ Const(inv, len(taps)))
            else:
                xn = Const(0, 1)
            m = pipe.popcount(xn, len(taps), 0, lps, f"p{pos}_m{j}")
            s = int(self.sigma[j])
            o = int(self.offset[j])
            lo, hi = (-o, n - o) if s > 0 else (o - n, o)
            if p < 0:
                h[j] = _TV(m.value, m.slot, 0, n)
                continue
            hp = h[p]
            if not taps:
                h[j] = _TV(hp.value, hp.slot, lo, hi)
                continue
            t = max(hp.slot, m.slot)
            hpv = pipe.delay(hp, t, f"p{pos}_h{p}").value
            mv = pipe.delay(m, t, f"p{pos}_m{j}").value
            expr = hpv + (mv << 1) if s > 0 else hpv - (mv << 1)
            h[j] = _TV(pipe.reg(expr, lo, hi, f"p{pos}_h{j}"), t + 1, lo, hi)
        # thresholds: y = 2c - n >= T  <=>  c >= ceil((T + n) / 2);  c = s*h + o
        out: list[_TV] = []
        for j in range(spec.cout):
            hv = h[j]
            t_int = int(spec.thresholds.t[j])
            s = int(self.sigma[j])
            o = int(self.offset[j])
            if spec.thresholds.direction[j] == GE:
                k = _ceil_half(t_int + n)
                cmp_ge = s > 0  # c >= k
                c = k - o if s > 0 else o - k  # h >= c  or  h <= c
            else:
                k = (t_int + n) // 2
                cmp_ge = s < 0  # c <= k
                c = k - o if s > 0 else o - k
            if not cmp_ge:  # h <= c  <=>  not (h >= c + 1)
                c += 1
            if c <= hv.lo:
                bit: Value = Const(1, 1)
            elif c > hv.hi:
                bit = Const(0, 1)
            else:
                bit = _ge_const(hv.value, c)
            if not cmp_ge:
                bit = ~bit
            out.append(_TV(pipe.reg(bit, 0, 1, f"p{pos}_y{j}"), hv.slot + 1, 0, 1))
        self._h = h
        return out

    def elaborate(self, platform) -> Module:
        m = Module()
        spec = self.spec
        n, cout, P = spec.n, spec.cout, self.parallel
        final = self.latency - 1
        en = Signal()
        pipe = _Pipe(m, "")
        a = Signal(P * n, name="a_in", reset_less=True)
        pipe.stmts.append(a.eq(self.in_data))
        valid = Signal(final + 1, name="valid")
        pipe.stmts.append(valid.eq(Cat(self.in_valid, valid[:-1])))
        outs = []
        self.sums = []
        for pos in range(P):
            ys = self._position(pipe, a[pos * n : (pos + 1) * n], pos)
            outs.extend(pipe.delay(y, final, f"p{pos}_y{j}").value for j, y in enumerate(ys))
            if self.emit_sums:
                self.sums.append(
                    [pipe.delay(self._h[j], final, f"p{pos}_h{j}").value for j in range(cout)]
                )
        m.d.comb += [
            en.eq(~valid[final] | self.out_ready),
            self.in_ready.eq(en),
            self.out_valid.eq(valid[final]),
            self.out_data.eq(Cat(*outs)),
        ]
        with m.If(en):
            m.d.sync += pipe.stmts
        return m


def _ceil_half_levels(levels: int, per_stage: int) -> int:
    """Pipeline slots of a popcount tree with ``levels`` logic levels, a register every
    ``per_stage`` levels and always one at the end."""
    return -((-levels) // per_stage)


class LayerChain(wiring.Component):
    """Layers in sequence, each layer's output bits the next one's input (n_{i+1} = Cout_i, e.g.
    1x1 convolutions or fully connected layers on the same positions); ready/valid between them."""

    def __init__(self, specs: list[LayerSpec], *, parallel: int = 1, **kw) -> None:
        if not specs:
            raise ValueError("empty chain")
        for s0, s1 in zip(specs, specs[1:], strict=False):
            if s1.n != s0.cout:
                raise ValueError(f"{s1.name}: n = {s1.n} but the previous layer has {s0.cout}")
        self.parallel = parallel
        self.layers = [LayerDatapath(s, parallel=parallel, **kw) for s in specs]
        self.latency = sum(layer.latency for layer in self.layers)
        super().__init__(
            {
                "in_data": In(parallel * specs[0].n),
                "in_valid": In(1),
                "in_ready": Out(1),
                "out_data": Out(parallel * specs[-1].cout),
                "out_valid": Out(1),
                "out_ready": In(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        for i, layer in enumerate(self.layers):
            m.submodules[f"layer{i}"] = layer
        first, last = self.layers[0], self.layers[-1]
        m.d.comb += [
            first.in_data.eq(self.in_data),
            first.in_valid.eq(self.in_valid),
            self.in_ready.eq(first.in_ready),
            self.out_data.eq(last.out_data),
            self.out_valid.eq(last.out_valid),
            last.out_ready.eq(self.out_ready),
        ]
        for a, b in zip(self.layers, self.layers[1:], strict=False):
            m.d.comb += [
                b.in_data.eq(a.out_data),
                b.in_valid.eq(a.out_valid),
                a.out_ready.eq(b.in_ready),
            ]
        return m
