"""Training throughput, side by side in one run: the notebook's pipeline, this toolkit before the lean loop, and now.

Sides (each trains one epoch after a short warm-up, in a fresh process, since TensorFlow's thread settings are
per process; sides alternate round by round and each side's best round counts, as the machines are shared):

- notebook: the notebook's pipeline and model (py_function, one-hot, Masking, LSTM(128), batch 8) on the titles;
- small: this toolkit at the notebook's model size (one-hot, LSTM(128), no dropout) on the same titles;
- before: the default model as it was before the lean loop (Keras' own LSTM layer, TensorFlow's default threads,
  1xLSTM(256), embedding 64, dropout 0.1, batch 64) on titles and descriptions, as the main job trains;
- default: today's default model and training settings (TrainConfig) on the same titles and descriptions.

Throughput is predicted characters (each text's characters and its end) per second.

    python bench/bench_train.py --data ag_news:test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIDES = ("notebook", "small", "before", "default")
# The defaults of commit 88cd84d, and every option added since switched off.
BEFORE = {"units": 256, "embedding_dim": 64, "dropout": 0.1, "batch_size": 64, "weight_drop": 0.0}


def epoch(side: str, data: str) -> dict:
    """One side's epoch, timed after a warm-up of a few batches (tracing excluded)."""
    if side in ("notebook", "before"):
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = "0"  # TensorFlow's default
    import keras
    import notebook

    import toolkit.model
    from toolkit.config import TrainConfig
    from toolkit.data import load_corpus
    from toolkit.dataset import make_dataset
    from toolkit.model import build_model
    from toolkit.train import predicted_characters
    from toolkit.vocab import Vocab

    corpus = load_corpus(data, "title" if side in ("notebook", "small") else "both")
    if side == "notebook":
        tok = notebook.CharTokenizer(corpus.train)
        model, ds = notebook.model(tok.vocab_size), notebook.dataset(corpus.train, tok)
    else:
        config = {"small": TrainConfig(embedding_dim=0, units=128, dropout=0), "default": TrainConfig(),
                  "before": TrainConfig(**BEFORE)}[side]
        if side == "before":  # Keras' own layer, which has no weight drop (BEFORE switches it off)
            toolkit.model.RNN_LAYERS["lstm"] = lambda units, weight_drop, **kw: keras.layers.LSTM(units, **kw)
        vocab = Vocab.build(corpus.train)
        ds = make_dataset(corpus.train, vocab, batch_size=config.batch_size, seq_len=config.seq_len, shuffle_seed=0)
        model = build_model(config, vocab.size, steps_per_epoch=int(ds.cardinality()))
    model.fit(ds.take(5), epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return {"side": side, "seconds": seconds, "chars": predicted_characters(corpus.train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ag_news:test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ", ".join(SIDES))
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side in this process
    args = parser.parse_args()
    if args.side:
        print(json.dumps(epoch(args.side, args.data)))
        return
    sides = args.sides.split(",")
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for side in sides:
            out = subprocess.run([sys.executable, __file__, "--side", side, "--data", args.data], check=True,
                                 capture_output=True, text=True, cwd=ROOT).stdout
            result = json.loads(out.strip().splitlines()[-1])
            rate = result["chars"] / result["seconds"]
            print(f"round {r + 1} {side:9s} {result['seconds']:7.2f} s  {rate:10,.0f} chars/s", flush=True)
            if side not in best or rate > best[side]["rate"]:
                best[side] = {**result, "rate": rate}
    print()
    for side in sides:
        print(f"{side:9s} {best[side]['chars']:>10,} chars/epoch  {best[side]['rate']:10,.0f} chars/s")
    if {"notebook", "small"} <= best.keys():
        print(f"small / notebook:  {best['small']['rate'] / best['notebook']['rate']:.1f}x")
    if {"before", "default"} <= best.keys():
        print(f"default / before:  {best['default']['rate'] / best['before']['rate']:.1f}x")


if __name__ == "__main__":
    main()
