"""Class-conditional training against the unconditional model, in one run: the main job's settings (the bundled
AG News titles and descriptions, the default model and epochs) trained three times with the same seed: without a
class, with the class added to the first layer's input at every step (`input`), and with the class as every layer's
initial state (`state`). Prints each run's held-out bits per character given the true class and given "no class"
(the figure comparable to the unconditional model's), and its training time.

    python bench/bench_condition.py --out /tmp/condition            # about 35 minutes on 2 cores
    python bench/bench_condition.py --out /tmp/condition --epochs 2 # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.config import TrainConfig  # noqa: E402

VARIANTS = {"unconditional": {}, "input": {"condition": "class", "condition_via": "input"},
            "state": {"condition": "class", "condition_via": "state"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the three runs")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=list(VARIANTS), action="append", help="train only these")
    args = parser.parse_args()
    from toolkit.train import train

    figures = {}
    for name in args.only or VARIANTS:
        config = TrainConfig(field="both", epochs=args.epochs, seed=args.seed, **VARIANTS[name])
        started = time.perf_counter()
        history = train(config, args.out / name, verbose=0, log=lambda _: None)
        seconds = time.perf_counter() - started
        best = min(history, key=lambda row: row["val_bpc"])
        figures[name] = {"val_bpc": best["val_bpc"], "val_bpc_no_class": best.get("val_bpc_any"),
                         "epoch": int(best["epoch"]), "seconds": round(seconds)}
        print(f"{name:14s} best epoch {int(best['epoch'])}: {best['val_bpc']:.4f} bits/char with the true class"
              + (f", {best['val_bpc_any']:.4f} with no class" if "val_bpc_any" in best else "")
              + f"; {seconds / 60:.1f} min", flush=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    with open(args.out / "figures.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "val_bpc", "val_bpc_no_class", "epoch", "seconds"])
        writer.writerows([name, *row.values()] for name, row in figures.items())


if __name__ == "__main__":
    main()
