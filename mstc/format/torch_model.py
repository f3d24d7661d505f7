"""Rebuild the PyTorch model of a CompressedModel: ``to_torch(cm)``.

The model is created from the stored model config (``mstc.models.create_model``), every float
tensor of the graph is loaded into its module, and every binary layer gets latent weights
``sign * magnitude`` with the stored weight bits and magnitudes chosen so that the layer's
``channel_scale()`` (mean |W_j| in float32, computed by torch) equals the stored scale bit for bit.

Magnitudes: torch computes the mean as fl(S / n), S the float32 sum of the row. For a target s
the few float32 sums S around n*s are tried; each is realised exactly by n multiples of one power
of two u (S = K*u, K < 2^24: K // n per tap, plus u on the first K % n taps), so every partial sum
is an integer multiple of u below 2^24 u and the sum is exact in any summation order. If no float32
S gives fl(S / n) == s, no float32 weights do, and a FormatError says so.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mstc.errors import FormatError, UnsupportedModelError
from mstc.format.graph import OPS, _Tracer, trace_model
from mstc.format.layer import BinaryLayerCode
from mstc.format.model import CompressedModel
from mstc.nn import binary_weight_bits, is_binary_layer

#: float32 sums tried on each side of n*s (the rounding interval of s holds at most ~3 of them)
_SUM_STEPS = 4


def _exact_rows(total: np.ndarray, n: int) -> np.ndarray:
    """(cout, n) float32 magnitudes > 0 whose float32 sum is exactly ``total`` in any order."""
    frac, exp = np.frexp(total.astype(np.float64))  # total = frac * 2^exp, frac in [0.5, 1)
    k = np.round(frac * 2.0**24).astype(np.int64)  # exact: total has a 24-bit significand
    unit = np.exp2((exp - 24).astype(np.float64))
    q, r = k // n, k % n
    mags = (q[:, None] + (np.arange(n)[None, :] < r[:, None])) * unit[:, None]
    return mags.astype(np.float32)


def _magnitudes(layer: BinaryLayerCode, module: nn.Module) -> np.ndarray:
    """(cout, n) float32 magnitudes whose module.channel_scale() equals layer.scale exactly."""
    s = np.asarray(layer.scale, np.float32)
    if not np.isfinite(s).all() or (s <= 0).any():
        raise FormatError(f"layer {layer.name!r}: scale must be positive and finite")
    n = layer.n
    base = (s.astype(np.float64) * n).astype(np.float32)
    candidates = [base]
    up, down = base, base
    for _ in range(_SUM_STEPS):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(0))
        candidates += [up, down]
    mags = np.zeros((layer.cout, n), np.float32)
    found = np.zeros(layer.cout, dtype=bool)
    weight = module.weight
    for total in candidates:
        rows = _exact_rows(total, n)
        with torch.no_grad():
            weight.copy_(torch.from_numpy(rows).reshape(weight.shape))
            got = module.channel_scale().numpy()
        hit = (got == s) & ~found & (rows > 0).all(axis=1)
        mags[hit] = rows[hit]
        found |= hit
        if found.all():
            return mags
    bad = np.flatnonzero(~found)
    raise FormatError(
        f"layer {layer.name!r}: no float32 weights have mean |W_j| equal to the stored scale of "
        f"channel(s) {bad[:8].tolist()} (e.g. {float(s[bad[0]])!r} with n = {n}): the scale "
        "was not computed by torch from float32 weights"
    )


def _set_binary(layer: BinaryLayerCode, module: nn.Module) -> None:
    n = layer.n
    if tuple(module.weight.shape[:1]) != (layer.cout,) or module.weight[0].numel() != n:
        raise FormatError(
            f"layer {layer.name!r}: stored shape {layer.cout}x{n} does not fit the model's "
            f"weight {tuple(module.weight.shape)}"
        )
    if bool(module.scale) != (layer.scale is not None):
        raise FormatError(f"layer {layer.name!r}: scale present in only one of file and model")
    if (module.bias is not None) != (layer.bias is not None):
        raise FormatError(f"layer {layer.name!r}: bias present in only one of file and model")
    bits = layer.weight_bits()
    if module.scale:
        mags = _magnitudes(layer, module)
    else:
        mags = np.ones((layer.cout, n), np.float32)
    w = np.where(bits.astype(bool), mags, -mags)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w).reshape(module.weight.shape))
        if layer.bias is not None:
            module.bias.copy_(torch.from_numpy(np.asarray(layer.bias, np.float32)))
    if not np.array_equal(binary_weight_bits(module), bits):
        raise AssertionError(f"internal error: {layer.name} weight bits not reproduced")
    if module.scale and not np.array_equal(module.channel_scale().detach().numpy(), layer.scale):
        raise AssertionError(f"internal error: {layer.name} scale not reproduced")


def _set_tensor(module: nn.Module, param: str, value: np.ndarray | None, where: str) -> None:
    t = getattr(module, param, None)
    if value is None and t is None:
        return
    if value is None or t is None:
        raise FormatError(f"{where}: tensor {param!r} present in only one of file and model")
    if tuple(value.shape) != tuple(t.shape):
        raise FormatError(
            f"{where}: tensor {param!r} has shape {tuple(value.shape)}, the model expects "
            f"{tuple(t.shape)}"
        )
    with torch.no_grad():
        t.copy_(torch.from_numpy(np.asarray(value, np.float32)))


def to_torch(cm: CompressedModel) -> nn.Module:
    """The PyTorch model of ``cm``, in eval mode, whose compression is ``cm`` again.

    Full-precision tensors are copied; binary layers get the stored weight bits as signs and
    magnitudes that reproduce the stored per-channel scale exactly (module docstring).
    ``mstc.compress(to_torch(cm))`` has the same weight bits, scales, biases and float tensors.
    Raises :class:`~mstc.errors.FormatError` if ``cm`` has no model config or does not fit it.
    """
    from mstc.models import create_model, list_models

    config = dict(cm.model_config or {})
    name = config.pop("name", None)
    if not name:
        raise FormatError(
            "the compressed model has no model config (header 'model' with a 'name'): "
            "the PyTorch model cannot be rebuilt"
        )
    if name not in list_models():
        raise FormatError(f"model {name!r} of the compressed model is not registered in mstc")
    try:
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten below
            model = create_model(name, **config)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"model config {cm.model_config!r} is not valid: {exc}") from exc
    model.eval()

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise UnsupportedModelError(f"model cannot be traced with torch.fx: {exc}") from exc
    node_module = {n.name: n.target for n in graph.nodes if n.op == "call_module"}
    modules = dict(model.named_modules())
    for node in cm.nodes:
        if node.op.startswith("binary_"):
            qualname = node.attrs.get("layer")
            module = modules.get(qualname)
            if module is None or not is_binary_layer(module):
                raise FormatError(f"binary layer {qualname!r} is not a binary layer of {name!r}")
            _set_binary(cm.layers[qualname], module)
        elif OPS.get(node.op):
            if node.name not in node_module:
                raise FormatError(f"node {node.name!r} has no module in the model {name!r}")
            module = modules[node_module[node.name]]
            for param in OPS[node.op]:
                _set_tensor(module, param, cm.tensors.get(f"{node.name}.{param}"), node.name)

    # the rebuilt model must trace to the same graph with the same float tensors
    nodes, tensors, binary = trace_model(model)
    if [n.to_json() for n in nodes] != [n.to_json() for n in cm.nodes]:
        raise FormatError(f"the graph of the rebuilt {name!r} differs from the stored graph")
    if set(binary) != set(cm.layers):
        raise FormatError(f"the binary layers of the rebuilt {name!r} differ from the stored ones")
    if set(tensors) != set(cm.tensors) or not all(
        np.array_equal(tensors[k], cm.tensors[k]) for k in tensors
    ):
        raise FormatError(f"the float tensors of the rebuilt {name!r} differ from the stored ones")
    model.mstc_input_shape = tuple(int(v) for v in cm.input_shape)
    return model
