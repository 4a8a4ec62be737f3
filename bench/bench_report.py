"""Cost of `cli.py report` against what it reports on, and what its subset costs in precision.

Three measurements, each a ratio against a baseline measured in the same run (the machines are shared and noisy):

1. `--n N` samples a temperature (3 temperatures) from an exported model: `sample-batch --no-report` (the
   baseline) and `report` on its output, alternately, ROUNDS times each, in fresh processes (imports included);
   the report's wall time as a share of sampling's, and its peak memory.
2. The same directory scored with `--subset 0` (every text): each metric's interval width at the default subset
   over its width on every text (the subset loses little where the ratio is near 1).
3. With `--big N` (e.g. 333334 for 10^6 samples): the same as 1 at that size, once, for the absolute figures
   (seconds and peak memory of a million-sample report).
4. With `--sweep N`: 1,000 temperatures (0.01 to 10, the most --temps allows) of N samples each, sampled and
   reported once: what a sweep's report costs (its plots and sample tables are thinned to 12 temperatures).
5. With `--useful MODEL` (a class-conditional model: the main job's): `--useful-n` samples per class at each of
   0.3, 1.0 and 1.8, sampled (`sample-batch --no-report`, the baseline) and reported, alternately, ROUNDS times:
   the report's seconds (the goal: <= 60 s for 4 classes x 3 temperatures x 1,000) and its ratio to sampling's,
   and, in this process, the share of the report its usefulness figures take. Then the same with sampling seed 1:
   MAUVE of every class at once at each temperature, and the recommended temperature under both seeds.
`--baseline CHECKOUT` also times another checkout's `report` on the step-1 directory (e.g. main before this change).

    python bench/bench_report.py --model runs/notebook/model.onnx --n 20000
    python bench/bench_report.py --model runs/notebook/model.onnx --n 20000 --big 333334 --rounds 1
    python bench/bench_report.py --model runs/notebook/model.onnx --n 1000 --rounds 1 --useful runs/agnews/model.onnx

Each command runs as a user runs it; peak memory is the process's own maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eval.metrics import CURVE, METRICS  # noqa: E402

TEMPS = "0.3,1.0,1.8"
# Runs cli.py in this process and prints its peak resident set size (KiB) as the last line of stderr.
PEAK = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; code = 0\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code or 0\n"
        "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def timed(checkout: Path, *args: str) -> tuple[float, float]:
    """(wall seconds, peak MiB) of `cli.py ARGS` from `checkout`, in a fresh process."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, str(checkout / "cli.py"), *args], capture_output=True,
                            text=True, cwd=checkout)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{checkout}: cli.py {' '.join(args)} failed:\n{result.stderr}")
    peak = int(result.stderr.strip().splitlines()[-1].split()[1]) / 1024
    return seconds, peak


def sample(model: Path, out: Path, n: int) -> tuple[float, float]:
    return timed(ROOT, "sample-batch", "--model", str(model), "--n", str(n), "--temps", TEMPS, "--out", str(out),
                 "--no-report")


def widths(metrics: pd.DataFrame) -> pd.DataFrame:
    names = [*METRICS, *CURVE.values()]
    return pd.DataFrame({name: metrics[f"{name}_hi"] - metrics[f"{name}_lo"] for name in names}).set_axis(
        metrics["group"])


