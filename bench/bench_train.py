"""Training throughput: this toolkit's tf.data pipeline and model against the notebook's, in one run.

Both train the notebook-size network (one-hot input, LSTM(128)) on the same titles for one epoch after a short
warm-up; throughput is characters (each title's characters and its end) per second. Runs alternate, and each
side's best of `--rounds` counts, since the machines are shared and noisy.

    python bench/bench_train.py --data ag_news:test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import notebook  # noqa: E402  (bench/ is the script's directory)

from toolkit.config import TrainConfig  # noqa: E402
from toolkit.data import load_corpus  # noqa: E402
from toolkit.dataset import make_dataset  # noqa: E402
from toolkit.model import build_model  # noqa: E402
from toolkit.vocab import Vocab  # noqa: E402


def timed_epoch(model, ds) -> float:
    model.fit(ds.take(5), epochs=1, verbose=0)  # trace and warm up
    started = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ag_news:test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    args = parser.parse_args()

    titles = load_corpus(args.data).train
    chars = sum(map(len, titles)) + len(titles)
    vocab, tok = Vocab.build(titles), notebook.CharTokenizer(titles)
    config = TrainConfig(embedding_dim=0, units=128, dropout=0, batch_size=args.batch_size)
    ours_ds = make_dataset(titles, vocab, batch_size=config.batch_size, seq_len=config.seq_len, shuffle_seed=0)
    nb_ds = notebook.dataset(titles, tok)
    ours_model, nb_model = build_model(config, vocab.size), notebook.model(tok.vocab_size)
    best = {"notebook": float("inf"), "toolkit": float("inf")}
    for r in range(args.rounds):
        for name, model, ds in (("notebook", nb_model, nb_ds), ("toolkit", ours_model, ours_ds)):
            seconds = timed_epoch(model, ds)
            best[name] = min(best[name], seconds)
            print(f"round {r + 1} {name:9s} {seconds:7.2f} s  {chars / seconds:10,.0f} chars/s", flush=True)
    nb, ours = chars / best["notebook"], chars / best["toolkit"]
    print(f"\n{len(titles):,} titles, {chars:,} characters per epoch; model: one-hot -> LSTM(128) -> Dense")
    print(f"notebook pipeline (py_function, one-hot, Masking, batch 8): {nb:10,.0f} chars/s")
    print(f"toolkit pipeline (tf.data, buckets, batch {config.batch_size}):       {ours:10,.0f} chars/s")
    print(f"ratio: {ours / nb:.1f}x")


if __name__ == "__main__":
    main()
