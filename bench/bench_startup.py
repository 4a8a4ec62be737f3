"""A command's start-up under two versions of ml_dtypes, in one run: why pyproject.toml holds it below 0.7.

onnx and TensorFlow import ml_dtypes when they are imported, so every charlm command (and every Ray actor of
`sample-batch --ray`) pays its import. ml_dtypes 0.7.0 registers its ufunc loops one at a time into numpy's list,
each registration a linear search of that list (PyUFunc_AddLoop, compared tuple by tuple: `perf` shows it), so its
import costs quadratic time: about 0.7 s on these machines, against about 0.013 s for 0.6.0.

Each version is installed with `pip install --no-deps --target` into a temporary folder (the package registry must
be reachable) and put first on PYTHONPATH; everything else is this environment's. Timed, alternately, in fresh
processes, median of `--runs` each:
- `import ml_dtypes` alone (after numpy);
- `python cli.py sample-batch --n 1 --no-report` on a tiny random model, as a user starts it.
The ratio pinned / unpinned is the figure; each process checks which ml_dtypes it imported.

    python bench/bench_startup.py                 # 0.6.0 against 0.7.0, 7 runs each: about a minute
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

IMPORT = ("import sys, time, numpy; t = time.perf_counter(); import ml_dtypes; "
          "print(ml_dtypes.__version__, time.perf_counter() - t)")


def install(version: str, where: Path) -> Path:
    """ml_dtypes `version` alone in `where`."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(where),
                    f"ml_dtypes=={version}"], check=True, capture_output=True)
    return where


def env_for(path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(path), "TF_CPP_MIN_LOG_LEVEL": "3"}


def import_seconds(path: Path, version: str) -> float:
    out = subprocess.run([sys.executable, "-c", IMPORT], env=env_for(path), capture_output=True, text=True,
                         check=True).stdout.split()
    if out[0] != version:
        raise SystemExit(f"imported ml_dtypes {out[0]}, not {version}: PYTHONPATH did not take precedence")
    return float(out[1])


def startup_seconds(path: Path, model: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "sample-batch", "--model", str(model), "--n", "1",
                    "--temps", "1.0", "--device", "cpu", "--no-report", "--out", str(out)], env=env_for(path),
                   check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pinned", default="0.6.0", help="the version pyproject.toml allows")
    parser.add_argument("--unpinned", default="0.7.0", help="the version it keeps out")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from bench_distributed import fresh_model

    print(f"$ python bench/bench_startup.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        versions = {"pinned": args.pinned, "unpinned": args.unpinned}
        paths = {k: install(v, tmp / k) for k, v in versions.items()}
        model = fresh_model(tmp / "small.onnx", units=16)
        times: dict[str, dict[str, list[float]]] = {k: {"import": [], "startup": []} for k in versions}
        for i in range(args.runs):  # alternately, every other round in reverse: a drift hits both alike
            for kind in ("pinned", "unpinned")[::-1 if i % 2 else 1]:
                times[kind]["import"].append(import_seconds(paths[kind], versions[kind]))
                times[kind]["startup"].append(startup_seconds(paths[kind], model, tmp / f"{kind}{i}"))
    print()
    print(f"| measurement (median of {args.runs}) | ml_dtypes {args.unpinned} | ml_dtypes {args.pinned} | ratio |")
    print("| --- | --- | --- | --- |")
    for what, label in (("import", "`import ml_dtypes` (s)"), ("startup", "`sample-batch --n 1 --no-report` (s)")):
        a, b = (statistics.median(times[k][what]) for k in ("unpinned", "pinned"))
        print(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