def expected(default: pd.DataFrame, full: pd.DataFrame) -> float:
    """sqrt(k_full / k_default): the width ratio of the mean of k independent subsamples, by the median group."""
    return float(np.median(np.sqrt(full["subsamples"] / default["subsamples"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported .onnx model")
    parser.add_argument("--n", type=int, default=20_000, help="samples a temperature (3 temperatures)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", type=int, help="also measure once at this many samples a temperature")
    parser.add_argument("--baseline", type=Path, help="another checkout whose report is timed on the same samples")
    parser.add_argument("--sweep", type=int, help="also measure 1,000 temperatures of this many samples each")
    parser.add_argument("--useful", type=Path, help="a class-conditional model: time the usefulness figures")
    parser.add_argument("--useful-n", type=int, default=1000, help="samples per class and temperature for --useful")
    args = parser.parse_args()
    if args.useful:
        useful(args.useful, args.useful_n, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "samples"
        sampling, reports = [], []
        for _ in range(args.rounds):  # alternately, so drift in the machine's speed hits both alike
            sampling.append(sample(args.model, out, args.n))
            (out / "metrics.csv").unlink(missing_ok=True)
            reports.append(timed(ROOT, "report", str(out)))
        s, r = statistics.median(t for t, _ in sampling), statistics.median(t for t, _ in reports)
        ratios = [b[0] / a[0] for a, b in zip(sampling, reports, strict=True)]
        print(f"{3 * args.n:,} samples: sample-batch --no-report {s:.2f} s (median of {args.rounds}), report {r:.2f} s "
              f"at {max(p for _, p in reports):,.0f} MiB peak; report / sample-batch = {statistics.median(ratios):.2f} "
              f"(each round: {', '.join(f'{x:.2f}' for x in ratios)})")
        default = pd.read_csv(out / "metrics.csv")
        full_seconds, full_peak = timed(ROOT, "report", str(out), "--subset", "0")
        full = pd.read_csv(out / "metrics.csv")
        ratio = (widths(default) / widths(full)).drop(index="reference")
        pairs = ratio.stack()
        pairs = pairs[np.isfinite(pairs)]  # a metric without spread (all 0 or all 1) has no ratio
        scored = default.set_index("group")["scored"].drop("reference")
        print(f"--subset 0 (every text): {full_seconds:.2f} s at {full_peak:,.0f} MiB. Interval width at the default "
              f"subset ({', '.join(f'{x:,}' for x in scored)} texts scored) over the width on every text, "
              f"{len(pairs)} metric-temperature pairs: median {pairs.median():.2f}, quartiles "
              f"{pairs.quantile(0.25):.2f}-{pairs.quantile(0.75):.2f}, within 1.5x: {(pairs <= 1.5).mean():.0%}; "
              f"expected from the subsamples alone: {expected(default, full):.2f}")
        print(json.dumps({k: round(float(v), 3) for k, v in ratio.median().sort_values().items()}))
        if args.baseline:
            theirs = Path(tmp) / "baseline"
            shutil.copytree(out, theirs, ignore=shutil.ignore_patterns("metrics.csv", "report.html"))
            seconds, peak = timed(args.baseline, "report", str(theirs))
            print(f"baseline {args.baseline}: report {seconds:.2f} s at {peak:,.0f} MiB; this report / baseline = "
                  f"{r / seconds:.3f}")
        if args.big:
            big = Path(tmp) / "big"
            s, sp = sample(args.model, big, args.big)
            r, rp = timed(ROOT, "report", str(big))
            print(f"{3 * args.big:,} samples: sample-batch --no-report {s:.1f} s ({sp:,.0f} MiB), report {r:.1f} s at "
                  f"{rp:,.0f} MiB peak; report / sample-batch = {r / s:.2f}")
        if args.sweep:
            sweep = Path(tmp) / "sweep"
            s, _ = timed(ROOT, "sample-batch", "--model", str(args.model), "--n", str(args.sweep), "--temps",
                         "0.01:10:0.01", "--out", str(sweep), "--no-report")
            r, rp = timed(ROOT, "report", str(sweep))
            print(f"1,000 temperatures x {args.sweep:,} samples: sample-batch --no-report {s:.1f} s, report {r:.1f} s "
                  f"at {rp:,.0f} MiB peak; report / sample-batch = {r / s:.2f}")


def useful(model: Path, n: int, rounds: int) -> None:
    """Step 5: the cost of a report with usefulness figures, their share of it, and their sanity across seeds."""
    from eval.scoring import read, usefulness_of
    from eval.usefulness import ALL, REAL

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "classes"
        sampling, reports = [], []
        for _ in range(rounds):
            sampling.append(sample(model, out, n))
            reports.append(timed(ROOT, "report", str(out)))
        s, r = statistics.median(t for t, _ in sampling), statistics.median(t for t, _ in reports)
        rows = len(pd.read_csv(out / "samples.csv", usecols=["temperature"]))
        started = time.perf_counter()
        reads = read(out)
        read_seconds = time.perf_counter() - started
        started = time.perf_counter()
        usefulness_of(reads)
        part = time.perf_counter() - started
        print(f"--useful: {rows:,} samples ({n:,} per class and temperature): sample-batch --no-report {s:.2f} s, "
              f"report {r:.2f} s (median of {rounds}; goal <= 60 s) at {max(p for _, p in reports):,.0f} MiB peak; "
              f"report / sample-batch = {r / s:.2f}; the usefulness figures {part:.1f} s of it (reading the samples "
              f"{read_seconds:.1f} s)")
        picks = []
        for seed in (0, 1):
            where = Path(tmp) / f"seed{seed}"
            timed(ROOT, "sample-batch", "--model", str(model), "--n", str(n), "--temps", TEMPS, "--out", str(where),
                  "--seed", str(seed))
            table = pd.read_csv(where / "usefulness.csv", keep_default_na=False)
            pooled = table[(table["section"] == "mauve") & (table["figure"] == "mauve") & (table["class"] == ALL)]
            tstr = table[(table["section"] == "tstr") & (table["figure"] == "accuracy")]
            page = (where / "report.html").read_text(encoding="utf-8")
            picks.append(page[page.index("Recommended: "):].split(",")[0])
            print(f"seed {seed}: MAUVE, every class at once: " + ", ".join(
                f"{'halves' if t == REAL else 'T=' + t} {v:.3f} ({lo:.3f}-{hi:.3f})"
                for t, v, lo, hi in pooled[["temperature", "value", "lo", "hi"]].itertuples(index=False))
                  + "; TSTR accuracy: " + ", ".join(f"{'TRTR' if t == REAL else 'T=' + t} {v:.3f}"
                                                    for t, v in tstr[["temperature", "value"]].itertuples(index=False))
                  + f"; {picks[-1]}")
        print(f"the same recommendation under both seeds: {picks[0] == picks[1]}")


if __name__ == "__main__":
    main()
