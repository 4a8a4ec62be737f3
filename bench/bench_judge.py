"""Does a class-conditional model obey its class, and what do classes cost in sampling? In one run:

1. An independent judge (scikit-learn: TF-IDF over character 1–5-grams and logistic regression), trained on the
   run's own training titles and labels (its reference.json.xz), classifies the real held-out titles: the rate it
   gets right is the baseline. Then `--n` samples per class at T = 1.0 from the exported conditional model: the
   rate at which the judge assigns a sample to the class it was asked for, and its ratio to the baseline (the goal:
   ≥ 0.90).
2. CPU sampling speed with classes (every class, `--n` each) against the same number of rows from `--plain` (an
   unconditional model of the same size; default: the conditional model asked for no class), ROUNDS alternating
   rounds; the ratio of characters per second (the goal: ≥ 0.95).

    pip install -e ".[bench]"
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

from toolkit import titles  # noqa: E402
from toolkit.sampling.batch import sample_batch  # noqa: E402
from toolkit.sampling.config import SampleConfig  # noqa: E402
from toolkit.sampling.runtime import OnnxStep  # noqa: E402


def judge(train: list[str], labels: list[int]):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True, min_df=2),
                          LogisticRegression(max_iter=2000, C=4.0))
    return model.fit(train, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a conditional run, exported (RUN/model.onnx)")
    parser.add_argument("--plain", type=Path, help="an unconditional model.onnx of the same size, for speed")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    held = titles.parse((args.run / titles.FILE).read_bytes(), "reference.json.xz is", "retrain")
    keep = [i for i, k in enumerate(held.train_labels) if k >= 0]
    clf = judge([held.train[i] for i in keep], [held.train_labels[i] for i in keep])
    seen = [(t, k) for t, k in zip(held.val, held.val_labels, strict=True) if k >= 0]
    real = float(np.mean(clf.predict([t for t, _ in seen]) == np.array([k for _, k in seen])))
    model = args.run / "model.onnx"
    step = OnnxStep(model, "cpu")
    classes = step.spec.classes
    with tempfile.TemporaryDirectory() as tmp:
        config = SampleConfig((1.0,), n=args.n, seed=args.seed, classes=classes)
        sample_batch(model, Path(tmp) / "s", config, device="cpu")
        import pandas as pd

        rows = pd.read_csv(Path(tmp) / "s" / "samples.csv", keep_default_na=False)
    asked = rows["class"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    predicted = clf.predict(rows["text"].tolist())
    obeyed = float(np.mean(predicted == asked))
    print(f"judge on real held-out titles: {real:.3f} correct ({len(seen)} titles)")
    for i, c in enumerate(classes):
        print(f"  samples asked for {c}: {np.mean(predicted[asked == i] == i):.3f} judged {c}")
    print(f"samples judged as the class asked for: {obeyed:.3f}; ratio to real titles {obeyed / real:.3f} "
          f"(goal >= 0.90)")

    plain = args.plain or model
    with_classes = SampleConfig((1.0,), n=args.n, seed=args.seed, classes=classes)
    without = SampleConfig((1.0,), n=args.n * len(classes), seed=args.seed,
                           classes=() if args.plain else ("any",))
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            a = sample_batch(model, Path(tmp) / f"a{r}", with_classes, device="cpu")
            b = sample_batch(plain, Path(tmp) / f"b{r}", without, device="cpu")
            ratios.append(a.chars_per_second / b.chars_per_second)
            print(f"  round {r + 1}: with classes {a.chars_per_second:,.0f} chars/s, without "
                  f"{b.chars_per_second:,.0f} chars/s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"sampling with classes / without: median {statistics.median(ratios):.3f} over {args.rounds} rounds "
          f"(goal >= 0.95)")


if __name__ == "__main__":
    main()
