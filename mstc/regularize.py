"""The MST regularizer: a loss term that shortens each binary layer's spanning tree (method.md 5).

For every regularized binary layer with latent weights W (Cout x n, one row per output channel)
each channel c has a *target* t(c) (or none, for a root / centre). The penalty is

    R = lambda * sum_layers sum_{c with a target} dist(w_c, w_t(c))

with three distances (a raw sum over weights, not a mean, as the paper's lambda = 4e-6 implies):

- ``"ste-hamming"``: dist = sum_k (1 - s * sign(w_ck) sign(w_tk)) / 2, the Hamming distance of
  the binary filters, differentiated through the straight-through estimator of the layer
  (s = -1 for a complement edge, where the child is pulled towards NOT parent; else s = +1);
- ``"masked-hamming"``: the same value, but the straight-through gradient flows only through
  the taps that differ (agreeing taps are left to the task loss instead of being pushed past
  the estimator's clipping point, where they would stop learning);
- ``"latent-l1"``: dist = sum_k |w_ck - s * w_tk| on the real-valued latent weights.

With ``detach_target`` (the default) the target's weights are treated as constants, so only the
child moves towards its parent (roots and centres follow the task loss alone); without it both
ends of every pair are pulled towards each other.

Targets come from K *centre* channels chosen per layer at construction and are recomputed from
sign(W) every ``update_every`` steps (until :meth:`MSTRegularizer.freeze`):

- ``"centers"``: each non-centre channel targets its nearest centre (a star per centre);
- ``"forest"``: the minimum spanning forest whose roots are exactly the K centres (each channel
  targets a centre or its parent in that forest, i.e. its current MST parent);
- ``"mst"``: the parent in the plain MST of :func:`mstc.mst.plan` (K only matters through
  :func:`init_from_centers`).

The "initial centres as initialisation" reading is :func:`init_from_centers`: every channel's
latent weights become a copy of one of K centre filters plus small Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree
from torch import nn

from mstc.mst import hamming_matrix, plan
from mstc.nn import BinaryConv2d, binary_weight_bits, get_ste

VARIANTS = ("ste-hamming", "masked-hamming", "latent-l1")
TARGETS = ("centers", "forest", "mst")


def binary_conv_layers(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    """The (name, module) pairs of the model's binary convolutions, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]


def _edge_costs(bits: np.ndarray, complement: bool) -> tuple[np.ndarray, np.ndarray]:
    """(cost, d): cost = min(d, n - d) with complement edges, else the Hamming distance d."""
    n = bits.shape[1]
    d = hamming_matrix(bits).astype(np.int64)
    return (np.minimum(d, n - d) if complement else d), d


def choose_centers(bits: np.ndarray, k: int, *, complement: bool = False) -> np.ndarray:
    """K centre channels by greedy farthest-point (k-centre) selection, deterministic.

    The first centre is the medoid (least total distance to the others); each next centre is the
    channel farthest from the centres chosen so far (ties: lowest index).
    """
    cout = bits.shape[0]
    k = max(1, min(int(k), cout))
    cost, _ = _edge_costs(bits, complement)
    centers = [int(np.argmin(cost.sum(axis=1)))]
    nearest = cost[centers[0]].copy()
    while len(centers) < k:
        nearest_masked = nearest.copy()
        nearest_masked[centers] = -1
        c = int(np.argmax(nearest_masked))
        centers.append(c)
        nearest = np.minimum(nearest, cost[c])
    return np.sort(np.asarray(centers, dtype=np.int64))


