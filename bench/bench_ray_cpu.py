"""Where `sample-batch --ray local`'s CPU goes, against the in-process engines on the same rows and cores: the
diagnosis behind the Ray ratio in docs/benchmarks.md ("Beyond one machine").

Both runs sample the same `--rows` rows of bench_distributed's fresh notebook-size model, pinned to `--cores`
cores, CSV written. In-process: the engines' thread CPU time (time.thread_time around each Engine.generate) and
the whole process's. Ray: each process's CPU time (user + system, psutil) read just before `ray.shutdown`: the
sampling actors, this driver, and Ray's own processes (its helper actors, agents, raylet, GCS), summed by kind.

    python bench/bench_ray_cpu.py                  # 300,000 rows: about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_distributed import TEMPS, fresh_model, pin  # noqa: E402


def cpu(times) -> float:
    return times.user + times.system


def in_process(model: Path, out: Path, config) -> dict:
    """Wall seconds, the engines' thread CPU seconds and the process's CPU seconds of the in-process backend."""
    import psutil

    from toolkit.sampling import engine
    from toolkit.sampling.batch import sample_batch

    generate, spent, lock = engine.Engine.generate, [0.0], threading.Lock()

    def timed(self, rows):
        started = time.thread_time()
        try:
            return generate(self, rows)
        finally:
            with lock:
                spent[0] += time.thread_time() - started

    engine.Engine.generate = timed
    try:
        before, started = cpu(psutil.Process().cpu_times()), time.perf_counter()
        sample_batch(model, out, config, device="cpu")
        return {"wall": time.perf_counter() - started, "engines": spent[0],
                "process": cpu(psutil.Process().cpu_times()) - before}
    finally:
        engine.Engine.generate = generate


def on_ray(model: Path, out: Path, config, workers: int) -> dict:
    """Wall seconds and the CPU seconds of each kind of process of a `--ray local` run: every process is read every
    0.2 s and once more just before `ray.shutdown` (Ray Data may end an actor before then), its last reading kept."""
    import psutil
    import ray

    from toolkit.sampling.batch import sample_batch

    shutdown, me, last, done = ray.shutdown, psutil.Process(), {}, threading.Event()

    def read() -> None:
        for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            line = " ".join(p.info["cmdline"] or [])
            if p.info["pid"] == me.pid or not p.info["cpu_times"]:
                continue
            if "MapWorker" in line:
                last[p.info["pid"]] = ("sampling actors", cpu(p.info["cpu_times"]))
            elif "ray::" in line or "/site-packages/ray/" in line:
                last[p.info["pid"]] = ("Ray's own processes", cpu(p.info["cpu_times"]))

    def poll() -> None:
        while not done.wait(0.2):
            read()

    def counted(*args, **kwargs):
        read()
        return shutdown(*args, **kwargs)

    ray.shutdown = counted
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        before, started = cpu(me.cpu_times()), time.perf_counter()
        sample_batch(model, out, config, device="cpu", ray="local", workers=workers)
        wall, driver = time.perf_counter() - started, cpu(me.cpu_times()) - before
    finally:
        done.set()
        poller.join()
        ray.shutdown = shutdown
    kinds = collections.Counter()
    for kind, seconds in last.values():
        kinds[kind] += seconds
    actors = sum(kind == "sampling actors" for kind, _ in last.values())
    return {"wall": wall, "driver": driver, "actors": actors, **kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cores = pin(args.cores)
    from toolkit.sampling.config import sampling_config

    print(f"$ python bench/bench_ray_cpu.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory(prefix="bench-ray-cpu-") as tmp:
        tmp = Path(tmp)
        model = fresh_model(tmp / "model.onnx")
        config = sampling_config(TEMPS, n=-(-args.rows // len(TEMPS)), seed=0)
        local = in_process(model, tmp / "local", config)
        shutil.rmtree(tmp / "local")
        remote = on_ray(model, tmp / "ray", config, args.workers)
    print(f"{config.rows:,} rows on cores {cores}; {args.workers} Ray actors")
    print("| run | wall (s) | CPU (s) |")
    print("| --- | --- | --- |")
    print(f"| in-process, the engines' threads | {local['wall']:.1f} | {local['engines']:.1f} |")
    print(f"| in-process, the whole process | | {local['process']:.1f} |")
    for kind in ("sampling actors", "driver", "Ray's own processes"):
        print(f"| `--ray local`, {kind} | {remote['wall']:.1f} | {remote.get(kind, 0.0):.1f} |")
    print(f"(sampling actors seen: {remote['actors']}; the poller's own reads are in the driver's CPU)")


if __name__ == "__main__":
    main()
