"""The graph executor: runs a CompressedModel's nodes in order.

Binary layers go to the chosen backend (integer sums, exact); full-precision operations run through
``torch.nn.functional`` in float32, the same functions the PyTorch model calls, so every float value
-- in particular every value that a later layer binarises -- is bit-identical to the PyTorch
model's. (A float re-implementation with another summation order could flip sign() of a value that
is within rounding of 0 and break the integer contract downstream.) Two exceptions repeat torch's
own CPU arithmetic in the same order: avg_pool2d (:mod:`mstc.engine.floatops`, tested
bit-identical) and conv2d where a probe at the input shape shows the order
(:mod:`mstc.engine.floatconv`, used only where bit-identical and faster). In a compiled pass, a
float conv whose only readers are binary convs through one folded BatchNorm is computed straight
into their packed input bits (:class:`mstc.engine.fold.PackedBits`).

Fusion. With a backend that sets ``fuses = True`` (the "mst" backend), a chain binary conv ->
BatchNorm -> [2x2 max pool] -> binary conv whose intermediate values have no other use is run
without floats in between: the producer's BatchNorm and sign are folded into one exact integer
threshold per channel (:mod:`mstc.engine.fold`, found by evaluating this runtime's own float ops on
every reachable integer sum), and the backend hands the consumer its input as bit planes
(:class:`mstc.engine.sliced.BitPlanes`). Fusion applies at the traced input shape only.

Epilogues. With a backend that sets ``fuses_epilogue = True`` ("packed", "mst"), the float ops
after any other binary layer -- BatchNorm, then a 2x2 max pool, or in a Bi-Real block the shortcut
add and PReLU -- run as one pass (:mod:`mstc.engine.epilogue`) from a per-channel table of BN(scale * y) over the n + 1
reachable sums, evaluated with this runtime's own torch calls and checked before use.

Folded BatchNorms. A BatchNorm after a float op (the stem conv, a downsampling 1x1 conv) whose
every reader is a binary conv or an epilogue's shortcut add is skipped: the convs binarise its
input by a per-channel float threshold (:func:`mstc.engine.fold.float_threshold_rule`), the
epilogues apply it to the shortcut as ``fma(x, alpha, beta)``, a form kept only if it equals this
runtime's torch BatchNorm on a probe (:func:`mstc.engine.epilogue.shortcut_bn_form`).

Two executors. ``_pass`` walks the nodes with a dict of values (the plain one; it also collects
the integer sums, ``return_sums``). For inference the runtime compiles each plan once into a
:class:`Program` (``_program``): one closure per node that does work, values in numbered slots,
identity nodes as aliases, engine arrays kept as numpy (no torch round trips), and the buffers to
give back after each step listed in advance. It computes the same values as ``_pass``
(tests compare the logits bit for bit); at batch 1 the per-node Python is a large part of a pass,
so the steps bind their arguments once (``prepared_steps``): a Bi-Real conv runs its backend's
prepared one-thread XNOR call per input shape, float ops are closures over their parameters, and
a run of Bi-Real blocks where each reads only the previous block's output (a ResNet stage) is one
step, one numba call (:mod:`mstc.engine.chain`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mstc.engine.backend import fastest, get_backend
from mstc.engine.buffers import BufferPool
from mstc.engine.chain import BiRealChain
from mstc.engine.epilogue import EpilogueKernel, affine_form, shortcut_bn_form
from mstc.engine.floatconv import FloatConv, bits_plan, faster_than_torch, torch_order
from mstc.engine.floatops import avg_pool2d, pool_output_size
from mstc.engine.fold import PackedBits, RuledInput, float_threshold_rule, threshold_rule
from mstc.engine.sliced import BitPlanes, plane_geometry
from mstc.format import BinaryLayerCode, CompressedModel, Node


@dataclass(frozen=True)
class Fusion:
    """A producer binary conv whose BatchNorm (and max pool) the backend folds into its output."""

    skip: tuple[str, ...]  # the absorbed nodes
    output: str  # the value the consumer reads (last absorbed node)
    pool: bool
    consumer: BinaryLayerCode
    rule: tuple[np.ndarray, np.ndarray]  # mstc.engine.fold.threshold_rule


@dataclass(frozen=True)
class Epilogue:
    """The float ops after a binary layer, run in one pass (:func:`mstc.engine.epilogue.epilogue`).

    Runs at node ``at`` (the add if there is one, else the binary layer) and produces ``output``."""

    skip: tuple[str, ...]  # absorbed nodes that produce no value
    at: str
    output: str
    table: np.ndarray  # (Cout, n+1) float32: BatchNorm(scale * (2u - n) + bias)
    shortcut: str | None  # the add's other input
    alpha: np.ndarray | None  # PReLU weights
    pool: bool = False  # a 2x2 max pool after the BatchNorm (then no add, no PReLU)
    affine: tuple[np.ndarray, bool] | None = None  # the table's verified closed form, if any
    shortcut_bn: np.ndarray | None = None  # (2, C): a BatchNorm applied to the shortcut first


#: ops whose output may share its input's memory (a torch view): released with their input
_VIEW_OPS = ("flatten",)


@dataclass
class Program:
    """A compiled pass (:meth:`Runtime._program`): ``steps[k](values)`` fills slots of the list
    ``values``; after step k the slot groups ``releases[k]`` are dropped, their buffers given back
    to the pool (a group: a value and the views of it)."""

    steps: list
    releases: list[list[tuple[int, ...]]]
    n_slots: int
    input_slot: int
    output_slot: int


def _np(v) -> np.ndarray:
    """A float value as a C-contiguous numpy array (torch tensors share their memory)."""
    if type(v) is np.ndarray:
        return v
    return np.ascontiguousarray(v.numpy())


def _torch(v):
    """A value as a torch tensor (numpy arrays share their memory)."""
    return torch.from_numpy(v) if type(v) is np.ndarray else v


def _pool_args(a: dict) -> tuple:
    """An avg_pool2d node's attributes as the arguments of
    :func:`mstc.engine.floatops.avg_pool2d` (and torch's) after the input."""
    return (
        tuple(a["kernel_size"]),
        tuple(a["stride"]),
        tuple(a["padding"]),
        a["ceil_mode"],
        a["count_include_pad"],
        a["divisor_override"],
    )


def _release(v: list, release: list[tuple[int, ...]], pool: BufferPool) -> None:
    """Drop the slot groups of ``release`` ((root slot, views...) each) from the values ``v``,
    the root's memory given back to ``pool``."""
    for root, *views in release:
        a = v[root]
        if type(a) is np.ndarray:
            pool.give(a)
        elif type(a) is PackedBits:
            pool.give(a.words)
        elif isinstance(a, torch.Tensor) and a.numel():
            pool.give_address(a.untyped_storage().data_ptr())
        v[root] = None
        for m in views:
            v[m] = None


def _per_shape(make):
    """``get(shape)``: ``make(shape)`` kept per input shape once decided (a prepared object, or
    False: never at this shape); None while undecided (made again at the next call)."""
    by_shape: dict[tuple[int, ...], Any] = {}

    def get(shape: tuple[int, ...]):
        p = by_shape.get(shape)
        if p is None:
            p = make(shape)
            if p is not None:
                by_shape[shape] = p
        return p

    return get


def _pool_output_shape(shape: tuple[int, ...], args: tuple) -> tuple[int, int, int, int]:
    """The NCHW output shape of avg_pool2d with :func:`_pool_args` ``args`` on ``shape``."""
    (kh, kw), (sh, sw), (ph, pw), ceil_mode = args[:4]
    n, c, h, w = shape
    return (
        n,
        c,
        pool_output_size(h, kh, sh, ph, ceil_mode),
        pool_output_size(w, kw, sw, pw, ceil_mode),
    )


def _conv_input(v):
    """A slot's value for a binary conv step: torch tensors as numpy (sharing memory), anything
    else (numpy, RuledInput, bit planes) as it is."""
    return _np(v) if type(v) is torch.Tensor else v


def _is_pool2(a: dict) -> bool:
    return (
        list(a["kernel_size"]) == [2, 2]
        and list(a["stride"]) == [2, 2]
        and list(a["padding"]) == [0, 0]
        and list(a["dilation"]) == [1, 1]
        and not a["ceil_mode"]
    )


class Runtime:
    """A CompressedModel bound to a backend. ``runtime.run(x)`` -> logits (numpy float32)."""

    def __init__(
        self, compressed: CompressedModel, backend: str = "reference", threads: int | None = None
    ) -> None:
        self.compressed = compressed
        self.backend = get_backend(backend)(compressed, threads=threads)
        #: the engine's large arrays (sums, epilogue outputs, packed inputs), reused pass to pass
        self.pool = BufferPool()
        self.backend.pool = self.pool
        self._params = {k: torch.from_numpy(np.asarray(v)) for k, v in compressed.tensors.items()}
        self._nodes = {node.name: node for node in compressed.nodes}
        self._users: dict[str, list[Node]] = {}
        for node in compressed.nodes:
            for name in node.inputs:
                self._users.setdefault(name, []).append(node)
        #: producer node name -> Fusion (empty unless the backend fuses)
        self.fusions: dict[str, Fusion] = {}
        if getattr(self.backend, "fuses", False):
            self.fusions = self._plan_fusions()
        #: binary node name -> Epilogue (empty unless the backend fuses epilogues)
        self.epilogues: dict[str, Epilogue] = {}
        if getattr(self.backend, "fuses_epilogue", False):
            self.epilogues = self._plan_epilogues()
        #: input shape -> the fused links in use (producer node names). With a fully autotuned
        #: backend the first pass at a shape picks all or none of them by timing (every plan is
        #: exact, mixed ones included).
        self.plans: dict[tuple[int, ...], frozenset[str]] = {}
        self._tune_plans = bool(self.fusions) and bool(getattr(self.backend, "autotune", False))
        self._tune_plans &= getattr(self.backend, "plane_kernel", None) is None
        #: binary conv node -> (folded BatchNorm node, its input, float rule): a BN between a float
        #: op and binary convs / epilogue adds is skipped; the convs binarise the BN's input by
        #: the rule, the epilogues apply the BN to it inline (Epilogue.shortcut_bn)
        self.input_folds: dict[str, tuple[str, str, tuple[np.ndarray, np.ndarray]]] = {}
        #: the BatchNorm nodes skipped that way (and identities between them and an add)
        self.folded_bns: set[str] = set()
        if getattr(self.backend, "folds_inputs", False):
            self.input_folds = self._plan_input_folds()
        #: add node name -> (binary node name, Epilogue) for the epilogues that include an add
        self._epilogue_at = {e.at: (k, e) for k, e in self.epilogues.items() if e.at != k}
        # values each node reads: its inputs, plus a folded BatchNorm's input
        reads = {node.name: list(node.inputs) for node in compressed.nodes}
        for conv, (_, src, _) in self.input_folds.items():
            reads[conv].append(src)
        for k, e in self.epilogues.items():
            if e.shortcut_bn is not None:
                reads[e.at].append(e.shortcut)
            if e.at != k:  # the conv may run at its add (_fuses_into_conv): keep its input
                reads[e.at] += reads[k]
        last_use = {name: i for i, node in enumerate(compressed.nodes) for name in reads[node.name]}
        #: node index -> the values it reads last (dropped after it)
        self._drops: dict[int, list[str]] = {}
        for name, i in last_use.items():
            self._drops.setdefault(i, []).append(name)
        self._skips: dict[frozenset[str], set[str]] = {}
        #: let the backend's XNOR kernel apply Bi-Real epilogues as it counts (the integer sums
        #: then never exist; ``mstc bench`` turns it off to time the binary layers alone)
        self.epilogues_in_xnor = True
        #: Epilogue.at -> (the Epilogue, its kernel with the constant arrays prepared)
        self._epilogue_kernels: dict[str, tuple[Epilogue, EpilogueKernel]] = {}
        #: full-precision convs: True runs :class:`FloatConv` (into pooled buffers) where it
        #: reproduces torch's conv bit for bit at the input shape and is faster (checked once per
        #: shape); "exact" wherever it is bit-identical (tests); False always torch's
        self.float_convs: bool | str = True
        #: inference passes run a compiled Program per plan (False: the plain ``_pass``)
        self.compiled_passes = True
        #: compiled passes bind each step's arguments once: Bi-Real convs run a backend's
        #: ``prepared_xnor`` per input shape, one-input float ops their parameters bound (False:
        #: every step through the general calls; an A/B switch, ``benchmarks/passes.py``)
        self.prepared_steps = True
        self._programs: dict[tuple, Program] = {}
        #: conv node -> its FloatConv (None: not applicable)
        self._float_conv_kernels: dict[str, FloatConv | None] = {}
        #: ([kind,] conv node, input shape, torch threads) -> tap order (and compare arrays for
        #: packed bits), or None: torch's
        self._float_conv_plans: dict[tuple, Any] = {}

    def _plan_fusions(self) -> dict[str, Fusion]:
        nodes = self.compressed.nodes
        layers = self.compressed.layers
        users = self._users

        def only_user(node: Node, op: str) -> Node | None:
            u = users.get(node.name, [])
            return u[0] if len(u) == 1 and u[0].op == op else None

        fusions: dict[str, Fusion] = {}
        for node in nodes:
            if node.op != "binary_conv2d":
                continue
            layer = layers[node.attrs["layer"]]
            bn = only_user(node, "batch_norm")
            if bn is None or not self.backend.can_fuse(layer) or layer.positions <= 1:
                continue
            last, pool = bn, False
            mp = only_user(bn, "max_pool2d")
            if mp is not None and _is_pool2(mp.attrs):
                last, pool = mp, True
            nxt = only_user(last, "binary_conv2d")
            if nxt is None or not self.backend.can_fuse(layers[nxt.attrs["layer"]]):
                continue
            rule = self._fold(layer, bn)
            if rule is None:
                continue
            skip = (bn.name, mp.name) if pool else (bn.name,)
            fusions[node.name] = Fusion(skip, last.name, pool, layers[nxt.attrs["layer"]], rule)
        return fusions

    def _plan_input_folds(self) -> dict[str, tuple[str, str, tuple[np.ndarray, np.ndarray]]]:
        """float op -> batch_norm whose every user is a binary conv or the add of a binary
        layer's epilogue (as its shortcut): the BN is skipped. Each conv binarises the BN's input
        by a per-channel float threshold (:func:`mstc.engine.fold.float_threshold_rule`, found
        with this runtime's own torch BatchNorm); each epilogue reads the BN's input and applies
        the BN inline (:func:`mstc.engine.epilogue.shortcut_bn_form`, checked against the same
        torch call) -- the stem and downsampling BatchNorms of a Bi-Real ResNet."""
        users = self._users
        taken = {n for e in self.epilogues.values() for n in e.skip}
        taken |= {n for f in self.fusions.values() for n in f.skip}
        adds = {e.at: k for k, e in self.epilogues.items() if e.at != k and k not in self.fusions}
        out = {}
        for bn in self.compressed.nodes:
            u = users.get(bn.name, [])
            if bn.op != "batch_norm" or bn.name in taken or not u:
                continue
            src = self._nodes.get(bn.inputs[0])
            if src is None or src.op.startswith("binary") or len({v.name for v in u}) != len(u):
                continue
            convs = [v for v in u if v.op == "binary_conv2d"]
            epis: list[str] = []  # epilogues adding the BN's output (maybe through identities)
            passed: list[str] = []  # those identity nodes
            readers = [(v, bn.name) for v in u if v.op != "binary_conv2d"]
            while readers:
                v, name = readers.pop()
                if v.op == "identity" and users.get(v.name):
                    passed.append(v.name)
                    readers += [(w, v.name) for w in users[v.name]]
                elif v.name in adds and self.epilogues[adds[v.name]].shortcut == name:
                    epis.append(adds[v.name])
                else:
                    break
            else:
                readers = None
            if readers is not None or not convs and not epis:
                continue
            rule = sbn = None
            if convs:
                cins = {self.compressed.layers[c.attrs["layer"]].cin for c in convs}
                if len(cins) != 1:
                    continue
                cin = cins.pop()

                def f(z: np.ndarray, bn=bn, cin=cin) -> np.ndarray:
                    x = torch.from_numpy(np.ascontiguousarray(z.T.reshape(1, cin, 1, -1)))
                    return self._batch_norm(bn, x).reshape(cin, -1).T

                rule = float_threshold_rule(f, cin)
                if rule is None:
                    continue
            if epis:
                sbn = self._shortcut_bn(bn)
                if sbn is None:
                    continue
            for conv in convs:
                out[conv.name] = (bn.name, bn.inputs[0], rule)
            for k in epis:
                self.epilogues[k] = replace(
                    self.epilogues[k], shortcut=bn.inputs[0], shortcut_bn=sbn
                )
            self.folded_bns |= {bn.name, *passed}
        return out

    def _batch_norm(self, bn: Node, x: torch.Tensor) -> np.ndarray:
        """The BatchNorm node ``bn`` on ``x`` through this runtime's own torch call."""
        with torch.no_grad():
            return self._apply(bn, [x], {}).numpy()

    def _bn_params(self, bn: Node) -> dict[str, Any] | None:
        """A BatchNorm node's running statistics, affine parameters (None = 1 / 0) and eps, as
        the keyword arguments of the closed forms in :mod:`mstc.engine.epilogue`; None without
        running statistics."""

        def p(name):
            t = self._p(bn, name)
            return None if t is None else t.numpy()

        if p("running_mean") is None or p("running_var") is None:
            return None
        return dict(
            mean=p("running_mean"),
            var=p("running_var"),
            weight=p("weight"),
            bn_bias=p("bias"),
            eps=float(bn.attrs["eps"]),
        )

    def _shortcut_bn(self, bn: Node) -> np.ndarray | None:
        """The (alpha, beta) of :func:`mstc.engine.epilogue.shortcut_bn_form` for node ``bn``."""
        params = self._bn_params(bn)
        if params is None:
            return None
        return shortcut_bn_form(lambda x: self._batch_norm(bn, torch.from_numpy(x)), **params)

    def _plan_epilogues(self) -> dict[str, Epilogue]:
        """binary -> batch_norm -> (2x2 max pool | [add] [-> prelu]), intermediates used once."""
        users = self._users

        def only_user(name: str, op: str) -> Node | None:
            u = users.get(name, [])
            return u[0] if len(u) == 1 and u[0].op == op else None

        out: dict[str, Epilogue] = {}
        for node in self.compressed.nodes:
            if node.op not in ("binary_conv2d", "binary_linear"):
                continue
            bn = only_user(node.name, "batch_norm")
            if bn is None:
                continue
            layer = self.compressed.layers[node.attrs["layer"]]
            table = self._table(layer, bn)
            if table is None:
                continue
            affine = self._affine(layer, bn, table)
            mp = only_user(bn.name, "max_pool2d")
            if mp is not None and node.op == "binary_conv2d" and _is_pool2(mp.attrs):
                out[node.name] = Epilogue((bn.name, mp.name), node.name, mp.name, table, None,
                                          None, pool=True, affine=affine)  # fmt: skip
                continue
            skip, at, last, shortcut, alpha = [bn.name], node.name, bn.name, None, None
            add = only_user(bn.name, "add")
            if add is not None and len(add.inputs) == 2 and add.inputs[0] != add.inputs[1]:
                shortcut = add.inputs[1] if add.inputs[0] == bn.name else add.inputs[0]
                at = last = add.name
            act = only_user(last, "prelu")
            w = self._p(act, "weight") if act is not None else None
            if w is not None and w.numel() in (1, layer.cout):
                skip.append(act.name)
                alpha = w.numpy().astype(np.float32)
                last = act.name
            out[node.name] = Epilogue(tuple(skip), at, last, table, shortcut, alpha, affine=affine)
        return out

    def _affine(self, layer: BinaryLayerCode, bn: Node, table: np.ndarray):
        """The table's closed form (:func:`mstc.engine.epilogue.affine_form`), or None."""
        params = self._bn_params(bn)
        if params is None:
            return None
        return affine_form(table, layer.n, scale=layer.scale, bias=layer.bias, **params)

    def _table(self, layer: BinaryLayerCode, bn: Node) -> np.ndarray | None:
        """table[c, u] = BN(finish(2u - n)) through the same torch calls as :meth:`run`, or None
        if the same calls on an activation-shaped tensor (another size, other positions) do not
        reproduce it bit for bit."""
        n = layer.n
        table = self._bn_values(layer, bn)
        u = np.random.default_rng(0).integers(0, n + 1, size=(2, layer.cout, 3, 37))
        probe = torch.from_numpy((2 * u - n).astype(np.float32))
        with torch.no_grad():
            direct = self._apply(bn, [self._finish_binary(layer, probe)], {}).numpy()
        looked_up = np.take_along_axis(table[None, :, None, :], u.reshape(2, layer.cout, 1, -1), 3)
        same = np.array_equal(
            direct.reshape(-1).view(np.uint32), looked_up.reshape(-1).view(np.uint32)
        )
        return table if same else None

    def _fold(self, layer: BinaryLayerCode, bn: Node):
        """The BN + sign rule of a fused producer: threshold_rule of f at every reachable sum,
        or None."""
        return threshold_rule(torch.from_numpy(self._bn_values(layer, bn)))

    def _bn_values(self, layer: BinaryLayerCode, bn: Node) -> np.ndarray:
        """f(y) = BN(scale * y + bias) at every reachable sum y = 2u - n, (Cout, n+1) float32,
        through the same torch calls as :meth:`run`, shaped (1, Cout, 1, n+1) like an NCHW
        activation."""
        n = layer.n
        y = (2 * np.arange(n + 1, dtype=np.int64) - n).astype(np.float32)
        y = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(y, (1, layer.cout, 1, n + 1))))
        with torch.no_grad():
            z = self._apply(bn, [self._finish_binary(layer, y)], {})
        return np.ascontiguousarray(z.numpy().reshape(layer.cout, n + 1), dtype=np.float32)

    def _p(self, node: Node, name: str) -> torch.Tensor | None:
        return self._params.get(f"{node.name}.{name}")

    @staticmethod
    def _finish_binary(layer: BinaryLayerCode, y: torch.Tensor) -> torch.Tensor:
        """Integer sums (as float32) -> scale and bias, exactly as BinaryConv2d._finish."""
        shape = (1, -1) + (1,) * (y.dim() - 2)
        if layer.scale is not None:
            y = y * torch.from_numpy(layer.scale).view(shape)
        if layer.bias is not None:
            y = y + torch.from_numpy(layer.bias).view(shape)
        return y

    def run(self, x, *, return_sums: bool = False):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        c = self.compressed.input_shape[0]
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"input must have shape (N, {c}, H, W), got {tuple(x.shape)}")
        if torch.isnan(x).any():
            raise ValueError("input contains NaN")
        active: frozenset[str] = frozenset()
        if self.fusions and tuple(x.shape[1:]) == tuple(self.compressed.input_shape):
            active = frozenset(self.fusions)
            if self._tune_plans:
                key = tuple(x.shape)
                if key not in self.plans:
                    self.plans[key] = self._tune_plan(x, return_sums)
                active = self.plans[key]
        return self._forward(x, active, return_sums)

    def _tune_plan(self, x: torch.Tensor, return_sums: bool) -> frozenset[str]:
        """The fused links to use at this input shape: all or none, by timing whole passes.

        Mixed plans are exact too (set ``plans[shape]`` to any subset of ``fusions``), but a
        search toggling one link at a time was not reliable on a noisy machine: for the trained
        vgg_small at batch 32 it settled on a mixed plan running at 1.2x packed's speed, where all
        links give 1.6-2.4x (BENCHMARKS.md), so only the two extremes are compared."""
        runs = {
            "all": lambda: self._forward(x, frozenset(self.fusions), return_sums),
            "none": lambda: self._forward(x, frozenset(), return_sums),
        }
        best = fastest(runs, self.backend.threads or 1)
        return frozenset(self.fusions) if best == "all" else frozenset()

    def _skip_for(self, active: frozenset[str]) -> set[str]:
        """Nodes that produce no value of their own under the fused links ``active``: the BN /
        pool folded into an active link, the float ops of every other layer's epilogue, the
        BatchNorms folded into the input of a binary conv."""
        skip = self._skips.get(active)
        if skip is None:
            skip = {name for k in active for name in self.fusions[k].skip}
            skip |= self.folded_bns
            skip |= {n for k, e in self.epilogues.items() if k not in active for n in e.skip}
            self._skips[active] = skip
        return skip

    def _forward(self, x: torch.Tensor, active: frozenset[str], return_sums: bool):
        if self.compiled_passes and not return_sums:
            try:
                return self._execute(self._program(active), x)
            finally:
                self.pool.reclaim()
        try:
            logits, sums = self._pass(x, active, return_sums)
            for s in sums.values():  # they leave the pass too (return_sums)
                self.pool.forget(s)
        finally:
            self.pool.reclaim()
        return (logits, sums) if return_sums else logits

    def _pass(self, x: torch.Tensor, active: frozenset[str], return_sums: bool):
        """One forward pass: (logits, {layer: sums} if return_sums else {})."""
        values: dict[str, Any] = {}
        sums: dict[str, np.ndarray] = {}
        pending: dict[str, np.ndarray] = {}  # sums waiting for their epilogue's add
        deferred: dict[str, Any] = {}  # inputs of convs run at their add, epilogue inside
        out: torch.Tensor | None = None
        skip = self._skip_for(active)
        with torch.no_grad():
            for i, node in enumerate(self.compressed.nodes):
                if node.name in skip:
                    continue
                if node.name in self._epilogue_at:  # the add of a binary layer's epilogue
                    producer, e = self._epilogue_at[node.name]
                    shortcut = np.ascontiguousarray(values[e.shortcut].numpy())
                    if producer in deferred:  # the conv itself, its epilogue fused in
                        layer = self.compressed.layers[self._nodes[producer].attrs["layer"]]
                        xin = deferred.pop(producer)
                        if isinstance(xin, torch.Tensor):
                            xin = np.ascontiguousarray(xin.numpy())
                        y = self.backend.conv2d_epilogue(
                            layer, xin, self._epilogue_kernel(e), shortcut
                        )
                        values[e.output] = torch.from_numpy(y)
                    else:
                        s = pending.pop(producer)
                        values[e.output] = self._run_epilogue(e, s, shortcut)
                        if not return_sums:
                            self.pool.give(s)
                    self._free(node, i, values)
                    continue
                fold = self.input_folds.get(node.name)
                if fold is not None:  # the BN before this conv was skipped: binarise by its rule
                    src = np.ascontiguousarray(values[fold[1]].numpy())
                    args = [RuledInput(src, *fold[2])]
                else:
                    args = [values[name] for name in node.inputs]
                f = self.fusions.get(node.name) if node.name in active else None
                e = self.epilogues.get(node.name) if f is None else None
                if f is not None:
                    layer = self.compressed.layers[node.attrs["layer"]]
                    planes, s = self.backend.conv2d_fused(
                        layer, args[0], f.rule, f.pool, f.consumer, want_sums=return_sums
                    )
                    values[f.output] = planes
                    if s is not None:
                        sums[layer.name] = s
                elif e is not None and not return_sums and self._fuses_into_conv(node, e):
                    deferred[node.name] = args[0]  # run at the add, once the shortcut exists
                elif e is not None:
                    s = self._binary_sums(node, args[0])
                    if return_sums:
                        sums[node.attrs["layer"]] = s
                    if e.at == node.name:
                        values[e.output] = self._run_epilogue(e, s, None)
                        if not return_sums:
                            self.pool.give(s)
                    else:
                        pending[node.name] = s
                elif node.op == "input":
                    values[node.name] = x
                elif node.op == "output":
                    out = args[0]
                    if self.pool.lent(out.untyped_storage().data_ptr()):  # leaves the pass
                        out = out.clone()
                else:
                    values[node.name] = self._apply(node, args, sums, return_sums)
                self._free(node, i, values)
        assert out is not None
        return out.numpy(), sums

    def _program(self, active: frozenset[str]) -> Program:
        """The compiled pass of plan ``active`` (made once per plan and ``epilogues_in_xnor``):
        the steps of :meth:`_pass` without ``return_sums``, as closures over slot numbers. Made
        again if ``epilogues``, ``fusions`` or ``input_folds`` are replaced (not mutated)."""
        key = (
            active,
            self.epilogues_in_xnor,
            self.prepared_steps,
            id(self.epilogues),
            id(self._epilogue_at),
            id(self.fusions),
            id(self.input_folds),
        )
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = self._compile(active)
        return program

    def _compile(self, active: frozenset[str]) -> Program:
        skip = self._skip_for(active)
        slots: dict[str, int] = {}
        group: list[int] = []  # slot -> the slot owning its memory

        def slot(name: str, view_of: int | None = None) -> int:
            if name not in slots:
                slots[name] = len(group)
                group.append(len(group) if view_of is None else group[view_of])
            return slots[name]

        steps: list = []
        reads: list[list[int]] = []
        deferred: dict[str, tuple] = {}  # conv run at its add -> conv_input(conv)
        pending: dict[str, int] = {}  # conv -> slot of its sums, waiting for the add
        backend, pool = self.backend, self.pool
        input_slot = output_slot = -1

        #: slot -> (rule, padding, layer, fused) of each binary conv reading it through a folded
        #: BatchNorm (fused: the conv runs as a fusion of this plan, reading bit planes)
        folded_reads: dict[int, list[tuple[Any, tuple[int, int], BinaryLayerCode, bool]]] = {}
        float_convs: dict[int, tuple[int, Node]] = {}  # float conv's output slot -> step, node
        #: step -> (src, shortcut, out slot, layer, kernel, input fold, step) of each Bi-Real conv
        bireal: dict[int, tuple] = {}

        def conv_input(node: Node, fused: bool = False):
            """(slot read, function of the slot's value giving the conv's input)."""
            fold = self.input_folds.get(node.name)
            if fold is not None:
                mode, t = fold[2]
                src = slot(fold[1])
                layer = self.compressed.layers[node.attrs["layer"]]
                folded_reads.setdefault(src, []).append(
                    (fold[2], tuple(layer.padding), layer, fused)
                )

                def make(v, mode=mode, t=t):
                    if type(v) is PackedBits or type(v) is BitPlanes:
                        return v
                    return RuledInput(_np(v), mode, t)

                return src, make
            return slot(node.inputs[0]), lambda v: v if isinstance(v, BitPlanes) else _np(v)

        for node in self.compressed.nodes:
            name = node.name
            if name in skip:
                continue
            if name in self._epilogue_at:
                producer, e = self._epilogue_at[name]
                kernel, sc, out = self._epilogue_kernel(e), slot(e.shortcut), slot(e.output)
                if producer in deferred:
                    src, make = deferred.pop(producer)
                    layer = self.compressed.layers[self._nodes[producer].attrs["layer"]]
                    fold = self.input_folds.get(producer)
                    ready = None
                    if self.prepared_steps:
                        ready = self._prepared_step(layer, None if fold is None else fold[2])

                    def step(v, src=src, make=make, layer=layer, kernel=kernel, sc=sc, out=out,
                             ready=ready):  # fmt: skip
                        x, s = _conv_input(v[src]), _np(v[sc])
                        if ready is not None and type(x) is np.ndarray:
                            y = ready(x, kernel, s)
                            if y is not None:
                                v[out] = y
                                return
                        v[out] = backend.conv2d_epilogue(layer, make(x), kernel, s)

                    bireal[len(steps)] = (src, sc, out, layer, kernel, fold, step)
                    steps.append(step)
                    reads.append([src, sc])
                else:
                    sums = pending.pop(producer)

                    def step(v, e=e, sums=sums, sc=sc, out=out):
                        v[out] = self._epilogue_np(e, v[sums], _np(v[sc]))

                    steps.append(step)
                    reads.append([sums, sc])
                continue
            if node.op == "input":
                input_slot = slot(name)
                continue
            if node.op == "output":
                output_slot = slot(node.inputs[0])
                reads.append([output_slot])  # keeps it to the end
                steps.append(lambda v: None)
                continue
            if node.op == "identity":
                slots[name] = slot(node.inputs[0])  # the same value
                continue
            f = self.fusions.get(name) if name in active else None
            e = self.epilogues.get(name) if f is None else None
            if f is not None:
                src, make = conv_input(node, fused=True)
                layer = self.compressed.layers[node.attrs["layer"]]
                out = slot(f.output)

                def step(v, src=src, make=make, layer=layer, f=f, out=out):
                    v[out] = backend.conv2d_fused(
                        layer, make(v[src]), f.rule, f.pool, f.consumer, want_sums=False
                    )[0]

                steps.append(step)
                reads.append([src])
            elif e is not None and self._fuses_into_conv(node, e):
                deferred[name] = conv_input(node)  # run at the add, once the shortcut exists
            elif e is not None:
                src, make = conv_input(node)
                at_conv = e.at == name
                out = slot(e.output if at_conv else f"{name}/sums")
                if not at_conv:
                    pending[name] = out

                def step(v, node=node, src=src, make=make, e=e, out=out, at_conv=at_conv):
                    s = self._binary_sums(node, make(v[src]))
                    if at_conv:
                        v[out] = self._epilogue_np(e, s, None)
                        pool.give(s)
                    else:
                        v[out] = s

                steps.append(step)
                reads.append([src])
            else:
                ins = [slot(i) for i in node.inputs]
                if node.name in self.input_folds:
                    src, make = conv_input(node)
                    ins = [src]
                else:
                    make = None
                view = ins[0] if node.op in _VIEW_OPS else None
                out = slot(name, view_of=view)

                op = None
                if self.prepared_steps and make is None and len(ins) == 1:
                    op = self._float_step(node)
                if op is not None:

                    def step(v, op=op, src=ins[0], out=out):
                        v[out] = op(v[src])

                else:

                    def step(v, node=node, ins=ins, make=make, out=out):
                        if make is not None:
                            args = [make(v[ins[0]])]
                        else:
                            args = [_torch(v[i]) for i in ins]
                        v[out] = self._apply(node, args, {}, False)

                if node.op == "conv2d":
                    float_convs[out] = (len(steps), node)
                steps.append(step)
                reads.append(ins)
        if input_slot < 0 or output_slot < 0:
            raise ValueError("the graph has no input or no output node")
        # a float conv read only by binary convs through one folded BatchNorm (vgg_small's stem):
        # its output can be made as packed bits directly (_stem_bits)
        n_reads = Counter(r for rs in reads for r in rs)
        for out, (k, node) in float_convs.items():
            uses = folded_reads.get(out, [])
            if not uses or len(uses) != n_reads[out] or out == output_slot:
                continue
            (rule, padding, layer, _), rest = uses[0], uses[1:]
            same = all(
                p == padding and np.array_equal(r[0], rule[0]) and np.array_equal(r[1], rule[1])
                for r, p, _, _ in rest
            )
            # fused readers take bit planes, made directly if they all read the same grid
            grid = (layer.kernel_size, layer.dilation)
            planes_for = layer
            if not all(fused and (u.kernel_size, u.dilation) == grid for _, _, u, fused in uses):
                planes_for = None
            if same and group.count(group[out]) == 1:
                src = reads[k][0]

                def step(v, node=node, src=src, out=out, rule=rule, padding=padding, pl=planes_for):
                    v[out] = self._stem_bits(node, _torch(v[src]), rule, padding, pl)

                steps[k] = step
        # release each memory group after the last step reading any of its slots
        last: dict[int, int] = {}
        for k, rs in enumerate(reads):
            for r in rs:
                last[group[r]] = k
        members: dict[int, list[int]] = {}
        for sl, g in enumerate(group):
            members.setdefault(g, []).append(sl)
        releases: list[list[tuple[int, ...]]] = [[] for _ in steps]
        for g, k in last.items():
            if g != group[output_slot]:
                releases[k].append((g, *[m for m in members[g] if m != g]))
        if self.prepared_steps:
            steps, releases = self._chain_bireal(steps, reads, releases, bireal, group, output_slot)
        return Program(steps, releases, len(group), input_slot, output_slot)

    def _chain_bireal(
        self, steps: list, reads: list, releases: list, bireal: dict, group: list, output_slot: int
    ):
        """(steps, releases) with each run of two or more Bi-Real convs where conv i reads only
        the output of conv i-1, as input and shortcut (:mod:`mstc.engine.chain`), as one step
        releasing what they released."""
        n_reads = Counter(r for rs in reads for r in rs)

        def links(k: int) -> bool:  # step k's output is only step k+1's input and shortcut
            if k not in bireal or k + 1 not in bireal:
                return False
            out = bireal[k][2]
            src, sc = bireal[k + 1][:2]
            return (
                src == out == sc
                and n_reads[out] == 2
                and out != output_slot
                and group.count(group[out]) == 1
            )

        pool = self.pool
        new_steps, new_releases, k = [], [], 0
        while k < len(steps):
            end = k
            while links(end):
                end += 1
            if end == k:
                new_steps.append(steps[k])
                new_releases.append(releases[k])
                k += 1
                continue
            run = [bireal[i] for i in range(k, end + 1)]
            src, sc, fold = run[0][0], run[0][1], run[0][5]
            ready = self._prepared_chain(
                [r[3] for r in run], [r[4] for r in run], None if fold is None else fold[2]
            )
            parts = tuple(r[6] for r in run)
            between = tuple(releases[i] for i in range(k, end))

            def step(v, src=src, sc=sc, out=run[-1][2], ready=ready, parts=parts, between=between):
                x, s = _conv_input(v[src]), _np(v[sc])
                if type(x) is np.ndarray:
                    y = ready(x, s)
                    if y is not None:
                        v[out] = y
                        return
                for part, release in zip(parts[:-1], between, strict=True):
                    part(v)  # one by one, releasing as the steps would have
                    _release(v, release, pool)
                parts[-1](v)

            new_steps.append(step)
            # the runs' releases after the chain (those made between the parts find None)
            new_releases.append([r for i in range(k, end + 1) for r in releases[i]])
            k = end + 1
        return new_steps, new_releases

    def _prepared_chain(self, layers: list[BinaryLayerCode], kernels: list, rule):
        """``ready(x, shortcut)``: a run of Bi-Real convs as one :class:`BiRealChain` (one per
        input shape, made once every conv has a ``prepared_xnor`` for it), or None (the step
        then runs them one by one)."""
        prepare = getattr(self.backend, "prepared_xnor", None)
        pool = self.pool

        def make(shape: tuple[int, ...]):
            first = prepare(layers[0], shape, rule)
            if not first:
                return first
            blocks = [first]
            for layer in layers[1:]:
                b = prepare(layer, first._out4, None)
                if not b:
                    return b
                blocks.append(b)
            try:
                return BiRealChain(blocks, kernels)
            except ValueError:  # another geometry: not a chain
                return False

        get = _per_shape(make if prepare is not None else lambda shape: False)

        def ready(x: np.ndarray, shortcut: np.ndarray):
            p = get(x.shape)
            return p(x, shortcut, pool) if p else None

        return ready

    def _float_step(self, node: Node):
        """``f(value)`` of a one-input float op of a compiled pass with its parameters bound
        once (what :meth:`_apply` does, less its per-call lookups: at batch 1 they cost more than
        some of the ops), or None for :meth:`_apply`."""
        a, op = node.attrs, node.op
        if op == "conv2d" and self._float_conv(node) is None:
            w, b = self._p(node, "weight"), self._p(node, "bias")
            conv_args = (tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"])
            return lambda x: F.conv2d(_torch(x), w, b, *conv_args)
        if op == "linear":
            w, b = self._p(node, "weight"), self._p(node, "bias")
            return lambda x: F.linear(_torch(x), w, b)
        if op == "adaptive_avg_pool2d":
            size = a["output_size"]
            size = tuple(size) if isinstance(size, list) else size
            return lambda x: F.adaptive_avg_pool2d(_torch(x), size)
        if op == "flatten":
            start, end = a["start_dim"], a["end_dim"]
            return lambda x: torch.flatten(_torch(x), start, end)
        if op == "avg_pool2d":
            pool_args = _pool_args(a)
            out_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}

            def avg_pool(x):
                """floatops.avg_pool2d straight on a float32 NCHW array (no torch wrapping)."""
                if (
                    type(x) is not np.ndarray
                    or x.dtype != np.float32
                    or x.ndim != 4
                    or not x.flags.c_contiguous
                ):
                    return self._avg_pool2d(_torch(x), a)
                shape = out_shapes.get(x.shape)
                if shape is None:
                    shape = out_shapes[x.shape] = _pool_output_shape(x.shape, pool_args)
                return avg_pool2d(x, *pool_args, out=self.pool.empty(shape, np.float32))

            return avg_pool
        return None

    def _prepared_step(self, layer: BinaryLayerCode, rule):
        """``ready(x, kernel, shortcut)``: a Bi-Real conv of a compiled pass run by the backend's
        ``prepared_xnor`` (:class:`~mstc.engine.packed.PreparedXnor`, one per input shape, made on
        first use) where it has one for float input ``x``, else None (the step then takes
        ``conv2d_epilogue``)."""
        prepare = getattr(self.backend, "prepared_xnor", None)
        pool = self.pool
        get = _per_shape(
            (lambda shape: prepare(layer, shape, rule)) if prepare else (lambda shape: False)
        )

        def ready(x: np.ndarray, kernel: EpilogueKernel, shortcut: np.ndarray):
            p = get(x.shape)
            return p(x, pool, kernel.xnor_args(shortcut)) if p else None

        return ready

    def _execute(self, program: Program, x: torch.Tensor) -> np.ndarray:
        v: list = [None] * program.n_slots
        v[program.input_slot] = x
        pool = self.pool
        with torch.no_grad():
            for step, release in zip(program.steps, program.releases, strict=True):
                step(v)
                if release:
                    _release(v, release, pool)
        out = v[program.output_slot]
        if type(out) is np.ndarray:
            return out.copy() if pool.lent(pool._address(out)) else out
        if pool.lent(out.untyped_storage().data_ptr()):  # leaves the pass
            out = out.clone()
        return out.numpy()

    def _epilogue_np(self, e: Epilogue, s: np.ndarray, shortcut: np.ndarray | None):
        """:meth:`_run_epilogue` as a numpy array."""
        kernel = self._epilogue_kernel(e)
        t = self.backend.threads
        N, C = s.shape[:2]
        shape = (N, C, s.shape[2] // 2, s.shape[3] // 2) if e.pool else s.shape
        return kernel(s, shortcut, t if t else 1, out=self.pool.empty(shape, np.float32))

    def _free(self, node: Node, i: int, values: dict[str, Any]) -> None:
        """Drop the activations whose last use is node i; give their buffers back to the pool
        unless another live value (a view, an identity) still reads the same memory."""
        for name in self._drops.get(i, ()):
            v = values.pop(name, None)
            if isinstance(v, torch.Tensor) and v.numel():
                address = v.untyped_storage().data_ptr()
                if self.pool.lent(address) and not any(
                    isinstance(w, torch.Tensor) and w.untyped_storage().data_ptr() == address
                    for w in values.values()
                ):
                    self.pool.give_address(address)

    def _epilogue_kernel(self, e: Epilogue) -> EpilogueKernel:
        """The EpilogueKernel of ``e``, made on first use (again if the epilogue is replaced)."""
        spec, kernel = self._epilogue_kernels.get(e.at, (None, None))
        if spec is not e:
            kernel = EpilogueKernel(
                e.table,
                e.table.shape[1] - 1,
                e.alpha,
                add=e.shortcut is not None,
                pool=e.pool,
                affine=e.affine,
                shortcut_bn=e.shortcut_bn,
            )
            self._epilogue_kernels[e.at] = (e, kernel)
        return kernel

    def _fuses_into_conv(self, node: Node, e: Epilogue) -> bool:
        """Whether the backend's XNOR kernel applies epilogue ``e`` itself (a Bi-Real block: the
        conv then runs at the add, when its shortcut exists)."""
        return (
            self.epilogues_in_xnor
            and node.op == "binary_conv2d"
            and e.at != node.name
            and hasattr(self.backend, "conv2d_epilogue")
            and self._epilogue_kernel(e).fuses_into_xnor
        )

    def _run_epilogue(self, e: Epilogue, s: np.ndarray, shortcut: np.ndarray | None):
        return torch.from_numpy(self._epilogue_np(e, s, shortcut))

    def _binary_sums(self, node: Node, xin) -> np.ndarray:
        """int32 sums of a binary layer from the backend."""
        layer = self.compressed.layers[node.attrs["layer"]]
        if isinstance(xin, torch.Tensor):
            xin = np.ascontiguousarray(xin.numpy())
        if node.op == "binary_conv2d":
            return self.backend.conv2d(layer, xin)
        return self.backend.linear(layer, xin)

    def _avg_pool2d(self, x: torch.Tensor, a: dict) -> torch.Tensor:
        """torch's avg_pool2d; for float32 NCHW inputs :func:`mstc.engine.floatops.avg_pool2d`,
        the same float operations in the same order (tested bit-identical), ~10x faster."""
        args = _pool_args(a)
        if x.dtype != torch.float32 or x.dim() != 4 or not x.is_contiguous():
            return F.avg_pool2d(x, *args)
        out = self.pool.empty(_pool_output_shape(tuple(x.shape), args), np.float32)
        return torch.from_numpy(avg_pool2d(x.numpy(), *args, out=out))

    def _float_plan(self, key: tuple, x: torch.Tensor, make):
        """The cached plan ``make()`` for ``key`` at this input shape and torch thread count, or
        None (float convs off, or an input the kernels do not take)."""
        if not (self.float_convs and x.dtype == torch.float32 and x.dim() == 4):
            return None
        if not x.is_contiguous():
            return None
        key = (*key, tuple(x.shape), torch.get_num_threads())
        if key not in self._float_conv_plans:
            self._float_conv_plans[key] = make()
        return self._float_conv_plans[key]

    def _conv2d(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        """torch's conv2d, or the same floats from :class:`FloatConv` where it was found exact
        and faster at this input shape (:meth:`_float_conv`)."""
        conv = self._float_conv(node)
        plan = None
        if conv is not None:
            plan = self._float_plan((node.name,), x, lambda: self._conv_order(conv, x))
        if plan is not None:
            return torch.from_numpy(conv(x.numpy(), plan, pool=self.pool))
        a = node.attrs
        return F.conv2d(
            x,
            self._p(node, "weight"),
            self._p(node, "bias"),
            a["stride"],
            a["padding"],
            a["dilation"],
            a["groups"],
        )

    def _conv_order(self, conv: FloatConv, x: torch.Tensor) -> str | None:
        order = torch_order(conv, tuple(x.shape))
        if order is None or self.float_convs == "exact":
            return order
        return order if faster_than_torch(conv, order, x.numpy()) else None

    def _stem_bits(
        self,
        node: Node,
        x: torch.Tensor,
        rule,
        padding: tuple[int, int],
        planes_for: BinaryLayerCode | None = None,
    ):
        """A float conv whose only readers binarise it by ``rule`` (compiled passes): its output
        as :class:`PackedBits` for convs with ``padding`` where
        :meth:`FloatConv.packed_bits` was found exact and faster at this input shape
        (:func:`mstc.engine.floatconv.bits_plan`), else the float output (the readers then pack
        it themselves). Readers that are fusions of the plan (``planes_for``: one of them) get
        :class:`BitPlanes` from :meth:`FloatConv.bit_planes` instead, the same fma chains and
        compare, timed against torch's conv packed into those planes (what they would do
        instead)."""
        conv = self._float_conv(node)
        if conv is None:
            return self._conv2d(node, x)
        n, c, h, w = conv.output_shape(tuple(x.shape))
        g = plane_geometry(planes_for, n, h, w) if planes_for is not None else None
        timed = self.float_convs != "exact"

        def make():
            return bits_plan(conv, x.numpy(), rule, padding, timed, g)

        plan = self._float_plan(("bits", node.name, g is not None), x, make)
        if plan is None:
            return self._conv2d(node, x)
        order, compare = plan
        if g is not None:
            return BitPlanes(conv.bit_planes(x.numpy(), order, compare, padding, g.words), g)
        words = conv.packed_bits(x.numpy(), order, compare, padding, self.pool)
        return PackedBits(words, (n, c, h, w), padding)

    def _float_conv(self, node: Node) -> FloatConv | None:
        """The :class:`FloatConv` of a conv node (made once), or None where it does not apply
        (bias, groups, dilation, not float32 or beyond the unroll budget)."""
        if node.name not in self._float_conv_kernels:
            a = node.attrs
            w = self._p(node, "weight")
            conv = None
            if (
                self._p(node, "bias") is None
                and a["groups"] == 1
                and tuple(a["dilation"]) == (1, 1)
                and w is not None
                and w.dtype == torch.float32
            ):
                conv = FloatConv(np.ascontiguousarray(w.numpy()), a["stride"], a["padding"])
                conv = conv if conv.supported else None
            self._float_conv_kernels[node.name] = conv
        return self._float_conv_kernels[node.name]

    def _apply(
        self,
        node: Node,
        args: list[torch.Tensor],
        sums: dict[str, np.ndarray],
        return_sums: bool = False,
    ):
        a = node.attrs
        op = node.op
        if op in ("binary_conv2d", "binary_linear"):
            layer = self.compressed.layers[a["layer"]]
            s = self._binary_sums(node, args[0])
            y = self._finish_binary(layer, torch.from_numpy(s.astype(np.float32)))
            if return_sums:
                sums[layer.name] = s
            else:
                self.pool.give(s)
            return y
        x = args[0]
        if op == "conv2d":
            return self._conv2d(node, x)
        if op == "linear":
            return F.linear(x, self._p(node, "weight"), self._p(node, "bias"))
        if op == "batch_norm":
            return F.batch_norm(
                x,
                self._p(node, "running_mean"),
                self._p(node, "running_var"),
                self._p(node, "weight"),
                self._p(node, "bias"),
                False,
                0.0,
                a["eps"],
            )
        if op == "relu":
            return F.relu(x)
        if op == "prelu":
            return F.prelu(x, self._p(node, "weight"))
        if op == "hardtanh":
            return F.hardtanh(x, a["min"], a["max"])
        if op == "max_pool2d":
            return F.max_pool2d(
                x, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]
            )
        if op == "avg_pool2d":
            return self._avg_pool2d(x, a)
        if op == "adaptive_avg_pool2d":
            return F.adaptive_avg_pool2d(x, a["output_size"])
        if op == "flatten":
            return torch.flatten(x, a["start_dim"], a["end_dim"])
        if op == "identity":
            return x
        if op == "add":
            return args[0] + args[1]
        raise ValueError(f"node {node.name}: unsupported op {op!r}")


def run(
    compressed: CompressedModel,
    x: Any,
    backend: str = "reference",
    *,
    threads: int | None = None,
    return_sums: bool = False,
):
    """Run a CompressedModel on a batch ``x`` (N, C, H, W) and return the logits (numpy).

    With ``return_sums=True`` returns ``(logits, {layer name: int32 integer sums})``.
    """
    return Runtime(compressed, backend, threads).run(x, return_sums=return_sums)