def assign_targets(
    bits: np.ndarray, centers: np.ndarray, mode: str, *, complement: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(target, negate) per channel: target[c] = -1 for a root; negate marks complement edges."""
    cout, n = bits.shape
    cost, d = _edge_costs(bits, complement)
    target = np.full(cout, -1, dtype=np.int64)
    if mode == "mst":
        p = plan(bits, complement=complement)
        target = p.parent.astype(np.int64).copy()
    elif mode == "centers":
        others = np.setdiff1d(np.arange(cout), centers)
        if others.size:
            sub = cost[np.ix_(others, centers)]
            target[others] = centers[np.argmin(sub, axis=1)]
    elif mode == "forest":
        # MST over the channels plus a virtual node joined to every centre at zero cost: the
        # tree rooted at the virtual node is the min spanning forest whose roots are the centres.
        g = np.zeros((cout + 1, cout + 1), dtype=np.int64)
        g[:cout, :cout] = cost + 2  # +2 keeps zero-distance edges (sparse) above the centre links
        np.fill_diagonal(g, 0)
        g[cout, centers] = g[centers, cout] = 1
        mst = minimum_spanning_tree(g)
        _, pred = breadth_first_order(mst + mst.T, cout, directed=False)
        pred = pred[:cout]
        target = np.where((pred < 0) | (pred == cout), -1, pred).astype(np.int64)
    else:
        raise ValueError(f"unknown target mode {mode!r}; known: {TARGETS}")
    negate = np.zeros(cout, dtype=bool)
    if complement:
        has = np.flatnonzero(target >= 0)
        negate[has] = (n - d[has, target[has]]) < d[has, target[has]]
    return target, negate


@dataclass
class LayerTree:
    """The current MST of one binary layer (per output position)."""

    name: str
    cout: int
    n: int
    xnors: int  # n per root + sum of edge costs
    dense_xnors: int  # cout * n
    depth: int

    @property
    def reduction(self) -> float:
        return self.dense_xnors / max(self.xnors, 1)


def layer_tree(name: str, layer: nn.Module, *, complement: bool = False) -> LayerTree:
    """Plan the layer's current binary weights with :func:`mstc.mst.plan` and summarise it."""
    p = plan(binary_weight_bits(layer), complement=complement)
    return LayerTree(name, p.cout, p.n, p.xnors, p.dense_xnors, p.depth)


def init_from_centers(
    model: nn.Module,
    k: int,
    *,
    noise: float = 0.1,
    generator: torch.Generator | None = None,
    layers: list[tuple[str, nn.Module]] | None = None,
) -> dict[str, np.ndarray]:
    """Initialise every channel as a copy of one of K centre filters plus noise.

    For each layer, K channels are drawn at random as centres; channel c becomes
    w_c = w_{centre(c)} + noise * std(W) * N(0, 1), centre(c) = centres[c mod K].
    Returns the centre indices per layer name.
    """
    layers = binary_conv_layers(model) if layers is None else layers
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, layer in layers:
            w = layer.weight
            cout = w.shape[0]
            kk = max(1, min(int(k), cout))
            centers = torch.randperm(cout, generator=generator)[:kk].sort().values
            base = w[centers].clone()
            src = base[torch.arange(cout) % kk]
            std = float(w.std()) if w.numel() > 1 else 1.0
            eps = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
            w.copy_(src + noise * std * eps)
            w[centers] = base  # the centres themselves stay noise-free
            out[name] = centers.numpy().astype(np.int64)
    return out


class MSTRegularizer:
    """lambda * sum of distances between each channel and its target, over binary convs.

    Call :meth:`step` once per optimisation step *before* computing the loss (it recomputes the
    targets every ``update_every`` steps unless frozen) and add :meth:`penalty` to the loss.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lam: float = 4e-6,
        centers: int = 4,
        variant: str = "masked-hamming",
        target: str = "forest",
        update_every: int = 50,
        complement: bool = False,
        detach_target: bool = True,
        centers_from: dict[str, np.ndarray] | None = None,
        layers: list[tuple[str, nn.Module]] | None = None,
        layer_weights: dict[str, float] | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
        if target not in TARGETS:
            raise ValueError(f"unknown target mode {target!r}; known: {TARGETS}")
        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        if centers < 1:
            raise ValueError(f"centers must be >= 1, got {centers}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.lam = float(lam)
        self.k = int(centers)
        self.variant = variant
        self.target_mode = target
        self.update_every = int(update_every)
        self.complement = bool(complement)
        self.detach_target = bool(detach_target)
        self.layers = binary_conv_layers(model) if layers is None else list(layers)
        #: per-layer factor w_l of the penalty (1 when not given): R = lambda * sum_l w_l * D_l
        self.layer_weights = {name: 1.0 for name, _ in self.layers}
        for name, w in (layer_weights or {}).items():
            if name not in self.layer_weights or not w >= 0:
                raise ValueError(f"layer weight {name!r}={w!r}: unknown layer or negative weight")
            self.layer_weights[name] = float(w)
        self.frozen = False
        self.steps = 0
        self.centers: dict[str, np.ndarray] = {}
        self.targets: dict[str, torch.Tensor] = {}
        self.signs: dict[str, torch.Tensor] = {}
        self._pairs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, layer in self.layers:
            if centers_from is not None and name in centers_from:
                self.centers[name] = np.asarray(centers_from[name], dtype=np.int64)
            else:
                self.centers[name] = choose_centers(
                    binary_weight_bits(layer), self.k, complement=self.complement
                )
        self.update_targets()

    # -- assignments ---------------------------------------------------------------------------
    def update_targets(self) -> None:
        """Recompute every layer's (target, negate) from the current sign(W)."""
        for name, layer in self.layers:
            target, negate = assign_targets(
                binary_weight_bits(layer),
                self.centers[name],
                self.target_mode,
                complement=self.complement,
            )
            dev = layer.weight.device
            self.targets[name] = torch.as_tensor(target, device=dev)
            self.signs[name] = torch.as_tensor(
                np.where(negate, -1.0, 1.0), dtype=layer.weight.dtype, device=dev
            )
        self._refresh_pairs()

    def _refresh_pairs(self) -> None:
        """(child, parent, sign) index tensors per layer, so the penalty never syncs the GPU."""
        for name, _ in self.layers:
            target = self.targets[name].cpu()
            child = torch.nonzero(target >= 0).flatten()
            dev = self.targets[name].device
            self._pairs[name] = (
                child.to(dev),
                target[child].to(dev),
                self.signs[name][child.to(dev)].unsqueeze(1),
            )

    def step(self) -> None:
        """Advance one optimisation step; recompute targets every ``update_every`` steps."""
        if self.steps > 0 and self.steps % self.update_every == 0 and not self.frozen:
            self.update_targets()
        self.steps += 1

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) recomputing the targets; the penalty keeps its current pairs."""
        self.frozen = bool(frozen)

    # -- the penalty ---------------------------------------------------------------------------
    def layer_distance(self, name: str, layer: nn.Module) -> torch.Tensor:
        """sum over channels with a target of dist(w_c, w_t(c)) for one layer (no lambda)."""
        child, parent, s = self._pairs[name]
        w = layer.weight.flatten(1)
        if self.variant in ("ste-hamming", "masked-hamming"):
            b = get_ste(layer.weight_ste)(w)
            bp = b[parent].detach() if self.detach_target else b[parent]
            d = (1.0 - s * b[child] * bp) * 0.5
            if self.variant == "masked-hamming":
                d = d * (d.detach() > 0)  # same value; gradient only through differing taps
            return d.sum()
        wp = w[parent].detach() if self.detach_target else w[parent]
        return (w[child] - s * wp).abs().sum()

    def penalty(self) -> torch.Tensor:
        """R = lambda * sum over layers l of w_l * :meth:`layer_distance` (w_l = 1 by default)."""
        total = None
        for name, layer in self.layers:
            d = self.layer_distance(name, layer)
            if self.layer_weights[name] != 1.0:
                d = d * self.layer_weights[name]
            total = d if total is None else total + d
        if total is None:
            return torch.zeros(())
        return self.lam * total

    # -- reporting -----------------------------------------------------------------------------
    def trees(self) -> list[LayerTree]:
        """The current MST (cost, depth) of every regularized layer."""
        return [layer_tree(n, m, complement=self.complement) for n, m in self.layers]

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: step count, frozen flag, centres, targets and signs per layer."""
        return {
            "steps": self.steps,
            "frozen": self.frozen,
            "centers": {k: v.tolist() for k, v in self.centers.items()},
            "targets": {k: v.cpu().tolist() for k, v in self.targets.items()},
            "negate": {k: (v.cpu() < 0).tolist() for k, v in self.signs.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.frozen = bool(state["frozen"])
        for name, layer in self.layers:
            dev = layer.weight.device
            self.centers[name] = np.asarray(state["centers"][name], dtype=np.int64)
            self.targets[name] = torch.as_tensor(state["targets"][name], device=dev)
            self.signs[name] = torch.as_tensor(
                np.where(np.asarray(state["negate"][name]), -1.0, 1.0),
                dtype=layer.weight.dtype,
                device=dev,
            )
        self._refresh_pairs()
