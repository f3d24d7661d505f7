"""The thin CLI over the library: summary, compress, inspect, verify."""

import json

import pytest
import torch

from mstc.checkpoint import load_checkpoint, save_checkpoint
from mstc.cli import main
from mstc.models import create_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "r20.safetensors"
    save_checkpoint(path, create_model("resnet20", width=0.3), config={"note": "test"})
    return path


def test_summary_json(checkpoint, capsys):
    assert main(["summary", str(checkpoint), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["layers"]) == 18 and out["bop_reduction"] > 1


def test_compress_inspect_verify(checkpoint, tmp_path, capsys):
    f = tmp_path / "m.mstc"
    assert (
        main(["compress", str(checkpoint), "-o", str(f), "--complement", "--max-depth", "3"]) == 0
    )
    assert "verified before writing: OK" in capsys.readouterr().out
    assert main(["inspect", str(f), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["plan_options"] == {"complement": True, "max_depth": 3}
    assert info["costs"]["max_depth"] <= 3
    assert main(["verify", str(f), "--against", str(checkpoint), "--batch", "2"]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_verify_fails_against_other_weights(checkpoint, tmp_path, capsys):
    f = tmp_path / "m.mstc"
    assert main(["compress", str(checkpoint), "-o", str(f)]) == 0
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.neg_()
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, model)
    capsys.readouterr()
    assert main(["verify", str(f), "--against", str(other)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none.mstc")]) == 2
    bad = tmp_path / "bad.mstc"
    bad.write_bytes(b"not a file at all")
    assert main(["inspect", str(bad)]) == 2
    assert "mstc: error" in capsys.readouterr().err
    bad_ckpt = tmp_path / "bad.safetensors"
    bad_ckpt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["summary", str(bad_ckpt)]) == 2
    assert main(["summary", "no_such_model_or_file"]) == 2
