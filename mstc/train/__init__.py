"""Training binary networks with the MST regularizer: config, loop, checkpoints, resume, DDP.

>>> from mstc.train import TrainConfig, train  # doctest: +SKIP
>>> result = train(TrainConfig(model="resnet20", dataset="fashion-mnist", mst_lambda=1e-4))
"""

from mstc.train.config import CONFIG_VERSION, ConfigError, TrainConfig, resolve_config
from mstc.train.loop import TrainResult, build_model, evaluate, train
from mstc.train.metrics import TreeSummary, binary_positions, tree_summary

__all__ = [
    "CONFIG_VERSION",
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "TreeSummary",
    "binary_positions",
    "build_model",
    "evaluate",
    "resolve_config",
    "train",
    "tree_summary",
]
