"""Self-BLEU cost: this toolkit's O(n-grams) computation against NLTK's sentence_bleu loop, in one run.

NLTK scores each sample against all the others (O(N^2)), so it runs on a small group; ours runs on the same group
(the figures must agree) and on 10,000 samples.

    python bench/bench_self_bleu.py --samples reports/example/samples.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # noqa: E402

from eval.metrics import self_bleu, words  # noqa: E402


def nltk_self_bleu(texts: list[list[str]]) -> float:
    smoothing = SmoothingFunction().method1
    return sum(sentence_bleu(texts[:i] + texts[i + 1:], t, smoothing_function=smoothing)
               for i, t in enumerate(texts)) / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path("reports/example/samples.csv"))
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=10_000)
    args = parser.parse_args()
    texts = [words(t) for t in pd.read_csv(args.samples, keep_default_na=False)["text"]]
    large = (texts * (args.large // len(texts) + 1))[:args.large]
    large = [t + [str(i % 97)] for i, t in enumerate(large)]  # repeats made distinct, so no group is trivial
    small = texts[:args.small]

    started = time.perf_counter()
    theirs = nltk_self_bleu(small)
    nltk_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours = self_bleu(small)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    self_bleu(large)
    large_seconds = time.perf_counter() - started
    print(f"{len(small)} samples: NLTK {nltk_seconds:.2f} s, ours {ours_seconds * 1e3:.1f} ms "
          f"({nltk_seconds / ours_seconds:,.0f}x), |difference| {abs(theirs - ours):.1e}")
    print(f"{len(large):,} samples: ours {large_seconds:.2f} s; NLTK, quadratic, would take about "
          f"{nltk_seconds * (len(large) / len(small)) ** 2 / 3600:.1f} h")


if __name__ == "__main__":
    main()
