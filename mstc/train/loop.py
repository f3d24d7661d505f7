"""The training loop: seeded, resumable at epoch boundaries, DDP-ready, MST-regularized.

Loss per step: cross-entropy(model(x), y) + R, with R the :class:`mstc.regularize.MSTRegularizer`
penalty lambda * sum_c dist(w_c, w_t(c)). Learning rate per step s of a stage of S steps:
lr * 0.5 * (1 + cos(pi * s / S)) (cosine) after an optional linear warm-up.

Files written in ``config.out`` after every epoch (atomically): ``checkpoint.safetensors`` (model +
resolved config, :func:`mstc.checkpoint.save_checkpoint`), ``state.safetensors`` (everything
``--resume`` needs), ``config.json``, ``log.csv``; at the end ``model.mstc``, ``costs.txt`` and
``summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mstc.checkpoint import save_checkpoint
from mstc.io import write_text_atomic
from mstc.models import create_model
from mstc.nn import BINARY_LAYER_TYPES
from mstc.regularize import MSTRegularizer, init_from_centers
from mstc.train import distributed as dist_util
from mstc.train.config import ConfigError, TrainConfig
from mstc.train.data import Split, eval_batches, load_split, num_train_batches, train_batches
from mstc.train.metrics import binary_positions, tree_summary
from mstc.train.state import read_state, restore_state, save_state

CHECKPOINT = "checkpoint.safetensors"
STATE = "state.safetensors"
#: config keys that may differ between a run and its resumption
RESUME_FREE_KEYS = frozenset({"progress", "threads", "device", "out", "compress"})

Log = Callable[[str], None]


@dataclass
class TrainResult:
    out_dir: Path
    accuracy: float
    summary: dict[str, Any]
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    summary_path: Path | None = None
    finished: bool = True


# -- building blocks ---------------------------------------------------------------------------
def build_model(cfg: TrainConfig, info) -> nn.Module:
    """create_model for the data set's classes/channels (vgg_small gets the data's image size)."""
    kwargs = dict(cfg.model_kwargs)
    if cfg.model == "vgg_small":
        kwargs.setdefault("image_size", info.image_size)
    try:
        return create_model(
            cfg.model,
            num_classes=info.num_classes,
            in_channels=info.in_channels,
            width=cfg.width,
            **kwargs,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model {cfg.model!r}: {exc}") from None


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Latent binary weights (decay ``binary_weight_decay``), other weights of conv/linear
    layers (decay ``weight_decay``), and the rest (BN, PReLU, biases: no decay)."""
    binary, decay, rest = [], [], []
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            if isinstance(m, BINARY_LAYER_TYPES) and pname == "weight":
                binary.append(p)
            elif pname == "weight" and isinstance(m, nn.Conv2d | nn.Linear):
                decay.append(p)
            else:
                rest.append(p)
    groups = [
        {"params": binary, "weight_decay": cfg.binary_weight_decay, "name": "binary"},
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": rest, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adam":
        # decoupled decay (AdamW) so that decay does not feed Adam's moment estimates
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of global step ``step`` (cosine within each stage, linear warm-up)."""
    total = cfg.epochs * steps_per_epoch
    s1 = cfg.stage1_epochs * steps_per_epoch if cfg.two_stage else 0
    start, length = (0, s1) if step < s1 else (s1, total - s1)
    pos = step - start
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if pos < warm:
        return cfg.lr * (pos + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    frac = (pos - warm) / max(1, length - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def set_real_weights(model: nn.Module, real: bool) -> None:
    """Stage 1 of the two-stage recipe: binary layers use their latent weights unbinarised."""
    for m in model.modules():
        if isinstance(m, BINARY_LAYER_TYPES):
            if real:
                m.binary_weight = lambda m=m: m.weight  # instance attribute shadows the method
            elif "binary_weight" in m.__dict__:
                del m.binary_weight


def evaluate(
    model: nn.Module,
    data: Split,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``data`` (summed over DDP ranks)."""
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64)
    loss = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for x, y in eval_batches(data, batch_size, rank=rank, world=world):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").double().cpu()
            correct += (out.argmax(1) == y).sum().double().cpu()
            count += y.numel()
    model.train(was)
    stats = dist_util.all_reduce_sum(torch.stack([correct, loss, count]))
    return float(stats[0] / stats[2]), float(stats[1] / stats[2])


def _csv_text(history: list[dict[str, Any]]) -> str:
    if not history:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def _resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available")
    if cfg.device.startswith("cuda:"):
        return torch.device(cfg.device)
    return torch.device("cuda", local_rank)


# -- the loop ----------------------------------------------------------------------------------


