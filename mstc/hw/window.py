"""A window generator (line buffer) that turns a raster stream of pixels into im2col patches, so
that 3x3 binary convolutions can be chained in hardware.

Input: one pixel per beat, ``in_data[cin]`` (bit c = channel c), row-major over an H x W image.
Output: one patch per beat, ``out_data[cin*k*k]`` with tap k = (c*k + ky)*k + kx (PyTorch order),
row-major over the H_out x W_out output positions, padding bit 0 (the value -1). Both streams use
valid/ready (a beat moves when both are 1). Frames follow each other without gaps.

The pixels live in a circular buffer of k + 1 rows of W pixels (flip-flops); a patch is read
with multiplexers once the last input pixel it needs has arrived, and input is held off while it
would overwrite a row still needed. This is a functional reference design, small images only:
its read multiplexers grow with W (a shift-register window would be the area-efficient choice).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


def im2col_bits(img, k: int = 3, stride: int = 1, pad: int = 1):
    """Numpy reference: (H, W, C) bits -> (H_out * W_out, C*k*k) patches, padding bit 0."""
    import numpy as np

    img = np.asarray(img, dtype=np.uint8)
    h, w, c = img.shape
    p = np.zeros((h + 2 * pad, w + 2 * pad, c), dtype=np.uint8)
    p[pad : pad + h, pad : pad + w] = img
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    out = np.zeros((ho * wo, c * k * k), dtype=np.uint8)
    for oy in range(ho):
        for ox in range(wo):
            win = p[oy * stride : oy * stride + k, ox * stride : ox * stride + k]  # (k, k, C)
            out[oy * wo + ox] = win.transpose(2, 0, 1).reshape(-1)
    return out


class WindowGenerator(wiring.Component):
    """Raster pixels (cin bits) in, k x k im2col patches (cin*k*k bits) out; see module doc."""

    def __init__(
        self, cin: int, height: int, width: int, *, k: int = 3, stride: int = 1, pad: int = 1
    ) -> None:
        self.cin, self.height, self.width = cin, height, width
        self.k, self.stride, self.pad = k, stride, pad
        self.h_out = (height + 2 * pad - k) // stride + 1
        self.w_out = (width + 2 * pad - k) // stride + 1
        if self.h_out < 1 or self.w_out < 1:
            raise ValueError("image smaller than the window")
        self.rows = k + stride
        super().__init__(
            {
                "in_data": In(cin),
                "in_valid": In(1),
                "in_ready": Out(1),
                "out_data": Out(cin * k * k),
                "out_valid": Out(1),
                "out_ready": In(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        H, W, k, s, p, B = self.height, self.width, self.k, self.stride, self.pad, self.rows
        buf = Array(Array(Signal(self.cin, name=f"px_{r}_{c}") for c in range(W)) for r in range(B))
        # input position (row may run one frame ahead: rows counted modulo the frame via `done`)
        in_row = Signal(range(H + 1))
        in_col = Signal(range(W))
        in_slot = Signal(range(B))
        # output position
        oy = Signal(range(self.h_out))
        ox = Signal(range(self.w_out))
        init_slot = (-p) % B
        base_slot = Signal(range(B), init=init_slot)  # slot of input row oy*s - p, mod B
        out_valid = Signal()
        out_data = Signal(self.cin * k * k)

        # rows needed by output row oy: oy*s - p .. oy*s - p + k - 1
        first_needed = Signal(range(-p, H + 1))
        m.d.comb += first_needed.eq(oy * s - p)
        # input may write row in_row unless it would overwrite a row still needed
        can_write = Signal()
        m.d.comb += can_write.eq((in_row < H) & (in_row < first_needed + B))
        m.d.comb += self.in_ready.eq(can_write)
        with m.If(self.in_valid & can_write):
            m.d.sync += buf[in_slot][in_col].eq(self.in_data)
            with m.If(in_col == W - 1):
                m.d.sync += [
                    in_col.eq(0),
                    in_row.eq(in_row + 1),
                    in_slot.eq(Mux(in_slot == B - 1, 0, in_slot + 1)),
                ]
            with m.Else():
                m.d.sync += in_col.eq(in_col + 1)

        # the last input pixel output (oy, ox) needs: row min(oy*s-p+k-1, H-1), col
        # min(ox*s-p+k-1, W-1); it has arrived when the input has passed it
        need_row = Signal(range(-p, H + k))
        need_col = Signal(range(-p, W + k))
        m.d.comb += [
            need_row.eq(Mux(first_needed + k - 1 > H - 1, H - 1, first_needed + k - 1)),
            need_col.eq(Mux(ox * s - p + k - 1 > W - 1, W - 1, ox * s - p + k - 1)),
        ]
        ready_in = Signal()
        m.d.comb += ready_in.eq((in_row > need_row) | ((in_row == need_row) & (in_col > need_col)))
        patch = []
        for c in range(self.cin):
            for ky in range(k):
                for kx in range(k):
                    iy = first_needed + ky
                    ix = ox * s - p + kx
                    inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                    slot = Signal(range(B), name=f"slot_{c}_{ky}_{kx}")
                    m.d.comb += slot.eq(
                        Mux(base_slot + ky >= B, base_slot + ky - B, base_slot + ky)
                    )
                    col = Signal(range(W), name=f"col_{c}_{ky}_{kx}")
                    m.d.comb += col.eq(Mux(inside, ix, 0))
                    patch.append(Mux(inside, buf[slot][col][c], Const(0, 1)))
        take = Signal()
        m.d.comb += take.eq(~out_valid | self.out_ready)
        with m.If(take):
            m.d.sync += out_valid.eq(0)
            with m.If(ready_in):
                m.d.sync += [out_valid.eq(1), out_data.eq(Cat(*patch))]
                with m.If(ox == self.w_out - 1):
                    m.d.sync += ox.eq(0)
                    with m.If(oy == self.h_out - 1):
                        # frame done: restart input and output positions
                        m.d.sync += [
                            oy.eq(0),
                            in_row.eq(0),
                            in_col.eq(0),
                            in_slot.eq(0),
                            base_slot.eq(init_slot),
                        ]
                    with m.Else():
                        nxt = base_slot + s
                        m.d.sync += [oy.eq(oy + 1), base_slot.eq(Mux(nxt >= B, nxt - B, nxt))]
                with m.Else():
                    m.d.sync += ox.eq(ox + 1)
        m.d.comb += [self.out_valid.eq(out_valid), self.out_data.eq(out_data)]
        return m


class ConvPipeline(wiring.Component):
    """Binary k x k convolutions in sequence on a pixel stream: for every layer a
    :class:`WindowGenerator` feeding a :class:`mstc.hw.LayerDatapath` (one position per cycle),
    whose output bits are the next layer's pixels (Cin_{i+1} = Cout_i).

    ``specs[i].n`` must be ``Cin_i * k * k``; ``strides`` default to 1; padding k // 2.
    Output: one pixel (Cout_last bits) per beat, row-major over the last layer's output image.
    """

    def __init__(
        self, specs, cin: int, height: int, width: int, *, k: int = 3, strides=None, **datapath_kw
    ) -> None:
        from mstc.hw.datapath import LayerDatapath

        strides = list(strides or [1] * len(specs))
        self.windows = []
        self.layers = []
        c, h, w = cin, height, width
        for spec, s in zip(specs, strides, strict=True):
            if spec.n != c * k * k:
                raise ValueError(f"{spec.name}: n = {spec.n}, expected {c}*{k}*{k}")
            win = WindowGenerator(c, h, w, k=k, stride=s, pad=k // 2)
            self.windows.append(win)
            self.layers.append(LayerDatapath(spec, **datapath_kw))
            c, h, w = spec.cout, win.h_out, win.w_out
        self.out_shape = (h, w, c)
        super().__init__(
            {
                "in_data": In(cin),
                "in_valid": In(1),
                "in_ready": Out(1),
                "out_data": Out(c),
                "out_valid": Out(1),
                "out_ready": In(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        stages = []
        for i, (win, layer) in enumerate(zip(self.windows, self.layers, strict=True)):
            m.submodules[f"win{i}"] = win
            m.submodules[f"layer{i}"] = layer
            stages += [win, layer]
        first, last = stages[0], stages[-1]
        m.d.comb += [
            first.in_data.eq(self.in_data),
            first.in_valid.eq(self.in_valid),
            self.in_ready.eq(first.in_ready),
            self.out_data.eq(last.out_data),
            self.out_valid.eq(last.out_valid),
            last.out_ready.eq(self.out_ready),
        ]
        for a, b in zip(stages, stages[1:], strict=False):
            m.d.comb += [
                b.in_data.eq(a.out_data),
                b.in_valid.eq(a.out_valid),
                a.out_ready.eq(b.in_ready),
            ]
        return m
