"""`train`: fit the model, checkpoint every epoch, keep the best, and resume after an interruption."""

from __future__ import annotations

import csv
import hashlib
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from toolkit.config import TrainConfig, load_run_config, save_run_config
from toolkit.data import Corpus, load_corpus
from toolkit.dataset import make_dataset
from toolkit.files import UsageError, atomic_path
from toolkit.model import KerasStep, build_model
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.reference import generate
from toolkit.vocab import BREAK, Vocab

HISTORY_COLUMNS = ("epoch", "loss", "bpc", "val_loss", "val_bpc", "seconds", "chars_per_second")
EPOCH_SAMPLE_TEMPS = (0.3, 1.0, 1.8)


def fingerprint(texts: list[str]) -> str:
    """A short hash of the training texts, so an exported model can say what it was trained on."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def predicted_characters(texts: list[str]) -> int:
    """Targets per epoch: each text's characters and its <eos>; a leading BREAK is an input, not a target."""
    return sum(len(t.removeprefix(BREAK)) + 1 for t in texts)


def read_history(out: Path) -> list[dict[str, float]]:
    path = out / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_history(out: Path, rows: list[dict[str, float]]) -> None:
    with atomic_path(out / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch: last.keras, best.keras (by validation bits per character), then history.csv.

    Each file is renamed into place whole, so a killed process leaves the last completed epoch behind.
    """

    def __init__(self, out: Path, history: list[dict[str, float]], chars_per_epoch: int):
        super().__init__()
        self.out, self.history, self.chars = out, history, chars_per_epoch
        self.best = min((row["val_bpc"] for row in history), default=np.inf)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self.started
        with atomic_path(self.out / "last.keras") as tmp:
            self.model.save(tmp)
        if logs["val_bpc"] < self.best:
            self.best = logs["val_bpc"]
            with atomic_path(self.out / "best.keras") as tmp:
                shutil.copyfile(self.out / "last.keras", tmp)
        self.history.append({"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:5]},
                             "seconds": round(seconds, 2), "chars_per_second": round(self.chars / seconds)})
        _write_history(self.out, self.history)


class EpochSamples(keras.callbacks.Callback):
    """The notebook's sampling callback: a few titles at each temperature after every epoch."""

    def __init__(self, vocab: Vocab, log: Callable[[str], None], per_temp: int = 2, seed: int = 0):
        super().__init__()
        self.vocab, self.log, self.per_temp, self.seed = vocab, log, per_temp, seed

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        config = SampleConfig(EPOCH_SAMPLE_TEMPS, n=self.per_temp, max_len=100, seed=self.seed + epoch)
        rows = np.arange(config.rows)
        batch = generate(KerasStep(self.model), config, rows, [[]])
        for temp, text in zip(config.row_temperatures(rows), self.vocab.decode_rows(batch.ids), strict=True):
            self.log(f"  T={temp:.1f}  {text}")


def train(config: TrainConfig, out: Path, *, resume: bool = False, log: Callable[[str], None] = print,
          verbose: int | str = "auto", corpus: Corpus | None = None) -> list[dict[str, float]]:
    """Train (or resume) a run in `out`; returns the history, one dict per completed epoch."""
    out = Path(out)
    corpus = corpus or load_corpus(config.data, config.field, config.val_fraction, config.val_data)
    if resume:
        _, facts = load_run_config(out)
        if facts.get("data_fingerprint") != fingerprint(corpus.train):
            raise UsageError(f"the training texts differ from those {out} was trained on; resume with the same "
                             "data, or start a new run with --overwrite")
        save_run_config(out / "config.json", config, **{k: v for k, v in facts.items() if k != "config"})  # epochs
        vocab = Vocab.load(out / "vocab.json")
        model = keras.saving.load_model(out / "last.keras")
        history = read_history(out)
    else:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        vocab = Vocab.build(corpus.train)
        vocab.save(out / "vocab.json")
        save_run_config(out / "config.json", config, vocab_size=vocab.size,
                        data_fingerprint=fingerprint(corpus.train),
                        train_texts=len(corpus.train), val_texts=len(corpus.val))
        model = None  # built once the steps per epoch are known (the learning-rate schedule needs them)
        history = []
    done = len(history)
    if done >= config.epochs:
        log(f"{out} already completed {done} of {config.epochs} epochs; pass a larger --epochs to go on")
        return history
    keras.utils.set_random_seed(config.seed + done)
    train_ds = make_dataset(corpus.train, vocab, batch_size=config.batch_size, seq_len=config.seq_len,
                            shuffle_seed=config.seed + done)
    val_ds = make_dataset(corpus.val, vocab, batch_size=256, seq_len=config.seq_len)
    model = model or build_model(config, vocab.size, steps_per_epoch=int(train_ds.cardinality()))
    chars = predicted_characters(corpus.train)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2  # a bar on a terminal, a line per epoch in a log
    # Our own progress bar ahead of the samples, so that an epoch's line is complete before they print.
    progress = [keras.callbacks.ProgbarLogger()] if verbose else []
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=done, verbose=verbose,
              shuffle=False, callbacks=[RunCheckpoint(out, history, chars), *progress,
                                        EpochSamples(vocab, log, seed=config.seed)])
    return history

