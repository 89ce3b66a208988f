"""``dyninfer bench``: dyninfer against dense CPU runtimes, one process, side by side.

    run_bench("resnet56", batch_sizes=(1, 8), threads=(1, 2), runs=200, out="bench.json")
    dyninfer bench --checkpoint dyninfer/assets/resnet56_digits_dynamic.safetensors --threads 1 2

For every (threads, batch) setting: torch.set_num_threads(t), then one runner per peer

    pytorch         PyTorch eager, dense model
    torchscript     torch.jit.freeze(torch.jit.script(dense)) (torch.jit.trace if scripting fails)
    onnxruntime     ONNX Runtime, intra_op = t, inter_op = 1, ORT_ENABLE_ALL
    openvino        OpenVINO, INFERENCE_NUM_THREADS = t, LATENCY hint, f32 precision hint
    torch-compile   torch.compile(dense), inductor with freezing (weights folded as constants),
                    compiled per thread count and batch (the first call of each setting, untimed)
    dyninfer-dense  dyninfer.compile(gated, gates="open"): the engine's kernels, every channel
    dyninfer-gated  dyninfer.compile(gated): per-sample gate decisions (force_keep if given)
  reduced precision (beside the FP32 rows; speedups are also given against openvino-default):
    openvino-default     OpenVINO at its own default precision (bf16 on CPUs with AMX or AVX512_BF16)
    dyninfer-bf16-dense  dyninfer dense mode with precision="bf16" (strict: unavailable without AVX512_BF16)
    dyninfer-bf16        dyninfer gated with precision="bf16" (its MACs: the FP32 gated paths' count)

A peer that is not installed or fails to build or to run gets a row with status
"unavailable: <reason>"; the run goes on. Runners take turns in blocks (one untimed call, then
``block`` timed ones) so machine noise hits all alike; medians and p90 over all timed calls.

MACs per sample follow dyninfer.flops.count_macs (fvcore conventions, eval mode): dense peers
report the dense count, dyninfer-gated the mean effective count over exactly the timed inputs
(``bench_inputs``), gates' own cost included. GFLOP/s = 2 · MACs · batch / median latency; the
single-core FMA peak (dyninfer._ext.fma_peak_gflops) is probed in each setting of the same run.

Density sweep (gated models): the engine compiled with force_keep F for each F in ``sweep``
(default 1.0, 0.75, 0.5, 0.25) is timed in the same rotation as the peers; its points go to
``density_sweep`` (not to ``rows``), with effective MACs counted by PyTorch under the same
force_keep. ``profile``: engine per-op seconds (CompiledModel.profile_ops) in dense mode and
gated, at the first (threads, batch) setting. dyninfer.bench_plots draws the figures.
"""
from __future__ import annotations

import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["run_bench", "bench_inputs", "PEERS", "DENSE_PEERS", "REDUCED_PEERS", "SPEEDUP_BASES", "ROW_FIELDS", "SWEEP_FIELDS", "DEFAULT_SWEEP",
           "format_table"]

REDUCED_PEERS = ("openvino-default", "dyninfer-bf16-dense", "dyninfer-bf16")
PEERS = ("pytorch", "torchscript", "onnxruntime", "openvino", "torch-compile", "dyninfer-dense",
         "dyninfer-gated") + REDUCED_PEERS
DENSE_PEERS = ("pytorch", "torchscript", "onnxruntime", "openvino", "torch-compile")  # baselines for the speedups
GATED_PEERS = ("dyninfer-gated", "dyninfer-bf16")  # rows counted at the gated paths' effective MACs
SPEEDUP_BASES = DENSE_PEERS + ("openvino-default",)  # rows' speedup_vs keys (where the peer ran)
# Every row carries every field; numbers are None in an unavailable row.
ROW_FIELDS = ("threads", "batch", "peer", "status", "version", "median_ms", "p90_ms", "throughput_per_s",
              "macs_per_sample", "macs_kind", "gflops", "fraction_of_peak", "fraction_of_peak_per_core",
              "max_rel_diff", "speedup_vs", "mac_reduction", "speedup_over_mac_reduction")