def _layer_weights(cfg: TrainConfig, positions: dict[str, int]) -> dict[str, float] | None:
    """Per-layer penalty factors: P_l / mean_l P_l for ``mst_layer_weighting == "bops"``."""
    if cfg.mst_layer_weighting == "uniform" or not positions:
        return None
    mean = sum(positions.values()) / len(positions)
    return {name: p / mean for name, p in positions.items()}


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    log: Log | None = None,
) -> TrainResult:
    """Train ``config`` (resuming from ``config.out/state.safetensors`` when ``resume``).

    ``stop_after_epoch`` ends the run after that many completed epochs (as if it had been
    killed there), for tests and time-sliced runs; a later ``resume=True`` call continues it.
    """
    cfg = config.validate()
    rank, world, local_rank = dist_util.init_distributed()
    log = log or (print if rank == 0 else (lambda s: None))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _resolve_device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    train_data = load_split(
        cfg.dataset, cfg.data_root, "train", subset=cfg.train_subset, seed=cfg.seed
    )
    test_data = load_split(
        cfg.dataset, cfg.data_root, "test", subset=cfg.test_subset, seed=cfg.seed
    )
    info = train_data.info
    if device.type == "cuda":  # small data sets live on the GPU: no host-to-device copies
        torch.backends.cudnn.benchmark = True
        train_data = Split(train_data.images.to(device), train_data.labels.to(device), info)
        test_data = Split(test_data.images.to(device), test_data.labels.to(device), info)
    input_shape = (info.in_channels, info.image_size, info.image_size)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, info)
    centers_from = None
    if cfg.center_init:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        centers_from = init_from_centers(
            model, cfg.centers, noise=cfg.center_init_noise, generator=g
        )
    model.to(device)
    positions = binary_positions(model, input_shape)
    reg = None
    if cfg.mst_lambda > 0:
        reg = MSTRegularizer(
            model,
            lam=cfg.mst_lambda,
            centers=cfg.centers,
            variant=cfg.mst_variant,
            target=cfg.mst_target,
            update_every=cfg.mst_update_every,
            complement=cfg.complement,
            detach_target=cfg.mst_detach_target,
            centers_from=centers_from,
            layer_weights=_layer_weights(cfg, positions),
        )
    optimizer = make_optimizer(model, cfg)

    start_epoch, step, history = 0, 0, []
    state_path = out / STATE
    if resume and state_path.exists():
        tensors, meta = read_state(state_path)
        old = {k: v for k, v in meta.get("config", {}).items() if k not in RESUME_FREE_KEYS}
        new = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE_KEYS}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                f"cannot resume {state_path}: the config differs in {', '.join(diff)}"
            )
        restore_state(tensors, meta, model=model, optimizer=optimizer)
        if reg is not None:
            reg.load_state_dict(meta["regularizer"])
        start_epoch, step, history = int(meta["epoch"]), int(meta["step"]), meta["history"]
        log(f"resuming {out} after epoch {start_epoch} (step {step})")
    elif resume:
        log(f"no state in {out}: starting from scratch")

    net: nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    spe = num_train_batches(len(train_data), cfg.batch_size, world)
    end_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
    tree = tree_summary(model, positions, complement=cfg.complement)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        real = cfg.two_stage and epoch < cfg.stage1_epochs
        set_real_weights(model, real)
        if cfg.two_stage and epoch == cfg.stage1_epochs:
            optimizer.state.clear()  # stage 2 starts with fresh moments (ReActNet)
        if reg is not None:
            reg.freeze(epoch >= cfg.epochs - cfg.mst_freeze_epochs)
        net.train()
        batches = train_batches(
            train_data,
            cfg.batch_size,
            seed=cfg.seed,
            epoch=epoch,
            augment=cfg.augment,
            rank=rank,
            world=world,
        )
        bar = None
        if tqdm is not None and cfg.progress and rank == 0:
            bar = tqdm(
                total=spe,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, penalty, correct, n
        for x, y in batches:
            lr = lr_at(cfg, step, spe)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            updated = False
            if reg is not None:
                before = reg.steps
                reg.step()
                updated = (before > 0 and before % reg.update_every == 0) and not reg.frozen
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            total = loss
            pen = torch.zeros((), device=device)
            if reg is not None:
                pen = reg.penalty()
                total = loss + pen
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            step += 1
            n = y.numel()
            with torch.no_grad():  # accumulated on the device: no sync per step
                sums += torch.stack(
                    [
                        loss.detach() * n,
                        pen.detach() * n,
                        (logits.argmax(1) == y).sum(),
                        torch.tensor(n, device=device),
                    ]
                ).double()
            if updated and rank == 0 and bar is not None:
                tree = tree_summary(model, positions, complement=cfg.complement)
            if bar is not None:
                bar.update(1)
                if bar.n % 10 and bar.n != spe:
                    continue
                bar.set_postfix(
                    loss=f"{sums[0] / sums[3]:.3f}",
                    acc=f"{sums[2] / sums[3]:.3f}",
                    bops=f"{tree.bop_reduction:.1f}x",
                    refresh=False,
                )
        if bar is not None:
            bar.close()
        sums = dist_util.all_reduce_sum(sums.cpu())
        last = epoch + 1 == cfg.epochs
        acc = test_loss = float("nan")
        if last or (epoch + 1) % cfg.eval_every == 0:
            acc, test_loss = evaluate(
                model,
                test_data,
                batch_size=max(256, cfg.batch_size),
                device=device,
                rank=rank,
                world=world,
            )
        tree = tree_summary(model, positions, complement=cfg.complement)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "lr": lr_at(cfg, max(step - 1, 0), spe),
            "train_loss": float(sums[0] / sums[3]),
            "penalty": float(sums[1] / sums[3]),
            "train_accuracy": float(sums[2] / sums[3]),
            "test_loss": test_loss,
            "test_accuracy": acc,
            "bop_reduction": tree.bop_reduction,
            "weight_bit_reduction": tree.weight_bit_reduction,
            "max_depth": tree.max_depth,
            "seconds": round(time.time() - t0, 3),
        }
        history.append(row)
        test_part = f"test acc {acc:.4f} " if not math.isnan(acc) else ""
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
            f"train acc {row['train_accuracy']:.4f} {test_part}"
            f"BOPs {tree.bop_reduction:.2f}x depth {tree.max_depth} ({row['seconds']:.1f}s)"
        )
        if rank == 0:
            extra = {"epoch": epoch + 1, "test_accuracy": acc, "dataset": cfg.dataset}
            save_checkpoint(out / CHECKPOINT, model, config=cfg.to_dict(), extra=extra)
            save_state(
                state_path,
                model=model,
                optimizer=optimizer,
                info={
                    "epoch": epoch + 1,
                    "step": step,
                    "history": history,
                    "config": cfg.to_dict(),
                    "regularizer": reg.state_dict() if reg is not None else None,
                },
            )
            write_text_atomic(out / "config.json", cfg.to_json() + "\n")
            write_text_atomic(out / "log.csv", _csv_text(history))
        dist_util.barrier()
    set_real_weights(model, False)

    finished = len(history) >= cfg.epochs
    accuracy = float(history[-1]["test_accuracy"]) if history else float("nan")
    result = TrainResult(out, accuracy, {}, model, history, finished=finished)
    if not finished or rank != 0:
        dist_util.cleanup()
        return result
    result.summary = finish_run(model, cfg, positions, input_shape, accuracy, log=log)
    result.summary_path = out / "summary.json"
    dist_util.cleanup()
    return result


