"""Constraints as automata (issue 22): do the samples keep them, and what do they cost on CPU? In one run:

1. `--n` samples at T = 1.0 under each of the issue's constraints (`[A-Z][^()]*\\(AP\\)`, `.*(Olympic|World Cup).*`,
   `[^0-9]*`, and a ban list of 100 random 4-8-letter words): with Python's `re` and plain substring search as
   judges, how many finished samples break the constraint (the goal: none), and the share finished (the goal:
   >= 95% where the model can reach the pattern); each pattern also with `must_finish` (`--must-finish`), which
   steers every row to an allowed title within the length limit.
2. CPU sampling speed (characters per second) with an automaton of about 1,000 states (a ban list of random words
   grown until its automaton has 1,000 states or more) and with a ban list of 1,000 strings, each against the same
   run without a constraint, ROUNDS alternating rounds of `--speed-n` samples; the median ratios (the goals: >= 0.85
   and >= 0.80). Also the `(AP)` pattern with `must_finish`, against no constraint.

    python bench/bench_constraints.py --model runs/agnews/model.onnx --n 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.sampling import automata  # noqa: E402
from toolkit.sampling.batch import sample_batch  # noqa: E402
from toolkit.sampling.config import sampling_config  # noqa: E402
from toolkit.sampling.runtime import OnnxStep  # noqa: E402

PATTERNS = (r"[A-Z][^()]*\(AP\)", r".*(Olympic|World Cup).*", r"[^0-9]*")


def words(count: int, rng: np.random.Generator) -> tuple[str, ...]:
    """`count` distinct random lower-case words of 4 to 8 letters."""
    out: dict[str, None] = {}
    while len(out) < count:
        out["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(4, 9)))] = None
    return tuple(out)


def run(model: Path, step: OnnxStep, n: int, classes: tuple[str, ...], **knobs) -> tuple[pd.DataFrame, float]:
    """The samples and the characters per second of one sample-batch (without its report)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = sampling_config((1.0,), n=n, seed=0, classes=classes, **knobs)
        started = time.perf_counter()
        sample_batch(model, Path(tmp) / "s", config, device="cpu", step=step)
        seconds = time.perf_counter() - started
        rows = pd.read_csv(Path(tmp) / "s" / "samples.csv", keep_default_na=False)
    return rows, rows["length"].sum() / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported model.onnx")
    parser.add_argument("--n", type=int, default=100_000, help="samples per constraint (part 1)")
    parser.add_argument("--speed-n", type=int, default=4000, help="samples per speed round (part 2)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    step = OnnxStep(args.model, "cpu")
    classes = ("any",) if step.spec.classes else ()
    rng = np.random.default_rng(0)
    ban100 = words(100, rng)
    results = {}
    for name, knobs in [*((p + suffix, {"regex": p, "must_finish": bool(suffix)}) for p in PATTERNS
                          for suffix in ("", " --must-finish")), ("ban 100 words", {"ban": ban100})]:
        rows, _ = run(args.model, step, args.n, classes, **knobs)
        done = rows[rows["finished"].astype(str).str.lower() == "true"]
        if "regex" in knobs:
            broken = int((~done["text"].map(lambda t, p=knobs["regex"]: re.fullmatch(p, t) is not None)).sum())
        else:
            broken = int(done["text"].map(lambda t: any(w in t for w in ban100)).sum())
        results[name] = {"samples": len(rows), "finished": round(len(done) / len(rows), 4), "broken": broken}
        print(f"{name}: {len(rows):,} samples, {len(done) / len(rows):.2%} finished, {broken} finished samples "
              f"break it; e.g. {done['text'].head(3).tolist()}", flush=True)
    vocab = step.spec.vocab
    grown = 50
    while automata.Automaton.from_banned(words(grown, np.random.default_rng(1)), vocab).states < 1000:
        grown += 25
    big = words(grown, np.random.default_rng(1))
    states = automata.Automaton.from_banned(big, vocab).states
    ban1000 = words(1000, np.random.default_rng(2))
    states1000 = automata.Automaton.from_banned(ban1000, vocab).states
    ratios: dict[str, list[float]] = {"automaton": [], "ban 1000": [], "(AP) --must-finish": []}
    for _ in range(args.rounds):  # alternately, so drift in the machine's speed hits both alike
        _, plain = run(args.model, step, args.speed_n, classes)
        _, with_big = run(args.model, step, args.speed_n, classes, ban=big)
        _, with_1000 = run(args.model, step, args.speed_n, classes, ban=ban1000)
        _, with_finish = run(args.model, step, args.speed_n, classes, regex=PATTERNS[0], must_finish=True)
        ratios["automaton"].append(with_big / plain)
        ratios["ban 1000"].append(with_1000 / plain)
        ratios["(AP) --must-finish"].append(with_finish / plain)
    sizes = {"automaton": states, "ban 1000": states1000,
             "(AP) --must-finish": automata.Automaton.from_regex(PATTERNS[0], vocab).states}
    for name, values in ratios.items():
        print(f"speed with {name} ({sizes[name]:,} states) / without: median "
              f"{statistics.median(values):.3f} (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    print(json.dumps({"coverage": results, "speed": {k: statistics.median(v) for k, v in ratios.items()},
                      "states": sizes}))


if __name__ == "__main__":
    main()
