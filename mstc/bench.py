"""Benchmark of the engines against the PyTorch float model (the library behind ``mstc bench``).

Each backend runs in its own worker process (``python -m mstc.bench worker CONFIG``): torch (the
model in eval mode, float32 convs on +-1 values, ``torch.set_num_threads(T)``), "packed" and "mst"
(``mstc.engine.Runtime`` with T numba threads). The parent drives the workers in turn, round after
round (interleaved, so that drifts of the shared machine hit every backend alike), and reports
medians over all rounds:

- whole network: wall time of one forward pass on a batch;
- per binary layer: wall time of the binary layer alone (torch: forward hooks around the module;
  engines: around ``backend.conv2d`` / ``backend.linear`` / ``backend.conv2d_fused``), measured in
  separate passes so that the hooks do not inflate the whole-network time. In those passes the
  engines' XNOR kernels do not apply Bi-Real epilogues as they count
  (``Runtime.epilogues_in_xnor = False``): a layer's time is its integer sums, as torch's is its
  conv; the whole-network passes run with it.

The result also carries ``min_ms`` / ``min_ratios``: the fastest whole pass of each backend, an
estimate less sensitive than the median to other load on a shared machine.

``bop_ratio`` is the theoretical reduction of :func:`mstc.costs.network_costs` (dense BOPs / MST
BOPs over the binary 3x3 convs) of the same compressed model (``complement=True``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENGINE_BACKENDS = ("packed", "mst")
#: "wall": time.perf_counter; "cpu": time.process_time (CPU time of the worker process: robust
#: to other load on a shared machine, meaningful as latency for one thread only)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter
ALL_BACKENDS = ("torch", *ENGINE_BACKENDS)


# ------------------------------------------------------------------------------ clustered weights


def cluster_weights(
    model: torch.nn.Module,
    *,
    centres: int = 8,
    flip: float = 0.03,
    invert: float = 0.0,
    seed: int = 0,
) -> torch.nn.Module:
    """Give every BinaryConv2d "regularized" weights, in place: ``centres`` random centre filters;
    each output channel is a copy of one centre with a fraction ``flip`` of its taps negated (and,
    with probability ``invert``, the whole filter negated: a complement edge). Latent magnitudes
    stay Gaussian, so the per-channel scale mean|W_j| stays realistic."""
    from mstc.nn import BinaryConv2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, BinaryConv2d):
                continue
            w = m.weight
            cout = w.shape[0]
            n = w[0].numel()
            k = max(1, min(centres, cout))
            c = torch.randn(k, n, generator=g)
            rows = c[torch.randint(0, k, (cout,), generator=g)]
            sign = torch.where(torch.rand(cout, n, generator=g) < flip, -1.0, 1.0)
            sign = sign * torch.where(torch.rand(cout, 1, generator=g) < invert, -1.0, 1.0)
            w.copy_((rows * sign).reshape(w.shape) * 0.05)
    return model


def load_bench_model(
    spec: str, *, width: float = 1.0, seed: int = 0, cluster: dict | None = None
) -> torch.nn.Module:
    """A model name (random weights, ``width``), a checkpoint path or an ``.mstc`` file (its
    PyTorch model rebuilt by :func:`mstc.format.to_torch`); clustered if ``cluster``."""
    from mstc.checkpoint import load_model_or_checkpoint
    from mstc.models import list_models

    if spec not in list_models() and Path(spec).suffix == ".mstc":
        from mstc.format import load, to_torch

        model = to_torch(load(spec))
    else:
        kw = {"width": width, "seed": seed} if spec in list_models() else {}
        model, _ = load_model_or_checkpoint(spec, **kw)
    if cluster is not None:
        cluster_weights(model, **cluster)
    return model.eval()


def model_input_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W): that of the .mstc file for a model rebuilt by to_torch, else from its config."""
    from mstc.format import default_input_shape

    shape = getattr(model, "mstc_input_shape", None)
    if shape is not None:
        return tuple(int(v) for v in shape)  # type: ignore[return-value]
    return default_input_shape(getattr(model, "mstc_config", {}) or {})


