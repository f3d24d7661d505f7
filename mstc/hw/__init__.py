"""Hardware view of MST-compressed binary layers: an Amaranth datapath generator, its simulation
against a numpy reference, ECP5 synthesis with yowasp tools, and a cycle/area model."""

from mstc.hw.datapath import LayerChain, LayerDatapath
from mstc.hw.fold import GE, LE, Thresholds, bn_sign_reference, fold_bn_sign
from mstc.hw.reference import chain_bits, layer_bits, layer_sums, layer_sums_tree
from mstc.hw.sim import SimResult, simulate
from mstc.hw.spec import LayerSpec, clustered_bits, random_bits, spec_from_model
from mstc.hw.window import ConvPipeline, WindowGenerator, im2col_bits

__all__ = [
    "bn_sign_reference",
    "chain_bits",
    "clustered_bits",
    "ConvPipeline",
    "fold_bn_sign",
    "GE",
    "im2col_bits",
    "layer_bits",
    "layer_sums",
    "layer_sums_tree",
    "LayerChain",
    "LayerDatapath",
    "LayerSpec",
    "LE",
    "random_bits",
    "SimResult",
    "simulate",
    "spec_from_model",
    "Thresholds",
    "WindowGenerator",
]
