"""Bit-exact verification of a CompressedModel against its PyTorch model.

The contract: for every binary layer, the engine's integer sums equal the PyTorch model's
(``layer.integer_sums``) exactly, as integers. Logits are compared too; the engine's float parts
run the same torch functions, so they are expected to be identical (max |diff| is reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mstc.engine import Runtime
from mstc.errors import MSTCError
from mstc.format import CompressedModel
from mstc.nn import is_binary_layer


@dataclass
class VerifyResult:
    ok: bool
    layers_checked: int
    mismatched_layers: dict[str, int] = field(default_factory=dict)  # name -> differing values
    max_logit_diff: float = 0.0
    logits_tolerance: float = 0.0

    def __str__(self) -> str:
        state = "OK" if self.ok else "MISMATCH"
        bad = ", ".join(f"{k} ({v} values)" for k, v in self.mismatched_layers.items())
        return (
            f"{state}: {self.layers_checked} binary layers, integer sums "
            f"{'identical' if not self.mismatched_layers else 'differ in ' + bad}; "
            f"max |logit diff| {self.max_logit_diff:.3g} (tolerance {self.logits_tolerance:g})"
        )


def torch_integer_sums(
    model: nn.Module, x: torch.Tensor
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Eval-mode logits and every binary layer's integer sums (int32) of the PyTorch model."""
    sums: dict[str, np.ndarray] = {}
    hooks = []
    for name, m in model.named_modules():
        if is_binary_layer(m):

            def hook(mod, inp, out, name=name):
                s = mod.integer_sums(inp[0]).detach()
                if not torch.equal(s, s.round()):
                    raise AssertionError(f"{name}: torch sums are not integers")
                sums[name] = s.numpy().astype(np.int32)

            hooks.append(m.register_forward_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, sums


def _check_same_layers(compressed: CompressedModel, model: nn.Module) -> None:
    mods = {n: m for n, m in model.named_modules() if is_binary_layer(m)}
    if set(mods) != set(compressed.layers):
        raise MSTCError(
            "model and compressed file do not match: binary layers "
            f"{sorted(set(mods) ^ set(compressed.layers))[:4]} are in only one of them"
        )
    for name, m in mods.items():
        code = compressed.layers[name]
        if (m.weight.shape[0], m.weight[0].numel()) != (code.cout, code.n):
            raise MSTCError(
                f"model and compressed file do not match: layer {name} is "
                f"{tuple(m.weight.shape)} in the model, Cout={code.cout}, n={code.n} in the file"
            )


def verify(
    compressed: CompressedModel,
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    backend: str = "reference",
    logits_tolerance: float = 0.0,
    threads: int | None = None,
) -> VerifyResult:
    """Run both on ``x`` and compare integer sums exactly, logits within ``logits_tolerance``.

    The engine runs twice on one runtime: the pass that collects the sums, and the inference
    pass (compiled, :class:`mstc.engine.Runtime`); the logits of both are compared."""
    _check_same_layers(compressed, model)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    ref_logits, ref_sums = torch_integer_sums(model, x)
    rt = Runtime(compressed, backend, threads)
    logits, sums = rt.run(x.numpy(), return_sums=True)
    inference = rt.run(x.numpy())
    mismatched = {}
    for name, ref in ref_sums.items():
        got = sums.get(name)
        if got is None or got.shape != ref.shape:
            mismatched[name] = int(ref.size)
        elif not np.array_equal(got, ref):
            mismatched[name] = int((got != ref).sum())
    missing = set(sums) - set(ref_sums)
    for name in missing:
        mismatched[name] = -1
    diff = 0.0
    if logits.size:
        diff = max(float(np.abs(y - ref_logits).max()) for y in (logits, inference))
    ok = not mismatched and diff <= logits_tolerance
    return VerifyResult(ok, len(ref_sums), mismatched, diff, logits_tolerance)
