"""Sampling speed on a GPU (or on CPU), every figure measured in one run so that ratios hold on a shared machine:

1. the engine alone (composed step + head graph, state on the device) at 1,024 -> 262,144 rows, CUDA graphs on and
   off, for each model given (float32 and `--fp16` exports);
2. the whole `sample-batch` (library call: engine, decoding, CSV writer) at the larger sizes, and the command line
   once at the largest;
3. the same algorithm as a PyTorch loop on the same weights (read from the ONNX initializers; gather, gates, head,
   temperature, inverse-CDF draw; one CUDA graph per step, rows kept to the end), when PyTorch is installed;
4. the fp32 matrix-product ceiling: a step's multiply-adds at the throughput of one [rows, units] x [units, gates *
   units] product (PyTorch, TF32 off; numpy on CPU);
5. the engine on this machine's CPU cores, the steps between host reads (`sync_every`) and the buffer ladder's
   shrink factor, swept at one size;
6. a per-node profile of the step (onnxruntime profiling) and, with PyTorch on CUDA, the GPU time per kernel.

Needs numpy and onnxruntime (PyTorch optional): no TensorFlow, so it runs on a GPU machine that has only those.

    python bench/bench_gpu.py --model runs/notebook/model.onnx --model runs/default/model.onnx \\
        --model runs/notebook/model.fp16.onnx --model runs/default/model.fp16.onnx --out gpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from toolkit.sampling.batch import sample_batch  # noqa: E402
from toolkit.sampling.config import sampling_config  # noqa: E402
from toolkit.sampling.engine import Engine  # noqa: E402
from toolkit.sampling.processors import Ban  # noqa: E402
from toolkit.sampling.runtime import OnnxStep  # noqa: E402
from toolkit.vocab import BOS, EOS  # noqa: E402

TEMPS = (0.3, 1.0, 1.8)
MAX_LEN = 128
STARTED = time.perf_counter()


def log(text: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {text}", flush=True)


def config_for(rows: int):
    return sampling_config(TEMPS, n=math.ceil(rows / len(TEMPS)), max_len=MAX_LEN, seed=0)


def engine_rate(step: OnnxStep, rows: int, repeats: int, **options) -> dict:
    """Characters per second of Engine.generate over one chunk of `rows` rows (after a warm-up chunk that
    allocates every buffer size and captures the CUDA graphs)."""
    config = config_for(rows)
    engine = Engine(step, config, **options)
    indices = np.arange(config.rows)
    engine.generate(indices)
    best, chars = 0.0, 0
    for _ in range(repeats):
        started = time.perf_counter()
        batch = engine.generate(indices)
        seconds = time.perf_counter() - started
        chars = int(np.count_nonzero(batch.ids))
        best = max(best, chars / seconds)
    return {"rows": config.rows, "chars_per_s": best, "mean_length": chars / config.rows,
            "cuda_graph": engine.cuda_graph, "sync_every": engine.sync_every, "shrink": engine.shrink}


def command_rate(model: Path, rows: int, chunks: int, device: str) -> dict:
    """The library's whole sample_batch (session, engine, decoding, CSV) over `chunks` chunks of `rows` rows."""
    config = config_for(rows * chunks)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run = sample_batch(model, Path(tmp), config, device=device, batch_size=rows)
        wall = time.perf_counter() - started
    return {"rows": config.rows, "batch_size": rows, "chars_per_s": run.chars_per_second,
            "chars_per_s_with_setup": run.characters / wall, "provider": run.provider}


def cli_rate(model: Path, rows: int, chunks: int, device: str) -> dict:
    """`python cli.py sample-batch` as a user runs it, timed from outside (interpreter start and imports included)."""
    config = config_for(rows * chunks)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "sample-batch", "--model", str(model), "--n",
                        str(config.n), "--temps", ",".join(map(str, TEMPS)), "--batch-size", str(rows), "--device",
                        device, "--no-report", "--out", tmp], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        info = json.loads((Path(tmp) / "run.json").read_text())
    return {"rows": config.rows, "chars_per_s_printed": info["chars_per_second"],
            "chars_per_s_wall": info["characters"] / wall, "wall_s": wall}


