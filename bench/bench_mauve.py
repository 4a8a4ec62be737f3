"""eval.mauve against the `mauve-text` package on the same features, and the run-to-run spread of a score.

The bundled AG News titles: the embedding (eval.mauve.Embedding) fitted on the training titles, the held-out titles
split in two random halves A and B. Against half B: half A itself (what chance gives), half A with 15% and 40% of
its characters replaced at random, half A with each title's characters shuffled, and one title repeated. For each,
over SEEDS k-means seeds: mauve-text's `compute_mauve(p_features=..., q_features=..., seed=s)` (faiss k-means), ours
with one quantisation (`mauve(..., seeds=1)`), and ours as the report computes it (the mean of
eval.usefulness.MAUVE_SEEDS quantisations): each one's mean and standard deviation over the seeds, and the gap
between the two implementations' means.

    pip install -e ".[dev]"    # mauve-text and faiss-cpu
    python bench/bench_mauve.py --seeds 20
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eval.mauve import Embedding, mauve  # noqa: E402
from eval.usefulness import MAUVE_SEEDS  # noqa: E402
from toolkit.data import load_corpus  # noqa: E402


def replaced(text: str, rate: float, rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") if rng.random() < rate else c for c in text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    import mauve as reference

    warnings.filterwarnings("ignore")
    corpus = load_corpus("ag_news:test", "title", 0.1, None)
    embed = Embedding.fit(corpus.train_titles)
    val = corpus.val_titles
    order = np.random.default_rng(0).permutation(len(val))
    half = len(val) // 2
    a, b = [val[i] for i in order[:half]], [val[i] for i in order[half:2 * half]]
    rng = random.Random(1)
    sets = {"halves": a, "15% replaced": [replaced(t, 0.15, rng) for t in a],
            "40% replaced": [replaced(t, 0.40, rng) for t in a],
            "shuffled characters": ["".join(rng.sample(t, len(t))) for t in a], "one title": [a[0]] * half}
    q = embed(b)
    seeds = range(args.seeds)
    print(f"{half} titles a side, {args.seeds} seeds; mean (sd) over the seeds")
    print(f"{'set':22}{'mauve-text':>16}{'ours, 1 seed':>16}{f'ours, {MAUVE_SEEDS} seeds':>16}{'gap':>8}"
          f"{'s/score (theirs, ours x1)':>28}")
    for name, texts in sets.items():
        p = embed(texts)
        started = time.perf_counter()
        theirs = [reference.compute_mauve(p_features=p, q_features=q, seed=s).mauve for s in seeds]
        their_time = (time.perf_counter() - started) / len(seeds)
        started = time.perf_counter()
        ours = [mauve(p, q, seed=s, boot=0).mauve for s in seeds]
        our_time = (time.perf_counter() - started) / len(seeds)
        averaged = [mauve(p, q, seed=s * MAUVE_SEEDS, boot=0, seeds=MAUVE_SEEDS).mauve
                    for s in range(max(len(seeds) // MAUVE_SEEDS, 2))]
        cell = lambda v: f"{np.mean(v):.3f} ({np.std(v, ddof=1):.3f})"  # noqa: E731
        print(f"{name:22}{cell(theirs):>16}{cell(ours):>16}{cell(averaged):>16}"
              f"{np.mean(ours) - np.mean(theirs):>+8.3f}{f'{their_time:.2f}, {our_time:.2f}':>28}")


if __name__ == "__main__":
    main()
