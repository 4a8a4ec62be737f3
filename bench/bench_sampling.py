"""Sampling speed on CPU, this checkout against a baseline checkout (e.g. main before a change), side by side:

each round runs `cli.py sample-batch` of the baseline, then of this checkout, on the same model and settings, as a
user would (CSV written, no report); the figure is the characters per second each command prints in its run.json
(the sampling loop with decoding and writing, without interpreter start-up). Rounds alternate so that a shared
machine's drift hits both alike; the ratio is taken per round and its median reported. The notebook's loop
(Keras, the whole prefix per character, batch 1) is timed once per model for scale, when TensorFlow is there.

    git worktree add /tmp/baseline 1dfa1fa          # the sampler before the engine
    python bench/bench_sampling.py --baseline /tmp/baseline --run runs/notebook --run runs/default
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the notebook baseline loads Keras


def command_rate(checkout: Path, model: Path, n: int, temps: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(checkout / "cli.py"), "sample-batch", "--model", str(model), "--n", str(n),
                        "--temps", temps, "--device", "cpu", "--no-report", "--out", tmp, *extra], check=True,
                       capture_output=True, text=True, cwd=checkout)
        return json.loads((Path(tmp) / "run.json").read_text())["chars_per_second"]


def notebook_rate(run: Path, samples: int) -> float | None:
    """The notebook's generate_soft on the run's Keras model, or None without TensorFlow."""
    try:
        import keras

        sys.path.insert(0, str(ROOT / "bench"))
        sys.path.insert(0, str(ROOT))
        import notebook

        import toolkit.model  # noqa: F401  registers the metric the checkpoint names
        from toolkit.vocab import BOS, EOS
    except ImportError:
        return None
    import numpy as np

    model = keras.saving.load_model(run / "best.keras", compile=False)
    rng, chars, started = np.random.default_rng(0), 0, time.perf_counter()
    for i in range(samples):
        chars += len(notebook.generate_soft(model, [BOS], EOS, size=100, temperature=(0.3, 1.0, 1.8)[i % 3],
                                            rng=rng)) - 1
    return chars / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout whose cli.py is the baseline")
    parser.add_argument("--run", type=Path, action="append", required=True, help="run directory with model.onnx")
    parser.add_argument("--n", type=int, default=10_000, help="samples per temperature")
    parser.add_argument("--temps", default="0.3,1.0,1.8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--notebook-samples", type=int, default=3)
    parser.add_argument("--extra", default="", help="more sample-batch flags for both, e.g. '--top-p 0.9'")
    args = parser.parse_args()
    for run in args.run:
        model = (run / "model.onnx").resolve()
        base, ours = [], []
        for _ in range(args.rounds):
            base.append(command_rate(args.baseline, model, args.n, args.temps, args.extra.split()))
            ours.append(command_rate(ROOT, model, args.n, args.temps, args.extra.split()))
        ratios = [o / b for o, b in zip(ours, base, strict=True)]
        print(f"== {run}: n={args.n:,} x {args.temps}, {args.rounds} alternating rounds {args.extra}")
        print(f"baseline ({args.baseline}): median {statistics.median(base):12,.0f} chars/s  "
              f"(min {min(base):,.0f}, max {max(base):,.0f})")
        print(f"this checkout:             median {statistics.median(ours):12,.0f} chars/s  "
              f"(min {min(ours):,.0f}, max {max(ours):,.0f})")
        print(f"ratio this / baseline:     median {statistics.median(ratios):.2f}  "
              f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
        nb = notebook_rate(run, args.notebook_samples) if args.notebook_samples else None
        if nb:
            print(f"notebook generate_soft:    {nb:12,.1f} chars/s -> this checkout is "
                  f"{statistics.median(ours) / nb:,.0f}x the notebook loop", flush=True)


if __name__ == "__main__":
    main()