# ------------------------------------------------------------------------------ worker


class _Timer:
    """Accumulates per-layer wall times of one pass."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.enabled = False

    def add(self, name: str, dt: float) -> None:
        if self.enabled:
            self.times[name] = self.times.get(name, 0.0) + dt


def _torch_runner(model, x, timer: _Timer):
    from mstc.nn import is_binary_layer

    starts: dict[str, float] = {}
    for name, m in model.named_modules():
        if is_binary_layer(m):

            def pre(mod, inp, name=name):
                starts[name] = _clock()

            def post(mod, inp, out, name=name):
                timer.add(name, _clock() - starts[name])

            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
    xt = torch.from_numpy(x)

    def f():
        with torch.inference_mode():
            return model(xt)

    return f


def _engine_runner(cm, backend: str, threads: int, x, timer: _Timer):
    from mstc.engine import Runtime

    rt = Runtime(cm, backend, threads=threads)
    be = rt.backend
    for method in ("conv2d", "linear", "conv2d_fused"):
        orig = getattr(be, method, None)
        if orig is None:
            continue

        def wrapped(layer, xin, *args, orig=orig, **kw):
            t = _clock()
            s = orig(layer, xin, *args, **kw)
            timer.add(layer.name, _clock() - t)
            return s

        setattr(be, method, wrapped)

    def per_layer():  # the binary layers alone: their sums, the epilogues run apart
        rt.epilogues_in_xnor = False
        try:
            return rt.run(x)
        finally:
            rt.epilogues_in_xnor = True

    return rt, lambda: rt.run(x), per_layer


def fused_layers(rt, active) -> set[str]:
    """Layer names that produce or consume bit planes under the fused links ``active``."""
    nodes = {n.name: n for n in rt.compressed.nodes}
    out = set()
    for k in active:
        out.add(nodes[k].attrs["layer"])
        out.add(rt.fusions[k].consumer.name)
    return out


def describe_plan(rt, active) -> str:
    """ "fused" (every link), "unfused" (none) or the fused layers' names."""
    if not rt.fusions or not active:
        return "unfused"
    if set(active) == set(rt.fusions):
        return "fused"
    nodes = {n.name: n for n in rt.compressed.nodes}
    return "fused " + ", ".join(sorted(nodes[k].attrs["layer"] for k in active))


def _chosen_kernel(chosen: dict, name: str, fused: bool = True) -> str:
    """The kernel a backend settled on for a layer: the bit-plane kernel ("sliced", "walk16", or
    the integer one behind "int") where the layer was fused or fed planes (and the runtime runs
    the fused plan), else "delta" / "xnor"."""
    plane = next((v for k, v in chosen.items() if k[0] == name and len(k) == 3), None)
    plain = next((v for k, v in chosen.items() if k[0] == name and len(k) == 2), "xnor")
    if fused and plane in ("sliced", "walk16"):
        return plane
    return plain


