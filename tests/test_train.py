"""The trainer: config, checkpoints, exact resume, crash safety, data errors, CLI, DDP on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mstc.checkpoint import load_checkpoint
from mstc.data import DataError, DataNotFoundError
from mstc.errors import FormatError, MSTCError
from mstc.train import TrainConfig, resolve_config, train
from mstc.train.config import ConfigError
from mstc.train.loop import lr_at
from mstc.train.state import read_state

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        model="vgg_small",
        width=0.125,
        dataset="synthetic",
        epochs=2,
        batch_size=64,
        lr=5e-3,
        mst_lambda=1e-3,
        centers=2,
        mst_update_every=3,
        out=str(tmp_path / "run"),
        progress=False,
        compress=False,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_one_epoch_writes_a_loadable_checkpoint(tmp_path):
    cfg = tiny(tmp_path, epochs=1, compress=True)
    res = train(cfg, log=lambda s: None)
    out = Path(cfg.out)
    for name in (
        "checkpoint.safetensors",
        "state.safetensors",
        "config.json",
        "log.csv",
        "summary.json",
        "model.mstc",
        "costs.txt",
    ):
        assert (out / name).is_file(), name
    model, header = load_checkpoint(out / "checkpoint.safetensors")
    assert header["config"]["version"] == 1 and header["config"]["mst_lambda"] == 1e-3
    assert header["extra"]["epoch"] == 1
    assert _same_weights(model, res.model.cpu())
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "accuracy",
        "bop_reduction",
        "weight_bit_reduction",
        "max_depth",
        "checkpoint",
        "compressed",
    ):
        assert key in summary
    assert summary["bop_reduction"] >= 1.0
    # the trainer's own accounting agrees with mstc.costs on the compressed file
    import mstc
    from mstc.costs import network_costs

    costs = network_costs(mstc.load(summary["compressed"]))
    assert costs.bop_reduction == pytest.approx(summary["bop_reduction"])
    assert costs.weight_bit_reduction == pytest.approx(summary["weight_bit_reduction"])
    assert costs.max_depth == summary["max_depth"]
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    a = train(tiny(tmp_path / "a", epochs=3), log=lambda s: None)
    cfg_b = tiny(tmp_path / "b", epochs=3)
    part = train(cfg_b, stop_after_epoch=1, log=lambda s: None)
    assert not part.finished and len(part.history) == 1
    b = train(cfg_b, resume=True, log=lambda s: None)
    assert b.finished
    assert _same_weights(a.model, b.model)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_resume_two_stage_and_center_init(tmp_path):
    kw = dict(epochs=3, two_stage=True, stage1_epochs=1, center_init=True, mst_target="forest")
    a = train(tiny(tmp_path / "a", **kw), log=lambda s: None)
    cfg_b = tiny(tmp_path / "b", **kw)
    train(cfg_b, stop_after_epoch=2, log=lambda s: None)
    b = train(cfg_b, resume=True, log=lambda s: None)
    assert _same_weights(a.model, b.model)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = tiny(tmp_path, epochs=2)
    train(cfg, stop_after_epoch=1, log=lambda s: None)
    with pytest.raises(ConfigError, match="mst_lambda"):
        train(cfg.replace(mst_lambda=1.0), resume=True, log=lambda s: None)


def test_crash_mid_write_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=3)
    train(cfg, stop_after_epoch=1, log=lambda s: None)
    out = Path(cfg.out)
    ckpt_before = (out / "checkpoint.safetensors").read_bytes()
    state_before = (out / "state.safetensors").read_bytes()

    import mstc.checkpoint
    import mstc.train.state

    def torn_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial garbage")  # half-written, then the process dies
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(mstc.checkpoint, "save_file", torn_write)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, resume=True, log=lambda s: None)
    assert (out / "checkpoint.safetensors").read_bytes() == ckpt_before
    load_checkpoint(out / "checkpoint.safetensors")

    monkeypatch.undo()
    monkeypatch.setattr(mstc.train.state, "save_file", torn_write)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, resume=True, log=lambda s: None)
    assert (out / "state.safetensors").read_bytes() == state_before
    assert read_state(out / "state.safetensors")[1]["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()
    done = train(cfg, resume=True, log=lambda s: None)
    ref = train(tiny(tmp_path / "ref", epochs=3), log=lambda s: None)
    assert _same_weights(done.model, ref.model)


def test_corrupt_state_is_a_format_error(tmp_path):
    cfg = tiny(tmp_path, epochs=2)
    train(cfg, stop_after_epoch=1, log=lambda s: None)
    (Path(cfg.out) / "state.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError):
        train(cfg, resume=True, log=lambda s: None)


def test_missing_data_says_how_to_get_it(tmp_path):
    cfg = tiny(tmp_path, dataset="fashion-mnist", data_root=str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError, match="mstc data fetch"):
        train(cfg, log=lambda s: None)


def test_corrupt_data_is_a_data_error(tmp_path):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (root / "mnist" / stem).write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError):
        train(tiny(tmp_path, dataset="mnist", data_root=str(root)), log=lambda s: None)


def test_config_file_and_flag_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: resnet20\nepochs: 7\nmst-lambda: 1.0e-4\ncenters: 8\n")
    cfg = resolve_config(p, {"epochs": 2, "centers": None})
    assert (cfg.model, cfg.epochs, cfg.mst_lambda, cfg.centers) == ("resnet20", 2, 1e-4, 8)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    p.write_text("modle: resnet20\n")
    with pytest.raises(ConfigError, match="modle"):
        resolve_config(p)
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError):
        resolve_config(None, {"optimizer": "lbfgs"})
    assert isinstance(ConfigError("x"), MSTCError)


def test_repository_configs_are_valid():
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        if p.name.startswith("sweep"):
            from mstc.train.sweep import load_sweep

            load_sweep(p)
        else:
            resolve_config(p)


def test_cosine_schedule():
    cfg = TrainConfig(epochs=2, lr=1.0)
    assert lr_at(cfg, 0, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 10, 10) == pytest.approx(0.5)
    assert lr_at(cfg, 20, 10) == pytest.approx(0.0, abs=1e-12)
    two = TrainConfig(epochs=4, lr=1.0, two_stage=True, stage1_epochs=2)
    assert lr_at(two, 20, 10) == pytest.approx(1.0)  # stage 2 restarts the cosine


def test_cli_train_and_eval(tmp_path, capsys):
    from mstc.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "resnet20",
            "--width",
            "0.25",
            "--epochs",
            "1",
            "--mst-lambda",
            "1e-3",
            "--centers",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out / "summary.json")
    assert "binary 3x3 convs" in (out / "costs.txt").read_text()
    rc = main(["eval", str(out / "checkpoint.safetensors"), "--json"])
    assert rc == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("{") :])
    assert result["dataset"] == "synthetic" and 0 <= result["accuracy"] <= 1
    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    rc = main(["eval", str(out / "model.mstc"), "--dataset", "synthetic", "--json"])
    assert rc == 0
    text = capsys.readouterr().out
    compressed = json.loads(text[text.index("{") :])
    assert compressed["accuracy"] == pytest.approx(result["accuracy"])
    assert main(["eval", str(out / "model.mstc")]) == 2  # needs --dataset


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(torchrun).exists():
        pytest.skip("torchrun not installed")
    out = tmp_path / "ddp"
    script = "import sys; from mstc.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "--no-python",
        sys.executable,
        "-c",
        script,
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "vgg_small",
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--mst-lambda",
        "1e-3",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, header = load_checkpoint(out / "checkpoint.safetensors")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] > 0
    # a 2-process run sees every global batch: 384 samples / 64 = 6 steps per epoch
    assert read_state(out / "state.safetensors")[1]["step"] == 6


def test_demo_flow_on_synthetic_data(tmp_path, monkeypatch):
    """The demo's whole flow (train twice, compress, verify bit-exactly, summary) on tiny data."""
    import mstc.data
    from mstc.train import demo

    recipe = dict(
        demo.DEMO_RECIPE,
        model="vgg_small",
        dataset="synthetic",
        train_subset=None,
        epochs=1,
        eval_every=1,
        batch_size=64,
    )
    monkeypatch.setattr(demo, "DEMO_RECIPE", recipe)
    monkeypatch.setattr(mstc.data, "fetch", lambda *a, **k: None)
    path = demo.run_demo(
        tmp_path / "demo", threads=1, progress=False, reference_images=16, log=lambda s: None
    )
    s = json.loads(path.read_text())
    assert s["verification"]["bit_exact"] and s["verification_reference"]["bit_exact"]
    assert s["verification"]["images"] == 128
    assert s["engine_accuracy"] == pytest.approx(s["accuracy"])
    for key in (
        "accuracy",
        "baseline_accuracy",
        "bop_reduction",
        "weight_bit_reduction",
        "max_depth",
        "checkpoint",
        "compressed",
    ):
        assert s[key] is not None, key
    assert Path(s["compressed"]).is_file() and Path(s["checkpoint"]).is_file()
