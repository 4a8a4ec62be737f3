"""Cost of `cli.py report` at the issue's size: 10,000 samples at each of 3 temperatures, 120,000 training titles.

The training titles are synthetic (the real 120,000 are not at hand): AG News titles recombined, the first words of
one title and the last words of another (seeded). Samples come from the same generator with character noise that
grows with temperature, and a share of copies and near-copies of training titles at the lowest temperature; the
reference is the 7,600 real titles. Both reports run as a user runs them (a fresh process, imports included); the
baseline is another checkout of the toolkit (e.g. main before the report gained intervals), given its training
titles by --train-data since it has no reference.json.xz.

    mkdir /tmp/baseline && git archive <commit> | tar -x -C /tmp/baseline
    python bench/bench_report.py --data ../shared/data/ag_news/test.csv --baseline /tmp/baseline
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.data import read_csv  # noqa: E402


def recombiner(real: list[str], rng: random.Random):
    """A function that makes one synthetic title: the first words of a real title, the last words of another."""
    words = [t.split() for t in real if t.split()]

    def one() -> str:
        a, b = rng.choice(words), rng.choice(words)
        return " ".join(a[:rng.randint(1, len(a))] + b[rng.randrange(len(b)):])

    return one


def noisy(text: str, p: float, rng: random.Random) -> str:
    return "".join(rng.choice("aeinorst ") if rng.random() < p else c for c in text)


def make_sample_dir(out: Path, real: list[str], n: int, train: int, seed: int) -> None:
    rng = random.Random(seed)
    synthetic = recombiner(real, rng)
    titles = [synthetic() for _ in range(train)]
    rows = []
    for t, noise, copies in ((0.3, 0.0, 0.5), (1.0, 0.02, 0.05), (1.8, 0.12, 0.0)):
        for _ in range(n):
            text = (noisy(rng.choice(titles), 0.03, rng) if rng.random() < copies
                    else noisy(synthetic(), noise, rng))
            finished = rng.random() < 0.98
            rows.append({"sample_id": len(rows), "temperature": t, "prompt": "", "text": text, "length": len(text),
                         "finished": finished, "logprob": -(len(text) + finished) * rng.uniform(1.2, 2.5) * (1 + t),
                         "seed": seed})
    out.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(out / "samples.csv", index=False)
    with lzma.open(out / "reference.json.xz", "wt", encoding="utf-8") as f:
        json.dump({"train_titles": titles, "val_titles": real}, f)
    (out / "train.txt").write_text("\n".join(titles), encoding="utf-8")  # for the baseline's --train-data
    (out / "run.json").write_text(json.dumps({"model": "synthetic", "provider": "none", "reference_bpc": 2.4,
                                              "train_config": {"data": "train.txt"}}), encoding="utf-8")


def timed(checkout: Path, sample_dir: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(checkout / "cli.py"), "report", str(sample_dir), *args],
                            capture_output=True, text=True, cwd=checkout)
    if result.returncode:
        sys.exit(f"{checkout}: report failed:\n{result.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ag_news" / "test.csv")
    parser.add_argument("--n", type=int, default=10_000, help="samples per temperature")
    parser.add_argument("--train", type=int, default=120_000, help="synthetic training titles")
    parser.add_argument("--baseline", type=Path, help="another checkout of the toolkit, timed on the same samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    real = [r.title for r in read_csv(args.data)]
    with tempfile.TemporaryDirectory() as tmp:
        ours = Path(tmp) / "samples"
        make_sample_dir(ours, real, args.n, args.train, args.seed)
        seconds = timed(ROOT, ours)
        metrics = pd.read_csv(ours / "metrics.csv").set_index("group")
        print(f"report: {3 * args.n:,} samples, {args.train:,} training titles, {len(real):,} reference titles: "
              f"{seconds:.1f} s (subsample size {int(metrics['size'].iloc[0]):,})")
        print(metrics[["samples", "distinct_2", "self_bleu", "near_copy_rate", "js_words", "bpc"]].to_string())
        if args.baseline:
            theirs = Path(tmp) / "baseline"
            shutil.copytree(ours, theirs, ignore=shutil.ignore_patterns("metrics.csv", "report.html"))
            base = timed(args.baseline, theirs, "--train-data", str(theirs / "train.txt"))
            print(f"baseline {args.baseline}: {base:.1f} s; this report costs {seconds / base:.1f}x the baseline")


if __name__ == "__main__":
    main()
