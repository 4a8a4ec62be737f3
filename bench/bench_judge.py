"""Does a class-conditional model obey its class, and what do classes cost in sampling? In one run:

1. An independent judge (the report's, eval.usefulness.judge: TF-IDF over character 1–5-grams and logistic
   regression), trained on the run's own training titles and labels (its reference.json.xz), classifies the real
   held-out titles: the rate it gets right is the baseline. Then `--n` samples per class at T = 1.0 from the
   exported conditional model: the rate at which the judge assigns a sample to the class it was asked for, and
   its ratio to the baseline (the goal: ≥ 0.90).
   The same with classifier-free guidance at each weight of `--guidance` (W = 1 is no guidance), with the
   samples' diversity (distinct word bigrams over all bigrams, per class) beside it.
2. CPU sampling speed with classes (every class, `--n` each) against the same number of rows from `--plain` (an
   unconditional model of the same size; default: the conditional model asked for no class), and with guidance
   (W = 2) against without, ROUNDS alternating rounds; the ratios of characters per second (the goals: with
   classes ≥ 0.95 of without; guidance costing ≤ 2.2× a plain step, i.e. a ratio ≥ 0.45).

    pip install -e .
    python bench/bench_judge.py --run /tmp/condition/input --plain /tmp/condition/unconditional/model.onnx
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eval.usefulness import judge  # noqa: E402
from toolkit import titles  # noqa: E402
from toolkit.sampling.batch import sample_batch  # noqa: E402
from toolkit.sampling.config import SampleConfig, sampling_config  # noqa: E402
from toolkit.sampling.runtime import OnnxStep  # noqa: E402


def distinct_2(texts: list[str]) -> float:
    """Distinct word bigrams over all word bigrams (lower-cased)."""
    pairs = [p for t in texts for p in zip(t.lower().split()[:-1], t.lower().split()[1:], strict=True)]
    return len(set(pairs)) / len(pairs) if pairs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a conditional run, exported (RUN/model.onnx)")
    parser.add_argument("--plain", type=Path, help="an unconditional model.onnx of the same size, for speed")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", default="1,1.5,2,3", help="weights to measure, comma-separated")
    args = parser.parse_args()
    held = titles.parse((args.run / titles.FILE).read_bytes(), "reference.json.xz is", "retrain")
    keep = [i for i, k in enumerate(held.train_labels) if k >= 0]
    clf = judge([held.train[i] for i in keep], [held.train_labels[i] for i in keep])
    seen = [(t, k) for t, k in zip(held.val, held.val_labels, strict=True) if k >= 0]
    real = float(np.mean(clf.predict([t for t, _ in seen]) == np.array([k for _, k in seen])))
    model = args.run / "model.onnx"
    step = OnnxStep(model, "cpu")
    classes = step.spec.classes
    print(f"judge on real held-out titles: {real:.3f} correct ({len(seen)} titles); their distinct-2 "
          f"{distinct_2([t for t, _ in seen]):.3f}")
    for weight in map(float, args.guidance.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            config = sampling_config((1.0,), n=args.n, seed=args.seed, classes=classes, guidance=weight)
            sample_batch(model, Path(tmp) / "s", config, device="cpu")
            import pandas as pd

            rows = pd.read_csv(Path(tmp) / "s" / "samples.csv", keep_default_na=False)
        asked = rows["class"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        predicted = clf.predict(rows["text"].tolist())
        obeyed = float(np.mean(predicted == asked))
        each = ", ".join(f"{c} {np.mean(predicted[asked == i] == i):.3f}" for i, c in enumerate(classes))
        diversity = np.mean([distinct_2(rows["text"][asked == i].tolist()) for i in range(len(classes))])
        print(f"W = {weight:g}: judged as asked {obeyed:.3f} ({each}); ratio to real titles {obeyed / real:.3f} "
              f"(goal >= 0.90; with guidance >= 1.00); distinct-2 per class {diversity:.3f}", flush=True)

    plain = args.plain or model
    with_classes = SampleConfig((1.0,), n=args.n, seed=args.seed, classes=classes)
    without = SampleConfig((1.0,), n=args.n * len(classes), seed=args.seed,
                           classes=() if args.plain else ("any",))
    guided = sampling_config((1.0,), n=args.n, seed=args.seed, classes=classes, guidance=2.0)
    ratios, costs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            a = sample_batch(model, Path(tmp) / f"a{r}", with_classes, device="cpu")
            b = sample_batch(plain, Path(tmp) / f"b{r}", without, device="cpu")
            c = sample_batch(model, Path(tmp) / f"c{r}", guided, device="cpu")
            ratios.append(a.chars_per_second / b.chars_per_second)
            costs.append(a.chars_per_second / c.chars_per_second)
            print(f"  round {r + 1}: with classes {a.chars_per_second:,.0f} chars/s, without "
                  f"{b.chars_per_second:,.0f}, guided {c.chars_per_second:,.0f}; with/without {ratios[-1]:.3f}, "
                  f"guided step cost {costs[-1]:.2f}x", flush=True)
    print(f"sampling with classes / without: median {statistics.median(ratios):.3f} over {args.rounds} rounds "
          f"(goal >= 0.95); a guided step costs {statistics.median(costs):.2f}x a plain one (goal <= 2.2)")


if __name__ == "__main__":
    main()
