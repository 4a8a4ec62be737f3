"""`sample-batch --ray` and `--shard` (issue 23) against the in-process engines, every figure a ratio against a
baseline measured in the same run (the machines are shared and noisy):

1. Ray on `--workers` local CPU actors (`ray="local"`: a Ray started for the run and shut down after it, as the
   command does) against the in-process backend (`Local`: an engine per core) on the same cores (this process and
   everything it starts are pinned to `--cores` cores), `--rows` rows, CSV written: the throughput ratio Ray /
   in-process, over the whole call (Ray's start and shutdown included) and over the sampling loop alone (run.json's
   seconds). The goal: >= 0.85. The two files must be the same, byte for byte.
2. A plain `sample-batch` starts no slower than before: `python cli.py sample-batch --n 1 --no-report` of this
   checkout against the same command of a baseline checkout (default: commit 8bb0ba2, before the backends and the
   shards, exported with `git archive` into a temporary folder; the repository is not touched), in fresh processes,
   alternately, median of `--startups` each (the first of each compiles its bytecode). This checkout is timed from a
   copy in a temporary folder too, so that both start alike. Whether the command imports Ray is read from
   `python -X importtime`: every module a process imports is listed.
3. Shards: `--shards` shards sampled one after another (`sample_batch(..., shard=Shard(i, N))`) against the whole
   run of (1) (the same rows): the ratio of their summed wall time to the whole run's. The goal: <= 1.1. The
   shards' rows, one after another, must be the whole run's.

The model: `--model` (an exported model.onnx), or by default a freshly made random model of the notebook's size
(one-hot input, 1 x LSTM(128), printable ASCII), its <eos> biased: samples average 8, 31 and 43 characters at
T = 0.3, 1.0 and 1.8.
Each round runs the in-process run, Ray and the shards, every other round in reverse order, so that a shared
machine's drift hits all alike; ratios are per round, and their median is reported.

    python bench/bench_distributed.py                          # 10^6 rows: about 6 minutes on 2 cores
    python bench/bench_distributed.py --rows 30000 --startups 3 # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BASELINE_COMMIT = "8bb0ba2"  # main before the backends (Local, Ray) and the shards
TEMPS = (0.3, 1.0, 1.8)


def fresh_model(path: Path, units: int = 128, seed: int = 0) -> Path:
    """A random step model the size of the notebook's (one-hot input, 1 x LSTM(units)) over printable ASCII,
    written with the exporter's graph builder (no TensorFlow); <eos> biased (samples of 8, 31 and 43 characters at
    T = 0.3, 1.0 and 1.8)."""
    import numpy as np
    import onnx

    from exporters.onnx import Layer, Weights, build_step_graph
    from toolkit.sampling.contract import StepSpec
    from toolkit.vocab import EOS, Vocab

    rng = np.random.default_rng(seed)
    vocab = Vocab(tuple(c for c in string.printable if c == " " or not c.isspace()))

    def w(*shape, scale=0.3):
        return rng.normal(0, scale, shape).astype(np.float32)

    head_bias = w(vocab.size)
    head_bias[EOS] += 2.0
    layer = Layer(w(vocab.size, 4 * units), w(units, 4 * units), w(4 * units), None)
    weights = Weights("lstm", np.eye(vocab.size, dtype=np.float32), [layer], (w(units, vocab.size) * 4, head_bias))
    spec = StepSpec("lstm", 1, units, vocab, {"units": units, "embedding_dim": 0}, "random", "float32", None)
    onnx.save(build_step_graph(weights, spec.metadata("best")), path)
    return path


def pin(cores: int) -> list[int]:
    """Pin this process (and what it starts: Ray's processes too) to `cores` of the cores it may run on."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise SystemExit(f"--cores {cores}: this process may run on {len(allowed)} cores only")
    os.sched_setaffinity(0, allowed[:cores])
    return allowed[:cores]


def timed(model: Path, out: Path, config, **options) -> dict:
    """One sample_batch call: its wall seconds, the loop's seconds (run.json), characters."""
    from toolkit.sampling.batch import sample_batch

    started = time.perf_counter()
    run = sample_batch(model, out, config, device="cpu", **options)
    return {"wall": time.perf_counter() - started, "loop": run.seconds, "characters": run.characters,
            "rows": run.rows}


def body(path: Path) -> bytes:
    """A samples.csv without its header line."""
    data = path.read_bytes()
    return data[data.index(b"\n") + 1:]


def baseline_checkout(where: Path) -> Path:
    """BASELINE_COMMIT's files in `where` (git archive: the repository is only read)."""
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE_COMMIT], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def working_copy(where: Path) -> Path:
    """This checkout's files (as they are now, edits included) in `where`: timed from a fresh folder like the
    baseline, so that neither has the other's bytecode caches or folder."""
    shutil.copytree(ROOT, where, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "reports", "__pycache__",
                                                               "*.egg-info", ".*cache"))
    return where


def startup(checkout: Path, model: Path, out: Path) -> float:
    """Wall seconds of `python cli.py sample-batch --n 1` as a user runs it."""
    started = time.perf_counter()
    subprocess.run([sys.executable, str(checkout / "cli.py"), "sample-batch", "--model", str(model), "--n", "1",
                    "--temps", "1.0", "--device", "cpu", "--no-report", "--out", str(out)], check=True,
                   capture_output=True, cwd=checkout)
    return time.perf_counter() - started