def finish_run(
    model: nn.Module,
    cfg: TrainConfig,
    positions: dict[str, int],
    input_shape: tuple[int, int, int],
    accuracy: float,
    *,
    log: Log = print,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compress (optionally), print the per-layer table and write ``summary.json``."""
    out = Path(cfg.out)
    model = model.cpu().eval()
    tree = tree_summary(model, positions, complement=cfg.complement)
    compressed_path = None
    table = None
    if cfg.compress:
        from mstc.train.report import compress_and_table

        compressed_path, table, _ = compress_and_table(
            model, out / "model.mstc", complement=cfg.complement, input_shape=input_shape
        )
    if table is None:  # not written to a file, but the same per-layer table
        from mstc.costs import format_table, network_costs
        from mstc.format import compress

        cm = compress(model, complement=cfg.complement, input_shape=input_shape)
        table = format_table(network_costs(cm))
    write_text_atomic(out / "costs.txt", table + "\n")
    log(table)
    summary = {
        "accuracy": accuracy,
        "bop_reduction": tree.bop_reduction,
        "weight_bit_reduction": tree.weight_bit_reduction,
        "max_depth": tree.max_depth,
        "bops_dense": tree.bops_dense,
        "bops_mst": tree.bops_mst,
        "weight_bits_dense": tree.weight_bits_dense,
        "weight_bits_mst": tree.weight_bits_mst,
        "checkpoint": str(out / CHECKPOINT),
        "compressed": str(compressed_path) if compressed_path else None,
        "log": str(out / "log.csv"),
        "config": cfg.to_dict(),
        **(extra or {}),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
