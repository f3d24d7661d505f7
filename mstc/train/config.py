"""The training configuration: one dataclass, read from YAML, overridden by flags, saved as JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mstc.errors import MSTCError

CONFIG_VERSION = 1


class ConfigError(MSTCError, ValueError):
    """A training configuration is invalid (unknown key, bad value, unreadable file)."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (the run is a pure function of it).

    The MST regularizer adds ``mst_lambda * sum dist(w_c, w_target(c))`` to the loss
    (see :mod:`mstc.regularize`); ``mst_lambda = 0`` is the uncompressed baseline recipe.
    """

    version: int = CONFIG_VERSION
    # model
    model: str = "resnet20"
    width: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    train_subset: int | None = None  # first N of a seeded permutation of the training split
    test_subset: int | None = None
    augment: bool = False
    # optimisation
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0  # on real-valued parameters (not BN/bias/PReLU)
    binary_weight_decay: float = 0.0  # on the latent weights of binary layers
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    two_stage: bool = False  # ReActNet: binary activations + real weights first, then both
    stage1_epochs: int = 0
    label_smoothing: float = 0.0
    # MST regularizer
    mst_lambda: float = 0.0
    centers: int = 4
    mst_variant: str = "masked-hamming"  # ste-hamming | masked-hamming | latent-l1
    mst_target: str = "forest"  # centers | forest | mst
    mst_update_every: int = 50  # steps between re-assignments
    mst_detach_target: bool = True  # only the child moves towards its target
    mst_freeze_epochs: int = 1  # last epochs with frozen assignments (fine-tuning)
    # uniform: every layer's distance counts once; bops: layer l weighted by P_l / mean_l P_l
    # (its output positions), so the penalty weighs a tap by the BOPs it costs
    mst_layer_weighting: str = "uniform"
    center_init: bool = False  # initialise every channel as a noisy copy of one of K centres
    center_init_noise: float = 0.1
    complement: bool = False  # allow complement (inverted) edges, method.md section 2
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    out: str = "runs/train"
    compress: bool = True  # compress at the end and write model.mstc + the cost table
    progress: bool = True

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        from mstc.models import list_models
        from mstc.regularize import TARGETS, VARIANTS

        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if self.version != CONFIG_VERSION:
            bad(f"config version {self.version} is not supported (expected {CONFIG_VERSION})")
        if self.model not in list_models():
            bad(f"unknown model {self.model!r}; known: {', '.join(list_models())}")
        if self.epochs < 1:
            bad("epochs must be >= 1")
        if self.batch_size < 1:
            bad("batch_size must be >= 1")
        if self.optimizer not in ("adam", "sgd"):
            bad(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            bad(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.lr <= 0:
            bad("lr must be > 0")
        if self.mst_lambda < 0:
            bad("mst_lambda must be >= 0")
        if self.centers < 1:
            bad("centers must be >= 1")
        if self.mst_variant not in VARIANTS:
            bad(f"mst_variant must be one of {VARIANTS}, got {self.mst_variant!r}")
        if self.mst_target not in TARGETS:
            bad(f"mst_target must be one of {TARGETS}, got {self.mst_target!r}")
        if self.mst_update_every < 1:
            bad("mst_update_every must be >= 1")
        if self.mst_layer_weighting not in ("uniform", "bops"):
            bad(f"mst_layer_weighting must be uniform or bops, got {self.mst_layer_weighting!r}")
        if self.two_stage and not (0 < self.stage1_epochs < self.epochs):
            bad("two_stage needs 0 < stage1_epochs < epochs")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(f"{name} must be >= 1")
        if self.eval_every < 1:
            bad("eval_every must be >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        return self

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {k.replace("-", "_"): v for k, v in data.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        try:
            cfg = cls(**data)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict of TrainConfig fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown config keys: {', '.join(unknown)}")
    return data


def resolve_config(
    config_file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < YAML file < overrides (flags); returns a validated config."""
    data: dict[str, Any] = {}
    if config_file is not None:
        data.update(load_config_file(config_file))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(data).validate()