def imports_ray(checkout: Path, model: Path, out: Path) -> bool:
    """Whether `cli.py sample-batch` imports any ray module (python -X importtime lists every import)."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(checkout / "cli.py"), "sample-batch", "--model",
                             str(model), "--n", "1", "--device", "cpu", "--no-report", "--out", str(out)],
                            capture_output=True, text=True, check=True, cwd=checkout)
    modules = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:")]
    return any(m == "ray" or m.startswith("ray.") for m in modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported model.onnx (default: a fresh random one)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the run (split over 3 temperatures)")
    parser.add_argument("--units", type=int, default=128, help="the fresh model's LSTM units (without --model)")
    parser.add_argument("--cores", type=int, default=2, help="cores this benchmark (and Ray) may run on")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--startups", type=int, default=7, help="runs of each checkout's `sample-batch --n 1`")
    parser.add_argument("--baseline", type=Path,
                        help=f"a checkout to time start-up against (default: commit {BASELINE_COMMIT})")
    args = parser.parse_args()
    cores = pin(args.cores)
    from toolkit.sampledir import Shard
    from toolkit.sampling.config import sampling_config

    print(f"$ python bench/bench_distributed.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        tmp = Path(tmp)
        model = args.model.resolve() if args.model else fresh_model(tmp / "model.onnx", args.units)
        n = -(-args.rows // len(TEMPS))
        config = sampling_config(TEMPS, n=n, seed=0)
        print(f"model {model if args.model else f'fresh random (one-hot, LSTM {args.units}, printable ASCII)'}; "
              f"{config.rows:,} rows ({n:,} x {len(TEMPS)} temperatures); cores {cores}; {args.workers} Ray "
              f"actors; {args.shards} shards", flush=True)
        rounds = []
        for r in range(args.rounds):  # every other round in reverse order: a steady drift cancels out
            result: dict = {}
            for kind in ("local", "ray", "shards")[::-1 if r % 2 else 1]:
                if kind == "local":
                    result["local"] = timed(model, tmp / "local", config)
                elif kind == "ray":
                    result["ray"] = timed(model, tmp / "ray", config, ray="local", workers=args.workers)
                else:
                    result["shards"] = [timed(model, tmp / f"shard{i}", config, shard=Shard(i, args.shards))
                                        for i in range(1, args.shards + 1)]
                seconds = sum(s["wall"] for s in result[kind]) if kind == "shards" else result[kind]["wall"]
                print(f"round {r + 1}: {kind} {seconds:.1f} s", flush=True)
            same = body(tmp / "ray" / "samples.csv") == body(tmp / "local" / "samples.csv")
            joined = b"".join(body(tmp / f"shard{i}" / "samples.csv") for i in range(1, args.shards + 1))
            whole = joined == body(tmp / "local" / "samples.csv")
            print(f"round {r + 1}: Ray's file is the in-process one: {same}; the shards together are the whole "
                  f"run: {whole}", flush=True)
            if not (same and whole):
                raise SystemExit("the files differ: the backends do not sample the same rows")
            rounds.append(result)

        checkout = args.baseline.resolve() if args.baseline else baseline_checkout(tmp / "baseline")
        small = fresh_model(tmp / "small.onnx", units=16) if not args.model else model
        times: dict[str, list[float]] = {"this": [], "baseline": []}
        this = working_copy(tmp / "this")
        for i in range(args.startups):  # alternately
            times["baseline"].append(startup(checkout, small, tmp / f"base{i}"))
            times["this"].append(startup(this, small, tmp / f"this{i}"))
        ray_imported = imports_ray(this, small, tmp / "importtime")

    def ratios(f) -> list[float]:
        return [f(r) for r in rounds]

    wall = ratios(lambda r: r["local"]["wall"] / r["ray"]["wall"])
    loop = ratios(lambda r: r["local"]["loop"] / r["ray"]["loop"])
    shard = ratios(lambda r: sum(s["wall"] for s in r["shards"]) / r["local"]["wall"])
    start = statistics.median(times["this"]) / statistics.median(times["baseline"])
    last = rounds[-1]
    chars = last["local"]["characters"]
    print()
    print("| measurement | baseline | this | ratio | goal |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| Ray, {args.workers} local actors / in-process, whole call (chars/s) | "
          f"{chars / last['local']['wall']:,.0f} | {chars / last['ray']['wall']:,.0f} | "
          f"{statistics.median(wall):.3f} ({', '.join(f'{x:.3f}' for x in wall)}) | >= 0.85 |")
    print(f"| Ray / in-process, sampling loop only (chars/s) | {chars / last['local']['loop']:,.0f} | "
          f"{chars / last['ray']['loop']:,.0f} | {statistics.median(loop):.3f} | |")
    print(f"| {args.shards} shards one after another / whole run (s) | {last['local']['wall']:.1f} | "
          f"{sum(s['wall'] for s in last['shards']):.1f} | {statistics.median(shard):.3f} "
          f"({', '.join(f'{x:.3f}' for x in shard)}) | <= 1.1 |")
    print(f"| `sample-batch --n 1` start-up, this / {args.baseline or BASELINE_COMMIT} (s, median of "
          f"{args.startups}) | {statistics.median(times['baseline']):.2f} | {statistics.median(times['this']):.2f} | "
          f"{start:.3f} | <= 1 (noise: a few %) |")
    print(f"| plain `sample-batch` imports Ray | | {'yes' if ray_imported else 'no'} | | no |")
    print(json.dumps({"rows": last["local"]["rows"], "characters": chars, "rounds": rounds, "startup": times,
                      "ray_imported": ray_imported, "ratios": {"ray_wall": wall, "ray_loop": loop, "shards": shard,
                                                               "startup": start}}))


if __name__ == "__main__":
    main()