def step_flops(step: OnnxStep) -> int:
    """Multiply-adds x 2 of one step for one row: recurrent and inter-layer products and the output head."""
    gates = 4 if step.spec.cell == "lstm" else 3
    u, v, layers = step.spec.units, step.spec.vocab.size, step.spec.layers
    return 2 * (u * gates * u * layers + u * gates * u * (layers - 1) + u * v)


def ceiling(step: OnnxStep, rows: int, torch, device: str, seconds: float = 0.5) -> float:
    """Characters per second if a step cost only its products at the measured fp32 throughput of the recurrent
    product at this shape (TF32 off)."""
    gates = 4 if step.spec.cell == "lstm" else 3
    u = step.spec.units
    if torch is not None and device == "cuda":
        a = torch.randn(rows, u, device="cuda")
        b = torch.randn(u, gates * u, device="cuda")
        reps = 0
        torch.cuda.synchronize()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(20):
                a @ b
            reps += 20
            torch.cuda.synchronize()
    else:
        a = np.random.default_rng(0).standard_normal((rows, u), np.float32)
        b = np.random.default_rng(1).standard_normal((u, gates * u), np.float32)
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            reps += 1
    flops = 2 * rows * u * gates * u * reps / (time.perf_counter() - started)
    return flops / step_flops(step)


def torch_rate(step: OnnxStep, rows: int, repeats: int, torch, device: str, check_every: int = 16) -> dict:
    """The same algorithm in PyTorch on the ONNX file's own weights: one CUDA graph per step, every row kept to
    the end (a static graph cannot drop rows), the host checking every `check_every` steps whether all ended."""
    spec = step.spec
    weights = {t.name: numpy_helper.to_array(t) for t in step.model.proto.graph.initializer}
    dtype = torch.float16 if spec.precision == "float16" else torch.float32
    on = "cuda" if device == "cuda" else "cpu"

    u, layers, lstm = spec.units, spec.layers, spec.cell == "lstm"
    order = "ifoc" if lstm else "zrh"  # gates side by side: one product per layer, the gates as views

    def w(name, gated=True):
        value = np.concatenate([weights[f"{name}_{g}"] for g in order], axis=-1) if gated else weights[name]
        return torch.from_numpy(np.array(value)).to(on, dtype)

    table, head, head_bias = w("input_table"), w("head_kernel", False), w("head_bias", False).float()
    recurrent = [w(f"recurrent_kernel_{i}") for i in range(layers)]
    inner = [(w(f"kernel_{i}"), w(f"bias_{i}")) for i in range(1, layers)]
    rec_bias = [w(f"recurrent_bias_{i}") for i in range(layers)] if not lstm else []
    ban = torch.from_numpy(Ban().mask(spec.vocab.size)).to(on)
    config = config_for(rows)
    temps = torch.from_numpy(config.row_temperatures(np.arange(config.rows)).astype(np.float32)).to(on)[:, None]
    n = config.rows
    token = torch.full((n,), BOS, dtype=torch.long, device=on)
    h = torch.zeros(layers, n, u, dtype=dtype, device=on)
    c = torch.zeros_like(h)
    done = torch.zeros(n, dtype=torch.bool, device=on)
    length = torch.zeros(n, dtype=torch.int32, device=on)

    def one_step():
        x = table[token]
        for i in range(layers):
            if i:
                x = torch.addmm(inner[i - 1][1], h[i - 1], inner[i - 1][0])
            if lstm:
                z = torch.addmm(x, h[i], recurrent[i])
                ifo = torch.sigmoid(z[:, :3 * u])
                c[i] = ifo[:, u:2 * u] * c[i] + ifo[:, :u] * torch.tanh(z[:, 3 * u:])
                h[i] = ifo[:, 2 * u:] * torch.tanh(c[i])
            else:
                r_all = torch.addmm(rec_bias[i], h[i], recurrent[i])
                zr = torch.sigmoid(x[:, :2 * u] + r_all[:, :2 * u])
                cand = torch.tanh(x[:, 2 * u:] + zr[:, u:] * r_all[:, 2 * u:])
                h[i] = cand + zr[:, :u] * (h[i] - cand)
            x = h[i]
        logits = (x @ head).float() + head_bias + ban
        scaled = logits / temps
        cdf = torch.cumsum(torch.exp(scaled - scaled.max(dim=1, keepdim=True).values), dim=1)
        drawn = (cdf < torch.rand(n, 1, device=on) * cdf[:, -1:]).sum(dim=1)
        length.add_((~done & (drawn != EOS)).int())
        done.logical_or_(drawn == EOS)
        token.copy_(drawn)

    def reset():
        token.fill_(BOS), h.zero_(), c.zero_(), done.zero_(), length.zero_()

    graph = None
    if on == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                one_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            one_step()
    best = 0.0
    for _ in range(repeats + 1):  # the first run warms up
        reset()
        if on == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            for t in range(MAX_LEN):
                graph.replay() if graph is not None else one_step()
                if (t + 1) % check_every == 0 and bool(done.all()):
                    break
            chars = int(length.sum())  # the download ends the timed region
        best = max(best, chars / (time.perf_counter() - started))
    return {"rows": n, "chars_per_s": best, "mean_length": chars / n}


