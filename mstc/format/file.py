"""The .mstc file: safetensors tensors plus a JSON header in the safetensors metadata.

Header (metadata key ``"mstc"``)::

    {"format": "mstc-compressed", "version": 1, "tensors_sha256": "<hex>",
     "input_shape": [C, H, W], "model": {...}, "plan_options": {...}, "fp_macs": {...},
     "nodes": [{"name", "op", "inputs", "attrs"}, ...],
     "layers": {name: {"kind", "cout", "cin", "kernel_size", "stride", "padding", "dilation",
                       "out_hw", "has_scale", "has_bias", "plan_options"}}}

Tensors: float parameters as ``"T.{node}.{param}"`` (float32); for each binary layer
``"L.{name}.{parent|negate|root_bits|diff_ptr|diff_idx|scale|bias}"``.
``tensors_sha256`` is SHA-256 over the tensors in sorted name order (name, dtype, shape, bytes).
Loading never executes code and validates everything; any defect raises
:class:`mstc.errors.FormatError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mstc.errors import FormatError
from mstc.format.graph import OPS, OPTIONAL_PARAMS, Node
from mstc.format.layer import BinaryLayerCode, index_dtype
from mstc.format.model import CompressedModel
from mstc.io import atomic_path
from mstc.mst.plan import forest_order

FORMAT_NAME = "mstc-compressed"
FORMAT_VERSION = 1
_LAYER_FIELDS = ("parent", "negate", "root_bits", "diff_ptr", "diff_idx")


def tensors_checksum(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(name.encode())
        h.update(str(a.dtype.str).encode())
        h.update(repr(tuple(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _to_file_tensors(cm: CompressedModel) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        f"T.{k}": np.asarray(v, np.float32) for k, v in cm.tensors.items()
    }
    for name, code in cm.layers.items():
        out[f"L.{name}.parent"] = code.parent.astype(np.int32)
        out[f"L.{name}.negate"] = code.negate.astype(np.uint8)
        out[f"L.{name}.root_bits"] = code.root_bits.astype(np.uint8)
        out[f"L.{name}.diff_ptr"] = code.diff_ptr.astype(np.int64)
        out[f"L.{name}.diff_idx"] = code.diff_idx.astype(index_dtype(code.n))
        if code.scale is not None:
            out[f"L.{name}.scale"] = code.scale.astype(np.float32)
        if code.bias is not None:
            out[f"L.{name}.bias"] = code.bias.astype(np.float32)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_compressed(cm: CompressedModel, path: str | os.PathLike) -> Path:
    from safetensors.numpy import save_file

    tensors = _to_file_tensors(cm)
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "tensors_sha256": tensors_checksum(tensors),
        "input_shape": list(cm.input_shape),
        "model": cm.model_config,
        "plan_options": cm.plan_options,
        "fp_macs": cm.fp_macs,
        "nodes": [n.to_json() for n in cm.nodes],
        "layers": {
            name: {
                "kind": c.kind,
                "cout": c.cout,
                "cin": c.cin,
                "kernel_size": list(c.kernel_size),
                "stride": list(c.stride),
                "padding": list(c.padding),
                "dilation": list(c.dilation),
                "out_hw": list(c.out_hw),
                "has_scale": c.scale is not None,
                "has_bias": c.bias is not None,
                "plan_options": c.plan_options,
            }
            for name, c in cm.layers.items()
        },
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"mstc": json.dumps(header)})
    return path


# ---------------------------------------------------------------------------------------- load


def _fail(path, msg: str):
    raise FormatError(f"{path}: {msg}")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"compressed model not found: {path}")
    try:
        tensors: dict[str, np.ndarray] = {}
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as exc:  # safetensors raises several types on malformed input
        _fail(path, f"not a readable safetensors file (truncated or corrupted?): {exc}")
    if "mstc" not in meta:
        _fail(path, "no mstc header: not an .mstc file")
    try:
        header = json.loads(meta["mstc"])
    except json.JSONDecodeError as exc:
        _fail(path, f"header is not valid JSON: {exc}")
    if not isinstance(header, dict):
        _fail(path, "header is not a JSON object")
    return header, tensors


def _pair(path, v, what) -> tuple[int, int]:
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) for i in v)):
        _fail(path, f"{what} must be a pair of integers, got {v!r}")
    return (int(v[0]), int(v[1]))


def _tensor(path, tensors, key, dtype, shape) -> np.ndarray:
    if key not in tensors:
        _fail(path, f"missing tensor {key!r}")
    a = tensors[key]
    if a.dtype != np.dtype(dtype):
        _fail(path, f"tensor {key!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        _fail(path, f"tensor {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a


def _load_layer(path, name: str, meta: Any, tensors) -> BinaryLayerCode:
    if not isinstance(meta, dict):
        _fail(path, f"layer {name!r}: description is not an object")
    try:
        kind, cout, cin = meta["kind"], meta["cout"], meta["cin"]
        geometry = {
            k: _pair(path, meta[k], f"layer {name!r} {k}")
            for k in ("kernel_size", "stride", "padding", "dilation", "out_hw")
        }
        has_scale, has_bias = bool(meta["has_scale"]), bool(meta["has_bias"])
        plan_options = dict(meta.get("plan_options", {}))
    except KeyError as exc:
        _fail(path, f"layer {name!r}: missing field {exc}")
    if kind not in ("conv2d", "linear"):
        _fail(path, f"layer {name!r}: unknown kind {kind!r}")
    if not (isinstance(cout, int) and isinstance(cin, int) and cout > 0 and cin > 0):
        _fail(path, f"layer {name!r}: cout/cin must be positive integers")
    kh, kw = geometry["kernel_size"]
    if kh < 1 or kw < 1 or min(geometry["stride"]) < 1 or min(geometry["dilation"]) < 1:
        _fail(path, f"layer {name!r}: invalid kernel/stride/dilation")
    if min(geometry["padding"]) < 0:
        _fail(path, f"layer {name!r}: negative padding")
    n = cin * kh * kw
    p = f"L.{name}."
    parent = _tensor(path, tensors, p + "parent", np.int32, (cout,)).astype(np.int64)
    negate = _tensor(path, tensors, p + "negate", np.uint8, (cout,))
    if ((parent < -1) | (parent >= cout)).any():
        _fail(path, f"layer {name!r}: parent index out of range")
    try:
        forest_order(parent)
    except ValueError:
        _fail(path, f"layer {name!r}: parent array is not a forest (it has a cycle)")
    if negate.max(initial=0) > 1 or negate[parent < 0].any():
        _fail(path, f"layer {name!r}: invalid negate flags")
    n_roots = int((parent < 0).sum())
    root_bits = _tensor(path, tensors, p + "root_bits", np.uint8, (n_roots, (n + 7) // 8))
    diff_ptr = _tensor(path, tensors, p + "diff_ptr", np.int64, (cout + 1,))
    diff_idx = _tensor(path, tensors, p + "diff_idx", index_dtype(n), None)
    if diff_idx.ndim != 1:
        _fail(path, f"layer {name!r}: diff_idx must be 1-D")
    counts = np.diff(diff_ptr)
    if diff_ptr[0] != 0 or (counts < 0).any() or diff_ptr[-1] != diff_idx.shape[0]:
        _fail(path, f"layer {name!r}: diff_ptr is not a valid CSR row pointer")
    if (counts[parent < 0] != 0).any():
        _fail(path, f"layer {name!r}: a root has stored differences")
    idx = diff_idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        _fail(path, f"layer {name!r}: difference index out of range [0, {n})")
    if idx.size > 1:
        rising = np.diff(idx) > 0
        row_start = np.zeros(idx.size, dtype=bool)
        row_start[diff_ptr[:-1][counts > 0]] = True
        if not (rising | row_start[1:]).all():
            _fail(path, f"layer {name!r}: difference indices not strictly increasing in a row")
    scale = _tensor(path, tensors, p + "scale", np.float32, (cout,)) if has_scale else None
    bias = _tensor(path, tensors, p + "bias", np.float32, (cout,)) if has_bias else None
    for t, what in ((scale, "scale"), (bias, "bias")):
        if t is not None and not np.isfinite(t).all():
            _fail(path, f"layer {name!r}: {what} has NaN or infinite values")
    return BinaryLayerCode(
        name=name,
        cout=cout,
        parent=parent.astype(np.int32),
        negate=negate.astype(bool),
        root_bits=root_bits,
        diff_ptr=diff_ptr,
        diff_idx=diff_idx,
        scale=scale,
        bias=bias,
        plan_options=plan_options,
        **geometry,
        kind=kind,
        cin=cin,
    )


def load(path: str | os.PathLike) -> CompressedModel:
    """Read and fully validate an .mstc file. Raises FormatError on any defect."""
    path = Path(path)
    header, tensors = _read(path)
    if header.get("format") != FORMAT_NAME:
        _fail(path, f"not an mstc compressed model (format={header.get('format')!r})")
    if header.get("version") != FORMAT_VERSION:
        _fail(
            path,
            f"format version {header.get('version')!r} is not supported "
            f"(this mstc reads version {FORMAT_VERSION})",
        )
    if header.get("tensors_sha256") != tensors_checksum(tensors):
        _fail(path, "checksum mismatch: the tensor data is corrupted")
    try:
        raw_nodes, raw_layers = header["nodes"], header["layers"]
        input_shape = tuple(int(v) for v in header["input_shape"])
    except (KeyError, TypeError, ValueError) as exc:
        _fail(path, f"header is missing or has a malformed field: {exc}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        _fail(path, f"invalid input_shape {input_shape}")
    if not isinstance(raw_layers, dict) or not isinstance(raw_nodes, list):
        _fail(path, "header 'layers' must be an object and 'nodes' a list")
    layers = {name: _load_layer(path, name, m, tensors) for name, m in raw_layers.items()}
    nodes: list[Node] = []
    seen: set[str] = set()
    float_tensors: dict[str, np.ndarray] = {}
    for raw in raw_nodes:
        try:
            node = Node.from_json(raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            _fail(path, f"malformed node {raw!r}: {exc}")
        if node.op not in OPS:
            _fail(path, f"node {node.name!r}: unknown op {node.op!r}")
        if node.name in seen:
            _fail(path, f"duplicate node name {node.name!r}")
        for i in node.inputs:
            if i not in seen:
                _fail(path, f"node {node.name!r}: input {i!r} is not an earlier node")
        if node.op.startswith("binary_") and node.attrs.get("layer") not in layers:
            _fail(path, f"node {node.name!r}: unknown binary layer {node.attrs.get('layer')!r}")
        for param in OPS[node.op]:
            key = f"T.{node.name}.{param}"
            if key in tensors:
                a = _tensor(path, tensors, key, np.float32, None)
                if not np.isfinite(a).all():
                    _fail(path, f"tensor {key!r} has NaN or infinite values")
                float_tensors[f"{node.name}.{param}"] = a
            elif param not in OPTIONAL_PARAMS and not node.op.startswith("binary_"):
                _fail(path, f"missing tensor {key!r}")
        seen.add(node.name)
        nodes.append(node)
    if not nodes or nodes[0].op != "input" or nodes[-1].op != "output":
        _fail(path, "graph must start with an input node and end with an output node")
    known = {f"T.{k}" for k in float_tensors} | {
        k for k in tensors if k.startswith("L.") and k.rsplit(".", 1)[0][2:] in layers
    }
    extra = sorted(set(tensors) - known)
    if extra:
        _fail(path, f"unexpected tensors {extra[:5]}")
    return CompressedModel(
        nodes=nodes,
        tensors=float_tensors,
        layers=layers,
        input_shape=input_shape,  # type: ignore[arg-type]
        model_config=dict(header.get("model", {})),
        plan_options=dict(header.get("plan_options", {})),
        fp_macs={str(k): int(v) for k, v in dict(header.get("fp_macs", {})).items()},
    )