SWEEP_FIELDS = ("threads", "batch", "force_keep", "median_ms", "p90_ms", "throughput_per_s", "macs_per_sample",
                "gflops", "fraction_of_peak")
DEFAULT_SWEEP = (1.0, 0.75, 0.5, 0.25)
MACS_CONVENTION = ("MACs per sample, dyninfer.flops.count_macs (fvcore conventions, eval mode: 1 per conv/linear "
                   "multiply-add, BN 2/element, adaptive pool 1/element; gated: effective from the gate decisions "
                   "on the timed inputs, gates' own cost included)")

Runner = Callable[[torch.Tensor], Any]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: the peer row says why
        return None


def median_p90(ts: list[float]) -> tuple[float, float]:
    s = sorted(ts)
    return statistics.median(s), s[min(len(s) - 1, int(0.9 * len(s)))]


# ---------------------------------------------------------------------------------------------
# models and inputs


def load_models(model: str | os.PathLike, force_keep: float | None) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(dense eval model, gated eval model or None, description) for a registered name or a checkpoint."""
    from . import checkpoint
    from .models import create_model, list_models
    from .nn import gates

    p = Path(model)
    if str(model) in list_models() and not p.exists():
        name = str(model)
        with torch.random.fork_rng():  # reproducible random init, caller's RNG untouched
            torch.manual_seed(0)
            gated = create_model(name).eval()
        weights = ("untrained: random init of create_model after torch.manual_seed(0); its gates are open at init, so dyninfer-gated "
                   "computes the dense network unless force_keep is set")
        if force_keep is not None:
            weights += ("; with force_keep the untrained gate logits all tie, so the engine and PyTorch (whose "
                        "selection the MAC count uses) may keep different channels: see max_rel_diff")
        num_classes, metrics = 10, {}
    elif p.is_file():
        gated = checkpoint.load_model(p)
        name = gated.dyninfer_name
        meta = checkpoint.read_metadata(p)
        num_classes = meta["config"]["model"]["num_classes"]
        metrics = meta.get("metrics", {})
        weights = f"checkpoint {p.name} (sha256 {meta['sha256'][:12]})"
    else:
        raise ValueError(f"run_bench: {str(model)!r} is neither a registered model ({', '.join(list_models())}) "
                         "nor a checkpoint file")
    if not gates(gated):  # a dense checkpoint: dense peers and dyninfer dense mode only
        return gated, None, {"name": name, "weights": weights, "metrics": metrics}
    dense = create_model(name, num_classes=num_classes, gated=False).eval()
    dense.load_state_dict({k: v for k, v in gated.state_dict().items() if "_gate" not in k})
    for g in gates(gated).values():
        g.force_keep = force_keep
    return dense, gated, {"name": name, "weights": weights, "metrics": metrics}


def bench_inputs(name: str, batch: int, n: int = 8, images: int = 64) -> list[torch.Tensor]:
    """The ``n`` inputs (batch, C, H, W) timed for model ``name``: consecutive digits test images
    (cycling over the first ``images``) for CIFAR-shaped models, else seeded standard normal."""
    from .models import model_info

    c, h, w = model_info(name).input_size
    if (c, h, w) == (3, 32, 32):
        from .data import load_dataset
        test = load_dataset("digits", split="test")
        pool = torch.stack([test[i][0] for i in range(min(images, len(test)))])  # (images, 3, 32, 32)
        idx = torch.arange(n * batch) % len(pool)
        return [t.contiguous() for t in pool[idx].split(batch)]
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, c, h, w, generator=gen) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# runners: each builder returns (fn, version) or raises; the caller turns failures into rows


def _torchscript(dense: nn.Module, x: torch.Tensor, threads: int):
    with warnings.catch_warnings():  # torch 2.13 marks jit deprecated; it is still the peer users run
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            mod = torch.jit.script(dense)
            how = "script"
        except Exception:
            mod = torch.jit.trace(dense, x)
            how = "trace"
        mod = torch.jit.freeze(mod.eval())
    return mod, f"torch {torch.__version__} (jit.{how} + freeze)"


def _onnx_bytes(dense: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(dense, x, buf, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return buf.getvalue()


def onnxruntime_runner(dense: nn.Module, x: torch.Tensor, threads: int, cache: dict | None = None):
    """ONNX Runtime session (intra-op = threads, inter-op = 1, all graph optimisations) -> (run,
    version). ``cache`` keeps the ONNX export (dynamic batch) across settings."""
    import onnxruntime as ort

    cache = {} if cache is None else cache
    if "onnx" not in cache:  # one export (dynamic batch) serves every setting
        cache["onnx"] = _onnx_bytes(dense, x)

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(cache["onnx"], so, providers=["CPUExecutionProvider"])
    return (lambda t: torch.from_numpy(sess.run(None, {"x": t.numpy()})[0])), f"onnxruntime {ort.__version__}"


def openvino_runner(dense: nn.Module, x: torch.Tensor, threads: int, precision: str = "f32"):
    """OpenVINO (INFERENCE_NUM_THREADS = threads, latency hint) -> (run, version). precision "f32"
    matches every other row; "default" leaves OpenVINO's own choice, which is bf16 on CPUs with
    AMX / AVX512-BF16."""
    import openvino as ov

    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision == "f32":
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(ov.convert_model(dense, example_input=x), "CPU", cfg)
    req = compiled.create_infer_request()
    used = compiled.get_property("INFERENCE_PRECISION_HINT")

    def run(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(next(iter(req.infer({0: t.numpy()}).values())).copy())
    return run, f"openvino {ov.__version__}, precision {used}"


def torch_compile_runner(dense: nn.Module, x: torch.Tensor, threads: int, cache: dict | None = None):
    """torch.compile (inductor, freezing: weights folded into the graph as constants) -> (run,
    version). A new thread count starts from a reset compiler cache (inductor's C++ kernels are
    generated for the thread count of the moment, and dynamo's guards would otherwise hand back the
    previous setting's code); a new batch size compiles here, before timing. Raises if inductor
    cannot compile here (no C++ compiler, unsupported op)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    cache = {} if cache is None else cache
    key = ("torch-compile", threads)
    if key not in cache:
        torch._dynamo.reset()
        cache[key] = torch.compile(dense, backend="inductor", dynamic=False)
    compiled = cache[key]
    with inductor_config.patch(freezing=True), torch.no_grad():
        compiled(x)  # compiles for this batch size now; the timed calls (same shape, no_grad) reuse it
    return compiled, f"torch {torch.__version__} (compile: inductor, freezing)"


def _build(peer: str, dense: nn.Module, gated: nn.Module | None, x: torch.Tensor, threads: int,
           force_keep: float | None, cache: dict) -> tuple[Runner, str]:
    from . import compile as engine_compile

    if peer == "pytorch":
        return dense, f"torch {torch.__version__} (eager)"
    if peer == "torchscript":
        if "torchscript" not in cache:  # freezing does not depend on threads or batch
            cache["torchscript"] = _torchscript(dense, x, threads)
        return cache["torchscript"]
    if peer == "onnxruntime":
        return onnxruntime_runner(dense, x, threads, cache)
    if peer == "openvino":
        return openvino_runner(dense, x, threads)
    if peer == "openvino-default":
        return openvino_runner(dense, x, threads, precision="default")
    if peer == "torch-compile":
        return torch_compile_runner(dense, x, threads, cache)
    if peer == "dyninfer-dense":
        if peer not in cache:
            cache[peer] = engine_compile(gated if gated is not None else dense, gates="open")
        return cache[peer], "dyninfer (gates open: dense mode)"
    if peer == "dyninfer-gated":
        if gated is None:
            raise ValueError("the model has no gates (a dense checkpoint)")
        if peer not in cache:
            cache[peer] = engine_compile(gated, force_keep=force_keep)
        keep = f", force_keep {force_keep}" if force_keep is not None else ""
        return cache[peer], f"dyninfer (learned gates{keep})"
    if peer == "dyninfer-bf16-dense":
        if peer not in cache:
            cache[peer] = engine_compile(gated if gated is not None else dense, gates="open", precision="bf16",
                                         strict_precision=True)
        return cache[peer], "dyninfer (gates open: dense mode, bf16)"
    if peer == "dyninfer-bf16":
        if gated is None:
            raise ValueError("the model has no gates (a dense checkpoint)")
        if peer not in cache:
            cache[peer] = engine_compile(gated, force_keep=force_keep, precision="bf16", strict_precision=True)
        keep = f", force_keep {force_keep}" if force_keep is not None else ""
        return cache[peer], f"dyninfer (learned gates{keep}, bf16)"
    raise ValueError(f"run_bench: unknown peer {peer!r}; known peers: {', '.join(PEERS)}")


# ---------------------------------------------------------------------------------------------
# timing


def side_by_side(runners: dict[str, Runner], inputs: list[torch.Tensor], runs: int, block: int = 10,
                 warmup: int = 10, tick: Callable[[], None] | None = None) -> dict[str, tuple[float, float]]:
    """Runners take turns: each round gives every runner one untimed call (re-warms the caches the
    others evicted) then ``block`` timed calls; ``runs`` timed calls per runner; inputs cycle."""
    for fn in runners.values():
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
    times: dict[str, list[float]] = {name: [] for name in runners}
    k = 0
    while runners and len(next(iter(times.values()))) < runs:
        n = min(block, runs - len(next(iter(times.values()))))
        for name, fn in runners.items():
            fn(inputs[k % len(inputs)])
            for i in range(n):
                x = inputs[(k + i) % len(inputs)]
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
        k += n
        if tick is not None:
            tick()
    return {name: median_p90(ts) for name, ts in times.items()}


def _rel_diff(out: Any, ref: torch.Tensor) -> float:
    out = torch.as_tensor(out)
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------------------------


def run_bench(model: str | os.PathLike, batch_sizes: Sequence[int] = (1, 8), threads: Sequence[int] | None = None,
              runs: int = 200, peers: Sequence[str] = PEERS, out: str | os.PathLike | None = None,
              progress: bool = True, force_keep: float | None = None, block: int = 10, warmup: int = 10,
              command: str | None = None, sweep: Sequence[float] | None = DEFAULT_SWEEP,
              profile_runs: int = 50) -> dict[str, Any]:
    """Benchmark ``model`` (a registered name: random init; or a checkpoint path) with every peer
    at every (threads, batch) setting in this process. Returns the result dict (also written
    atomically to ``out`` as JSON when given) and prints one table per setting.

    threads: default (1, os.cpu_count()). runs: timed calls per runner and setting.
    force_keep: every gated layer keeps round(force_keep · N) channels (compile and MAC count).
    sweep: force_keep values of the engine's density sweep (None or () for none; needs gates).
    profile_runs: calls averaged by profile_ops for the per-op breakdown (0: no profile).
    """
    from tqdm import tqdm

    from . import compile as engine_compile
    from ._ext import fma_peak_gflops, isa
    from .flops import count_macs

    threads = tuple(dict.fromkeys(threads if threads is not None else (1, os.cpu_count() or 1)))
    batch_sizes = tuple(dict.fromkeys(batch_sizes))
    for what, vals in (("threads", threads), ("batch_sizes", batch_sizes)):
        if not vals or any(int(v) != v or v < 1 for v in vals):
            raise ValueError(f"run_bench: {what} must be positive integers, got {vals!r}")
    if runs < 1 or block < 1 or warmup < 0:
        raise ValueError(f"run_bench: need runs >= 1, block >= 1, warmup >= 0; got {runs}, {block}, {warmup}")
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"run_bench: unknown peers {unknown}; known peers: {', '.join(PEERS)}")
    if force_keep is not None and not 0.0 <= force_keep <= 1.0:
        raise ValueError(f"run_bench: force_keep must lie in [0, 1], got {force_keep}")
    sweep = tuple(dict.fromkeys(float(f) for f in (sweep or ())))
    bad = [f for f in sweep if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"run_bench: sweep values must lie in (0, 1], got {bad}")
    if profile_runs < 0:
        raise ValueError(f"run_bench: profile_runs must be >= 0, got {profile_runs}")

    dense, gated, desc = load_models(model, force_keep)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work already ran) in this process
        pass
    old_threads = torch.get_num_threads()
    inputs = {b: bench_inputs(desc["name"], b) for b in batch_sizes}

    # MACs per sample on exactly the timed inputs (gate decisions do not depend on threads)
    with torch.no_grad():
        macs_dense = count_macs(dense, inputs[batch_sizes[0]][0]).dense
        macs_gated = {b: count_macs(gated, torch.cat(inputs[b])).effective.double().mean().item()
                      for b in batch_sizes} if gated is not None else {}
        if gated is None:
            sweep = ()
        macs_sweep = {(f, b): forced_macs(gated, f, torch.cat(inputs[b])) for f in sweep for b in batch_sizes}

    rounds = -(-runs // block)
    bar = tqdm(total=len(threads) * len(batch_sizes) * rounds, desc="bench", unit="round", disable=not progress)
    rows: list[dict[str, Any]] = []
    settings: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    cache: dict[str, Any] = {}
    try:
        for t in threads:
            torch.set_num_threads(t)
            for b in batch_sizes:
                xs = inputs[b]
                bar.set_postfix_str(f"threads {t}, batch {b}")
                runners: dict[str, Runner] = {}
                status: dict[str, str] = {}
                version: dict[str, str | None] = {}
                diff: dict[str, float | None] = {}
                with torch.no_grad():
                    ref_dense = dense(xs[0])
                    ref_gated = gated(xs[0]) if gated is not None else ref_dense
                    for peer in peers:
                        try:
                            fn, version[peer] = _build(peer, dense, gated, xs[0], t, force_keep, cache)
                            diff[peer] = _rel_diff(fn(xs[0]), ref_gated if peer in GATED_PEERS else ref_dense)
                        except Exception as exc:  # not installed, cannot export/convert, fails to run
                            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                            status[peer], version[peer], diff[peer] = f"unavailable: {reason}", None, None
                            continue
                        runners[peer] = fn
                        status[peer] = "ok"
                    for f in sweep:  # sweep engines share the rotation under their own keys
                        key = f"sweep:{f}"
                        if key not in cache:
                            cache[key] = engine_compile(gated, force_keep=f)
                        runners[key] = cache[key]
                    peak = fma_peak_gflops(50_000_000)
                    timing = side_by_side(runners, xs, runs, block, warmup, lambda: bar.update(1))
                    if profile is None and profile_runs and "dyninfer-dense" in cache:
                        profile = {"threads": t, "batch": b, "runs": profile_runs, "unit": "seconds per call",
                                   "ops": {p: cache[p].profile_ops(xs[0], profile_runs)
                                           for p in ("dyninfer-dense", "dyninfer-gated") if p in cache}}
                for f in sweep:
                    med, p90 = timing.pop(f"sweep:{f}")
                    m = macs_sweep[(f, b)]
                    g = 2 * m * b / med / 1e9
                    sweep_rows.append(dict(zip(SWEEP_FIELDS, (t, b, f, med * 1e3, p90 * 1e3, b / med, m, g, g / peak))))
                settings.append({"threads": t, "batch": b, "peak_gflops_single_core": peak})
                rows.extend(_rows(t, b, peers, status, version, diff, timing, macs_dense,
                                  macs_gated.get(b), peak))
                tqdm.write(format_table([r for r in rows if r["threads"] == t and r["batch"] == b], peak))
    finally:
        bar.close()
        torch.set_num_threads(old_threads)

    result = {
        "model": desc["name"], "source": str(model), "weights": desc["weights"], "metrics": desc["metrics"],
        "force_keep": force_keep, "peers": list(peers), "runs": runs, "block": block, "warmup": warmup,
        "batch_sizes": list(batch_sizes), "threads": list(threads),
        "inputs": ("digits test images (dyninfer.data.load_dataset('digits', split='test'))"
                   if inputs[batch_sizes[0]][0].shape[1:] == (3, 32, 32) else "seeded standard normal"),
        "macs_convention": MACS_CONVENTION, "macs_dense": macs_dense,
        "macs_gated_by_batch": {str(b): m for b, m in macs_gated.items()},
        "machine": {"cpu": cpu_model(), "engine_isa": isa(), "cpus": os.cpu_count(), "threads": list(threads),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": _version("onnxruntime"), "openvino": _version("openvino")},
        "settings": settings, "rows": rows, "density_sweep": sweep_rows, "profile": profile,
        "command": command or " ".join([Path(sys.executable).name] + sys.argv),
    }
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, path)
    return result


def forced_macs(gated: nn.Module, keep: float, x: torch.Tensor) -> float:
    """Mean effective MACs per sample of ``gated`` with every gate forced to keep ``keep`` of its
    channels on ``x`` (B, C, H, W); the gates' own force_keep is restored afterwards."""
    from .flops import count_macs
    from .nn import gates

    gs = list(gates(gated).values())
    old = [g.force_keep for g in gs]
    try:
        for g in gs:
            g.force_keep = keep
        return count_macs(gated, x).effective.double().mean().item()
    finally:
        for g, o in zip(gs, old):
            g.force_keep = o


def _rows(t: int, b: int, peers: Sequence[str], status: dict, version: dict, diff: dict,
          timing: dict[str, tuple[float, float]], macs_dense: int, macs_gated: float | None,
          peak: float) -> list[dict[str, Any]]:
    rows = []
    for peer in peers:
        row = dict.fromkeys(ROW_FIELDS)
        row.update(threads=t, batch=b, peer=peer, status=status[peer], version=version[peer],
                   max_rel_diff=diff[peer], speedup_vs={}, speedup_over_mac_reduction={})
        if peer in timing:
            med, p90 = timing[peer]
            gated_row = peer in GATED_PEERS
            macs = macs_gated if gated_row else macs_dense
            gflops = 2 * macs * b / med / 1e9
            row.update(median_ms=med * 1e3, p90_ms=p90 * 1e3, throughput_per_s=b / med, macs_per_sample=macs,
                       macs_kind="effective (mean over the timed inputs)" if gated_row else "dense",
                       gflops=gflops, fraction_of_peak=gflops / peak, fraction_of_peak_per_core=gflops / (t * peak),
                       mac_reduction=macs_dense / macs)
            for base in SPEEDUP_BASES:
                if base in timing:
                    s = timing[base][0] / med
                    row["speedup_vs"][base] = s
                    row["speedup_over_mac_reduction"][base] = s / row["mac_reduction"]
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], peak: float) -> str:
    """One setting's rows as a table; speedups against the fastest available dense peer."""
    if not rows:
        return ""
    t, b = rows[0]["threads"], rows[0]["batch"]
    ok = [r for r in rows if r["status"] == "ok"]
    bases = [r for r in ok if r["peer"] in DENSE_PEERS]
    base = min(bases, key=lambda r: r["median_ms"])["peer"] if bases else None
    head = (f"{'peer':<16} {'median ms':>10} {'p90 ms':>9} {'samples/s':>10} {'MACs/sample':>12} {'GFLOP/s':>8} "
            f"{'%peak':>6} {'%/core':>6} {'vs ' + (base or '-'):>16} {'÷MAC red':>8}")
    lines = [f"\nthreads {t}, batch {b}; single-core FMA peak {peak:.1f} GFLOP/s", head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['peer']:<16} {r['status']}")
            continue
        sp = r["speedup_vs"].get(base, float("nan"))
        red = r["speedup_over_mac_reduction"].get(base, float("nan"))
        lines.append(f"{r['peer']:<16} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} {r['throughput_per_s']:>10.1f} "
                     f"{r['macs_per_sample'] / 1e6:>11.2f}M {r['gflops']:>8.1f} {100 * r['fraction_of_peak']:>5.1f}% "
                     f"{100 * r['fraction_of_peak_per_core']:>5.1f}% {sp:>15.2f}x {red:>8.2f}")
    return "\n".join(lines)
