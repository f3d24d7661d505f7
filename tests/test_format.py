"""The .mstc file: lossless round trip, atomic writes, and clear errors on malformed files."""

import json

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm
from safetensors import safe_open
from safetensors.numpy import save_file

import mstc
from mstc.errors import FormatError
from mstc.format.file import tensors_checksum
from mstc.models import create_model
from mstc.nn import binary_weight_bits, is_binary_layer
from mstc.verify import verify


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_batchnorm(create_model("resnet20", width=0.45))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fmt") / "m.mstc"
    mstc.compress(model, complement=True).save(path)
    return path


def _raw(path):
    with safe_open(str(path), framework="np") as f:
        return json.loads(f.metadata()["mstc"]), {k: f.get_tensor(k) for k in f.keys()}


def _write(path, header, tensors, *, fix_checksum=True):
    if fix_checksum:
        header["tensors_sha256"] = tensors_checksum(tensors)
    save_file(tensors, str(path), metadata={"mstc": json.dumps(header)})
    return path


def test_round_trip_is_lossless(model, saved):
    cm = mstc.load(saved)
    mods = {n: m for n, m in model.named_modules() if is_binary_layer(m)}
    assert set(cm.layers) == set(mods)
    for name, code in cm.layers.items():
        assert np.array_equal(code.weight_bits(), binary_weight_bits(mods[name]))
    x = torch.randn(2, 3, 32, 32)
    assert mstc.engine.run(cm, x.numpy()).shape == (2, 10)
    assert verify(cm, model, x).ok


def test_save_is_atomic_and_leaves_no_temp_files(model, tmp_path, monkeypatch):
    cm = mstc.compress(model)
    path = cm.save(tmp_path / "a.mstc")
    before = path.read_bytes()

    import mstc.format.file as ff

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", boom)
    with pytest.raises(OSError):
        ff.save_compressed(cm, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.mstc"]


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (5, 100, len(data) // 2, len(data) - 3):
        p = tmp_path / f"t{cut}.mstc"
        p.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            mstc.load(p)


def test_flipped_byte_fails_checksum(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-10] ^= 0xFF
    p = tmp_path / "flip.mstc"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum"):
        mstc.load(p)


def test_wrong_version_and_format(saved, tmp_path):
    header, tensors = _raw(saved)
    header["version"] = 99
    with pytest.raises(FormatError, match="version 99"):
        mstc.load(_write(tmp_path / "v.mstc", header, tensors))
    header["version"] = 1
    header["format"] = "something-else"
    with pytest.raises(FormatError, match="not an mstc"):
        mstc.load(_write(tmp_path / "f.mstc", header, tensors))


def _first_layer_key(tensors, field):
    return sorted(k for k in tensors if k.startswith("L.") and k.endswith("." + field))[0]


def test_out_of_range_difference_index(saved, tmp_path):
    header, tensors = _raw(saved)
    key = _first_layer_key(tensors, "diff_idx")
    bad = tensors[key].copy()
    bad[0] = 60000
    tensors[key] = bad
    with pytest.raises(FormatError, match="out of range"):
        mstc.load(_write(tmp_path / "i.mstc", header, tensors))


def test_out_of_range_parent(saved, tmp_path):
    header, tensors = _raw(saved)
    key = _first_layer_key(tensors, "parent")
    bad = tensors[key].copy()
    bad[-1] = 10_000
    tensors[key] = bad
    with pytest.raises(FormatError, match="parent index out of range"):
        mstc.load(_write(tmp_path / "p.mstc", header, tensors))


def test_parent_cycle(saved, tmp_path):
    header, tensors = _raw(saved)
    key = _first_layer_key(tensors, "parent")
    parent = tensors[key].copy()
    children = np.flatnonzero(parent >= 0)
    a, b = int(children[0]), int(children[1])
    parent[a], parent[b] = b, a  # a 2-cycle
    tensors[key] = parent
    with pytest.raises(FormatError, match="not a forest|root|CSR|differences"):
        mstc.load(_write(tmp_path / "c.mstc", header, tensors))


def test_wrong_dtype(saved, tmp_path):
    header, tensors = _raw(saved)
    key = _first_layer_key(tensors, "parent")
    tensors[key] = tensors[key].astype(np.float32)
    with pytest.raises(FormatError, match="dtype"):
        mstc.load(_write(tmp_path / "d.mstc", header, tensors))


def test_missing_tensor_and_nan_parameter(saved, tmp_path):
    header, tensors = _raw(saved)
    key = _first_layer_key(tensors, "root_bits")
    del tensors[key]
    with pytest.raises(FormatError, match="missing tensor"):
        mstc.load(_write(tmp_path / "m.mstc", header, tensors))
    header, tensors = _raw(saved)
    key = sorted(k for k in tensors if k.startswith("T.") and k.endswith("running_var"))[0]
    bad = tensors[key].copy()
    bad[0] = np.nan
    tensors[key] = bad
    with pytest.raises(FormatError, match="NaN"):
        mstc.load(_write(tmp_path / "n.mstc", header, tensors))


def test_malformed_header(saved, tmp_path):
    header, tensors = _raw(saved)
    save_file(tensors, str(tmp_path / "j.mstc"), metadata={"mstc": "{not json"})
    with pytest.raises(FormatError, match="JSON"):
        mstc.load(tmp_path / "j.mstc")
    save_file(tensors, str(tmp_path / "h.mstc"), metadata={"other": "x"})
    with pytest.raises(FormatError, match="no mstc header"):
        mstc.load(tmp_path / "h.mstc")
    del header["nodes"]
    with pytest.raises(FormatError, match="nodes"):
        mstc.load(_write(tmp_path / "k.mstc", header, tensors))
    header, tensors = _raw(saved)
    header["nodes"][3]["op"] = "os.system"
    with pytest.raises(FormatError, match="unknown op"):
        mstc.load(_write(tmp_path / "o.mstc", header, tensors))
    header, tensors = _raw(saved)
    header["nodes"][2]["inputs"] = ["later_node"]
    with pytest.raises(FormatError, match="earlier node"):
        mstc.load(_write(tmp_path / "e.mstc", header, tensors))


def test_unsorted_differences_rejected(saved, tmp_path):
    header, tensors = _raw(saved)
    ptr_key = _first_layer_key(tensors, "diff_ptr")
    idx_key = ptr_key.replace("diff_ptr", "diff_idx")
    ptr, idx = tensors[ptr_key], tensors[idx_key].copy()
    j = int(np.flatnonzero(np.diff(ptr) >= 2)[0])
    lo = ptr[j]
    idx[lo], idx[lo + 1] = idx[lo + 1], idx[lo]
    tensors[idx_key] = idx
    with pytest.raises(FormatError, match="increasing"):
        mstc.load(_write(tmp_path / "u.mstc", header, tensors))


def test_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        mstc.load(tmp_path / "missing.mstc")
    p = tmp_path / "garbage.mstc"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError):
        mstc.load(p)


def test_unsupported_module_is_reported():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU())
    with pytest.raises(mstc.UnsupportedModelError, match="GELU"):
        mstc.compress(net, input_shape=(3, 8, 8))