def worker_main(config: dict[str, Any]) -> None:
    """A worker: set up one backend, then answer "run" lines on stdin with JSON timings."""
    global _clock
    _clock = CLOCKS[config.get("clock", "wall")]
    backend = config["backend"]
    threads = int(config["threads"])
    torch.set_num_threads(threads if backend == "torch" else int(config.get("torch_threads", 1)))
    model = load_bench_model(
        config["spec"], width=config["width"], seed=config["seed"], cluster=config.get("cluster")
    )
    shape = (int(config["batch"]), *model_input_shape(model))
    x = np.random.default_rng(config["seed"]).standard_normal(shape).astype(np.float32)
    timer = _Timer()
    info: dict[str, Any] = {"backend": backend}
    if backend == "torch":
        f = f_layers = _torch_runner(model, x, timer)
    else:
        import mstc
        from mstc.costs import network_costs

        cm = mstc.compress(model, complement=True, input_shape=shape[1:])
        costs = network_costs(cm)
        info["bop_ratio"] = costs.bop_reduction
        info["layers"] = {
            c.name: {
                "shape": f"{c.cin}->{c.cout} {c.kernel} P={c.positions}",
                "bop_ratio": c.xnor_ratio,
            }
            for c in costs.layers
        }
        rt, f, f_layers = _engine_runner(cm, backend, threads, x, timer)
    for _ in range(2):  # warm-up: numba compile/load, caches (and the mst autotuning)
        f()
    if backend != "torch":
        chosen = getattr(rt.backend, "kernels", {})
        active = rt.plans.get(tuple(x.shape), frozenset(rt.fusions))
        info["plan"] = describe_plan(rt, active)
        in_planes = fused_layers(rt, active)
        for name in info["layers"]:
            kernel = _chosen_kernel(chosen, name, name in in_planes)
            info["layers"][name][f"{backend}_kernel"] = kernel
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        min_time = float(cmd.get("min_time", 0.2))
        total: list[float] = []
        t_end = _clock() + min_time
        while not total or (_clock() < t_end and len(total) < 200):
            t = _clock()
            f()
            total.append(_clock() - t)
        layers: dict[str, list[float]] = {}
        timer.enabled = True
        for _ in range(max(1, len(total) // 2)):
            timer.times = {}
            f_layers()
            for k, v in timer.times.items():
                layers.setdefault(k, []).append(v)
        timer.enabled = False
        print(json.dumps({"total": total, "layers": layers}), flush=True)


# ------------------------------------------------------------------------------ driver


def _start_worker(config: dict[str, Any]) -> subprocess.Popen:
    env = dict(os.environ)
    if config["backend"] != "torch" or int(config["threads"]) > 1:
        # OpenMP workers that spin-wait stall everything else on a loaded machine: numba's
        # after each parallel region stall torch's float ops in the same process
        # (engine-notes.md), and torch's own 2-thread barriers made a vgg_small pass 6x slower
        # than 1 thread (532 vs 80 ms; 87 ms with PASSIVE). Single-thread torch keeps defaults.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.Popen(
        [sys.executable, "-m", "mstc.bench", "worker", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read(proc: subprocess.Popen) -> dict[str, Any]:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark worker exited with code {proc.wait()}")
    return json.loads(line)


def run_bench(
    spec: str,
    *,
    batch: int = 1,
    threads: int = 1,
    width: float = 1.0,
    seed: int = 0,
    reps: int = 5,
    min_time: float = 0.3,
    cluster: dict | None = None,
    backends: tuple[str, ...] = ALL_BACKENDS,
    clock: str = "wall",
) -> dict[str, Any]:
    """Benchmark ``backends`` on one model; returns the result object of ``mstc bench --json``."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}")
    base = dict(
        spec=spec,
        batch=batch,
        threads=threads,
        width=width,
        seed=seed,
        cluster=cluster,
        clock=clock,
    )
    procs: dict[str, subprocess.Popen] = {}
    info: dict[str, dict] = {}
    try:
        for b in backends:  # set up one at a time: compression and compilation are CPU-heavy
            procs[b] = _start_worker({**base, "backend": b})
            info[b] = _read(procs[b])
        totals: dict[str, list[float]] = {b: [] for b in backends}
        layers: dict[str, dict[str, list[float]]] = {b: {} for b in backends}
        for _ in range(reps):
            for b in backends:
                procs[b].stdin.write(json.dumps({"min_time": min_time}) + "\n")
                procs[b].stdin.flush()
                r = _read(procs[b])
                totals[b] += r["total"]
                for k, v in r["layers"].items():
                    layers[b].setdefault(k, []).extend(v)
        for b in backends:
            procs[b].stdin.write(json.dumps({"quit": True}) + "\n")
            procs[b].stdin.flush()
            procs[b].wait(timeout=60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    meta = next((info[b] for b in backends if "layers" in info[b]), {})
    names = list(meta.get("layers", {})) or sorted(layers[backends[0]])
    med = {b: 1e3 * statistics.median(totals[b]) for b in backends}
    best = {b: 1e3 * min(totals[b]) for b in backends}
    layer_ms = {b: {k: 1e3 * statistics.median(v) for k, v in layers[b].items()} for b in backends}
    binary_ms = {b: sum(layer_ms[b].get(k, 0.0) for k in names) for b in backends}
    result: dict[str, Any] = {
        "model": spec,
        "width": width,
        "cluster": cluster,
        "batch": batch,
        "threads": threads,
        "clock": clock,
        "bop_ratio": meta.get("bop_ratio"),
        "median_ms": med,
        "min_ms": best,  # the fastest pass: less sensitive to a loaded machine than the median
        "min_ratios": _ratios(best),
        "binary_ms": binary_ms,
        "other_ms": {b: med[b] - binary_ms[b] for b in backends},
        "samples": {b: len(totals[b]) for b in backends},
        "ratios": _ratios(med),
        "binary_ratios": _ratios(binary_ms),
        "mst_plan": info.get("mst", {}).get("plan"),
        "layers": [
            {
                "name": k,
                **meta.get("layers", {}).get(k, {}),
                **{
                    key: v
                    for b in backends
                    for key, v in info[b].get("layers", {}).get(k, {}).items()
                    if key.endswith("_kernel")
                },
                "ms": {b: layer_ms[b].get(k) for b in backends},
            }
            for k in names
        ],
    }
    return result


def _ratios(ms: dict[str, float]) -> dict[str, float]:
    out = {}
    for a, b in (("torch", "packed"), ("torch", "mst"), ("packed", "mst")):
        if a in ms and b in ms and ms[b] > 0:
            out[f"{a}/{b}"] = ms[a] / ms[b]
    return out


def format_report(r: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_bench` result."""
    bs = list(r["median_ms"])
    lines = [
        f"model {r['model']}  batch {r['batch']}  threads {r['threads']}  "
        f"clock {r.get('clock', 'wall')}  theoretical BOP ratio {r['bop_ratio']:.2f}x"
        if r.get("bop_ratio")
        else f"model {r['model']}  batch {r['batch']}  threads {r['threads']}",
        "",
        f"{'layer':<28} {'shape':<28} {'BOPx':>6} {'mst kernel':>10} "
        + " ".join(f"{b + ' ms':>10}" for b in bs)
        + "  t/pk  pk/mst",
    ]
    for layer in r["layers"]:
        ms = layer["ms"]
        cells = " ".join(f"{ms[b]:10.3f}" if ms.get(b) is not None else f"{'-':>10}" for b in bs)
        rat = ""
        if ms.get("torch") and ms.get("packed"):
            rat += f" {ms['torch'] / ms['packed']:5.1f}"
        if ms.get("packed") and ms.get("mst"):
            rat += f" {ms['packed'] / ms['mst']:6.2f}"
        lines.append(
            f"{layer['name']:<28} {layer.get('shape', ''):<28} "
            f"{layer.get('bop_ratio', float('nan')):6.2f} {layer.get('mst_kernel', '-'):>10} "
            f"{cells} {rat}"
        )
    for label, key in (
        ("binary layers", "binary_ms"),
        ("rest (float ops, glue)", "other_ms"),
        ("whole network", "median_ms"),
    ):
        lines.append(f"{label:<28} {'':<28} {'':>6} " + " ".join(f"{r[key][b]:10.3f}" for b in bs))
    lines.append("")
    if r.get("mst_plan"):
        lines.append(f"mst plan at this input shape: {r['mst_plan']}")
    for label, key in (
        ("whole network", "ratios"),
        ("binary layers", "binary_ratios"),
        ("whole network, fastest passes", "min_ratios"),
    ):
        if key in r:
            ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r[key].items())
            lines.append(f"speed-up, {label}: {ratios}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ memory


def memory_worker(config: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: peak working memory of one forward pass of a saved .mstc model.

    The process loads the file, builds the runtime and loads every kernel on tiny inputs first;
    then it trims the heap and resets the peak-RSS mark (Linux ``/proc/self/clear_refs``), so
    ``peak_rss_growth_bytes`` is the peak RSS over one pass at the given batch minus the RSS
    before it (activations of the runtime, the engine's buffers; not the model, the compiled code
    or the libraries), and
    ``tracemalloc_peak_bytes`` the peak of the numpy arrays of that pass (torch's float tensors
    are not traced).
    """
    import tracemalloc

    import mstc
    from mstc.engine import Runtime

    torch.set_num_threads(1)
    cm = mstc.load(config["path"])
    rt = Runtime(cm, config["backend"], threads=1)
    for layer in cm.layers.values():  # load the kernels on tiny inputs
        if layer.kind == "conv2d":
            kh, kw = layer.kernel_size
            rt.backend.conv2d(layer, np.zeros((1, layer.cin, kh + 2, kw + 2), np.float32))
        else:
            rt.backend.linear(layer, np.zeros((1, layer.n), np.float32))
    x = np.random.default_rng(0).standard_normal((config["batch"], *cm.input_shape))
    x = x.astype(np.float32)
    _reset_peak_rss()
    rss0 = _proc_status("VmRSS")
    tracemalloc.start()
    rt.run(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "tracemalloc_peak_bytes": peak,
        "rss_before_bytes": rss0,
        "peak_rss_growth_bytes": _proc_status("VmHWM") - rss0,
    }


def _proc_status(key: str) -> int:
    """A memory line of /proc/self/status in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> None:
    """Return freed heap to the OS and reset the peak-RSS mark (VmHWM) of this process."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_report(
    spec: str,
    *,
    width: float = 1.0,
    seed: int = 0,
    batch: int = 1,
    cluster: dict | None = None,
    backends: tuple[str, ...] = ENGINE_BACKENDS,
) -> dict[str, Any]:
    """Sizes of the compressed model and, per backend in a fresh subprocess (ru_maxrss is per
    process), the peak working memory of one pass (:func:`memory_worker`)."""
    import mstc
    from mstc.nn import is_binary_layer

    model = load_bench_model(spec, width=width, seed=seed, cluster=cluster)
    float_bytes = sum(m.weight.numel() * 4 for m in model.modules() if is_binary_layer(m))
    cm = mstc.compress(model, complement=True, input_shape=model_input_shape(model))
    layers = list(cm.layers.values())
    stored = sum(
        v.nbytes for c in layers for v in (c.parent, c.negate, c.root_bits, c.diff_ptr, c.diff_idx)
    )
    result: dict[str, Any] = {
        "model": spec,
        "cluster": cluster,
        "batch": batch,
        "binary_float32_bytes": float_bytes,
        "dense_packed_bytes": sum(c.cout * c.n for c in layers) // 8,
        "mst_coded_bytes_in_file": stored,
        "mst_weight_bits_bytes": sum(c.xnors for c in layers) // 8,
        "mst_index_bits_bytes": sum(c.index_bits for c in layers) // 8,
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.mstc"
        cm.save(path)
        result["mstc_file_bytes"] = path.stat().st_size
        for b in backends:
            config = {"path": str(path), "batch": batch, "backend": b}
            proc = subprocess.run(
                [sys.executable, "-m", "mstc.bench", "memory", json.dumps(config)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"memory worker failed:\n{proc.stderr[-2000:]}")
            result[b] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":  # worker entry points
    if sys.argv[1] == "worker":
        worker_main(json.loads(sys.argv[2]))
    elif sys.argv[1] == "memory":
        print(json.dumps(memory_worker(json.loads(sys.argv[2]))))