def profile(step: OnnxStep, rows: int, torch, device: str) -> dict:
    """onnxruntime's per-node timings over one chunk (host-side launch times on CUDA), and with PyTorch on CUDA,
    the GPU time per kernel over one chunk."""
    config = config_for(rows)
    engine = Engine(step, config, profile=True, cuda_graph=False)
    engine.generate(np.arange(config.rows))
    path = engine.session.end_profiling()
    events = [e for e in json.loads(Path(path).read_text()) if e.get("cat") == "Node"
              and e["name"].endswith("_kernel_time")]
    Path(path).unlink()
    by_op = collections.Counter()
    for e in events:
        by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values()) or 1
    result = {"ort_node_us_share": {op: round(us / total, 4) for op, us in by_op.most_common(12)}}
    if torch is not None and device == "cuda":
        engine = Engine(step, config, cuda_graph=False)
        engine.generate(np.arange(config.rows))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            engine.generate(np.arange(config.rows))
        kernels = collections.Counter()
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kernels[e.name[:70]] += e.device_time
        total = sum(kernels.values()) or 1
        result["gpu_kernel_share"] = {k: round(us / total, 4) for k, us in kernels.most_common(12)}
        result["gpu_kernel_ms"] = round(total / 1e3, 2)
    return result


def parity(path: Path, rows: int = 512, steps: int = 64) -> dict:
    """Largest |logit difference| of CUDA against CPU over `steps` steps of `rows` random tokens (state carried),
    with TF32 off (the default) and on; and the share of rows the CUDA engine samples exactly as the CPU one does."""
    cpu = OnnxStep(path, "cpu")
    tokens = np.random.default_rng(0).integers(4, cpu.spec.vocab.size, size=(steps, rows))
    result = {}
    for tf32 in (False, True):
        gpu = OnnxStep(path, "cuda", tf32=tf32)
        gpu_state, cpu_state, worst = gpu.initial_state(rows), cpu.initial_state(rows), 0.0
        for t in range(steps):
            gpu_logits, gpu_state = gpu(tokens[t], gpu_state)
            cpu_logits, cpu_state = cpu(tokens[t], cpu_state)
            worst = max(worst, float(np.abs(gpu_logits - cpu_logits).max()))
        result[f"max_abs_logit_diff_tf32_{'on' if tf32 else 'off'}"] = worst
    config = config_for(3000)
    same = Engine(OnnxStep(path, "cuda"), config).generate(np.arange(config.rows)).ids == \
        Engine(cpu, config).generate(np.arange(config.rows)).ids
    result["rows_identical_to_cpu"] = float(same.all(axis=1).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="exported .onnx (repeatable)")
    parser.add_argument("--rows", default="1024,4096,16384,65536,262144", help="chunk sizes to measure")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timed chunks")
    parser.add_argument("--chunks", type=int, default=4, help="chunks of the whole-command measurement")
    parser.add_argument("--budget", type=float, default=420, help="seconds; later measurements are skipped after")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
    sizes = [int(r) for r in args.rows.split(",")]
    results: dict = {"device": args.device, "torch": getattr(torch, "__version__", None), "models": {}}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))

    def measure(name: str, what: dict, key: str, fn, *fn_args, **fn_kwargs) -> None:
        if time.perf_counter() - STARTED > args.budget:
            log(f"{name} {key}: skipped (over the {args.budget:.0f} s budget)")
            return
        try:
            what[key] = fn(*fn_args, **fn_kwargs)
            log(f"{name} {key}: {what[key]}")
        except Exception as e:  # one failed measurement must not lose the others
            what[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
            log(f"{name} {key}: FAILED {what[key]['error']}")
        save()

    import onnxruntime as ort

    log(f"onnxruntime {ort.__version__} {ort.get_available_providers()}, torch {results['torch']}")
    steps = {}
    for path in args.model:
        step = OnnxStep(path, args.device)
        steps[path] = step
        device = "cuda" if step.provider == "CUDAExecutionProvider" else "cpu"
        results["device"] = device
        spec = step.spec
        name = f"{path.parent.name}/{path.name}"
        r = results["models"][name] = {"cell": spec.cell, "layers": spec.layers, "units": spec.units,
                                       "vocab": spec.vocab.size, "precision": spec.precision}
        log(f"== {name}: {spec.cell} {spec.layers}x{spec.units}, vocabulary {spec.vocab.size}, {spec.precision}, "
            f"{step.provider}")
        for rows in sizes:
            measure(name, r, f"engine_{rows}", engine_rate, step, rows, args.repeats)
        if device == "cuda":
            for rows in sizes:
                measure(name, r, f"engine_nograph_{rows}", engine_rate, step, rows, args.repeats, cuda_graph=False)
        if torch is not None:
            for rows in sizes:
                measure(name, r, f"torch_{rows}", torch_rate, step, rows, args.repeats, torch, device)
        if spec.precision == "float32":
            for rows in sizes:
                measure(name, r, f"ceiling_{rows}", ceiling, step, rows, torch, device)
    if results["device"] == "cuda":
        for path in args.model:
            measure(f"{path.parent.name}/{path.name}", results["models"][f"{path.parent.name}/{path.name}"],
                    "parity", parity, path)
    for path, step in steps.items():  # the slower measurements, once every model has its main figures
        name, r = f"{path.parent.name}/{path.name}", results["models"][f"{path.parent.name}/{path.name}"]
        if step.spec.precision != "float32":
            continue
        for rows in sizes[-2:]:
            measure(name, r, f"command_{rows}", command_rate, path, rows, args.chunks, args.device)
        measure(name, r, "profile", profile, step, sizes[-2], torch, results["device"])
    first = args.model[0]
    r = results["models"][f"{first.parent.name}/{first.name}"]
    for every in (4, 8, 16, 32):
        measure("sweep", r, f"sync_every_{every}_{sizes[-2]}", engine_rate, steps[first], sizes[-2], args.repeats,
                sync_every=every)
    for shrink in (0.5, 0.75, 0.875, 0.9375):
        measure("sweep", r, f"shrink_{shrink}_{sizes[-2]}", engine_rate, steps[first], sizes[-2], args.repeats,
                shrink=shrink)
    if results["device"] == "cuda":
        for path in args.model[:2]:
            name = f"{path.parent.name}/{path.name}"
            measure(name, results["models"][name], "cpu_command_16384", command_rate, path, 1024, 16, "cpu")
            measure(name, results["models"][name], f"cli_{sizes[-1]}", cli_rate, path, sizes[-1], args.chunks,
                    args.device)
    log(f"done; cores: {os.cpu_count()}")
    save()


if __name__ == "__main__":
    main()
