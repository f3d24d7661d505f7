"""Running a generated datapath in Amaranth's simulator on input vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from mstc.hw.datapath import LayerChain, LayerDatapath


@dataclass
class SimResult:
    """Outputs of a simulation, one row per beat: ``bits`` (beats, P, Cout), ``sums`` (beats, P,
    Cout) integer sums y (only for a LayerDatapath built with emit_sums), ``cycles`` simulated and
    ``first_out`` (cycle of the first output, = latency with a ready consumer)."""

    bits: np.ndarray
    sums: np.ndarray | None
    cycles: int
    first_out: int


def _pack(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits[::-1]).tobytes(), "big") >> ((-len(bits)) % 8)


def _unpack(value: int, width: int) -> np.ndarray:
    return np.array([(value >> i) & 1 for i in range(width)], dtype=np.uint8)


def simulate(
    dut: LayerDatapath | LayerChain,
    inputs: np.ndarray,
    *,
    stall_seed: int | None = None,
    max_cycles: int | None = None,
) -> SimResult:
    """Feed ``inputs`` (beats, P, n) or (beats, n) bits through ``dut``; collect its outputs.

    With ``stall_seed`` the producer's valid and the consumer's ready are randomly deasserted
    (back-pressure and bubbles); without it both are always 1.
    """
    inputs = np.asarray(inputs, dtype=np.uint8)
    if inputs.ndim == 2:
        inputs = inputs[:, None, :]
    beats, P, n = inputs.shape
    if P != dut.parallel:
        raise ValueError("inputs do not match the datapath's parallelism")
    layer_last = dut if isinstance(dut, LayerDatapath) else dut.layers[-1]
    cout = layer_last.spec.cout
    words = [_pack(inputs[b].reshape(-1)) for b in range(beats)]
    rng = np.random.default_rng(stall_seed) if stall_seed is not None else None
    limit = max_cycles or (beats * (4 if rng is None else 8) + 4 * (dut.latency + 8))
    got_bits: list[np.ndarray] = []
    got_sums: list[np.ndarray] = []
    state = {"cycles": 0, "first": -1}
    want_sums = isinstance(dut, LayerDatapath) and dut.emit_sums

    async def bench(ctx) -> None:
        i = 0
        for cycle in range(limit):
            v = i < beats and (rng is None or rng.random() < 0.7)
            r = rng is None or rng.random() < 0.7
            ctx.set(dut.in_valid, int(v))
            ctx.set(dut.in_data, words[i] if i < beats else 0)
            ctx.set(dut.out_ready, int(r))
            if v and ctx.get(dut.in_ready):
                i += 1
            if r and ctx.get(dut.out_valid):
                if state["first"] < 0:
                    state["first"] = cycle
                got_bits.append(_unpack(ctx.get(dut.out_data), P * cout).reshape(P, cout))
                if want_sums:
                    hs = np.array([[ctx.get(s) for s in row] for row in dut.sums], dtype=np.int64)
                    got_sums.append(2 * (dut.sigma * hs + dut.offset) - dut.spec.n)
            await ctx.tick()
            state["cycles"] = cycle + 1
            if len(got_bits) == beats:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if len(got_bits) != beats:
        raise RuntimeError(f"simulation produced {len(got_bits)} of {beats} outputs")
    return SimResult(
        np.stack(got_bits),
        np.stack(got_sums) if want_sums else None,
        state["cycles"],
        state["first"],
    )
