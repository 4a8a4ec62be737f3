"""`train`: fit the model, commit every epoch whole, keep the best, stop on divergence, and resume exactly."""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from toolkit import titles
from toolkit.config import TrainConfig, check_resume, load_run_config, save_run_config
from toolkit.data import MAX_CLASSES, Corpus, load_corpus
from toolkit.dataset import make_dataset
from toolkit.files import UsageError, unlock
from toolkit.model import KerasStep, build_model, lr_schedule
from toolkit.rundir import (
    CHECKPOINTS,
    CONFIG,
    HISTORY,
    PENDING,
    VOCAB,
    check_out,
    clear_strays,
    commit,
    lock_run,
    new_run_dir,
    swap_into_place,
)
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.numpy_loop import generate
from toolkit.vocab import BREAK, Vocab

BEST, LAST = CHECKPOINTS["best"], CHECKPOINTS["last"]
HISTORY_COLUMNS = ("epoch", "loss", "bpc", "val_loss", "val_bpc", "lr", "seconds", "chars_per_second")
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
    path = out / HISTORY
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """HISTORY_COLUMNS, then what a conditional run adds (val_bpc_any: validation with "no class")."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, [*HISTORY_COLUMNS, *(k for k in rows[-1] if k not in HISTORY_COLUMNS)])
        writer.writeheader()
        writer.writerows(rows)


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch, one commit of last.keras, best.keras (by validation bits per character) and history.csv.

    The first commit of a new run (built in `run`, beside `out`) also swaps it into place. A non-finite loss
    stops training at the batch where it appears, and nothing non-finite is ever saved.
    """

    def __init__(self, run: Path, out: Path, history: list[dict[str, float]], chars_per_epoch: int, lr: float,
                 overwrite: bool = False, val_any=None):
        super().__init__()
        self.run, self.out, self.history, self.chars, self.lr = run, out, history, chars_per_epoch, lr
        self.overwrite, self.val_any = overwrite, val_any  # val_any: the validation set shown "no class"
        self.best = min((row["val_bpc"] for row in history), default=np.inf)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch, self.started = epoch + 1, time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if not math.isfinite(float(logs["loss"])):
            raise self._diverged()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self.started
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:5]},
               "lr": float(self.model.optimizer.learning_rate), "seconds": round(seconds, 2),
               "chars_per_second": round(self.chars / seconds)}
        if self.val_any is not None:
            row["val_bpc_any"] = float(self.model.evaluate(self.val_any, verbose=0, return_dict=True)["bpc"])
        if not all(map(math.isfinite, row.values())) or not all(np.isfinite(w).all() for w in self.model.get_weights()):
            raise self._diverged()
        files = {LAST: PENDING + LAST, HISTORY: PENDING + HISTORY}
        if row["val_bpc"] < self.best:
            files[BEST] = PENDING + BEST
        try:
            self.model.save(self.run / files[LAST])
            if BEST in files:
                shutil.copyfile(self.run / files[LAST], self.run / files[BEST])
            _write_history(self.run / files[HISTORY], [*self.history, row])
            commit(self.run, files)
            if self.run != self.out:
                swap_into_place(self.run, self.out, self.overwrite)
                self.run = self.out
        except OSError as e:
            raise UsageError(f"cannot write epoch {epoch + 1} of {self.out}: {e.strerror}; training stopped "
                             "there") from None
        self.history.append(row)
        self.best = min(self.best, row["val_bpc"])

    def _diverged(self) -> UsageError:
        kept = (f"{self.out} keeps epoch {len(self.history)}, the last finite one" if self.run == self.out
                else f"no epoch completed, so {self.out} is as it was")
        return UsageError(f"the loss became non-finite (NaN or inf) in epoch {self.epoch}: training diverged and "
                          f"stopped; {kept}; train again with a lower {{lr}} than {self.lr:g}, e.g. "
                          f"{{lr}} {self.lr / 10:g}", "lr")


class EpochSamples(keras.callbacks.Callback):
    """The notebook's sampling callback: after every epoch, its speed and a few titles at each temperature."""

    def __init__(self, vocab: Vocab, log: Callable[[str], None], checkpoint: RunCheckpoint, per_temp: int = 2,
                 seed: int = 0, epochs: int = 0):
        super().__init__()
        self.vocab, self.log, self.checkpoint, self.per_temp, self.seed = vocab, log, checkpoint, per_temp, seed
        self.epochs = epochs  # the run's total, for the epoch's line

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        row = self.checkpoint.history[-1]  # the epoch the checkpoint has just committed
        unconditional = f" (no class {row['val_bpc_any']:.3f})" if "val_bpc_any" in row else ""
        self.log(f"  epoch {row['epoch']:.0f}/{self.epochs}: training {row['bpc']:.3f}, validation "
                 f"{row['val_bpc']:.3f}{unconditional} bits/char (best {self.checkpoint.best:.3f}), "
                 f"{row['seconds']:.0f} s, "
                 f"{row['chars_per_second']:,.0f} characters/s, learning rate {row['lr']:.3g}")
        config = SampleConfig(EPOCH_SAMPLE_TEMPS, n=self.per_temp, max_len=100, seed=self.seed + epoch)
        rows = np.arange(config.rows)
        batch = generate(KerasStep(self.model), config, rows, [[]])
        for temp, text in zip(config.row_temperatures(rows), self.vocab.decode_rows(batch.ids), strict=True):
            self.log(f"  T={temp:.1f}  {text}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; `epochs`: how many epochs of this run --out now holds (0: --out is as it was)."""

    def __init__(self, epochs: int):
        super().__init__(epochs)
        self.epochs = epochs


def write_reference(run: Path, corpus: Corpus) -> None:
    """reference.json.xz: the titles novelty is measured against and the held-out titles, whatever the field."""
    titles.write(run / titles.FILE, titles.Titles(corpus.train_titles, corpus.val_titles, corpus.classes,
                                                  corpus.train_title_labels, corpus.val_title_labels))


def _load_run(out: Path, facts: dict, corpus: Corpus) -> tuple[Vocab, keras.Model]:
    if facts.get("data_fingerprint") != fingerprint(corpus.train):
        raise UsageError(f"the training texts differ from those {out} was trained on; resume with the same "
                         "data, or start a new run with {overwrite}", "overwrite")
    try:
        return Vocab.load(out / VOCAB), keras.saving.load_model(out / LAST)
    except Exception as e:  # missing, truncated or foreign files: Keras and json raise many types
        raise UsageError(f"cannot load the run in {out} ({str(e).splitlines()[0][:160]}); it is incomplete or "
                         "corrupt: start a new run with {overwrite}", "overwrite") from None


def _start_run(run: Path, config: TrainConfig, vocab: Vocab, corpus: Corpus) -> None:
    """What a new run holds before its first epoch (its marker is already there)."""
    vocab.save(run / VOCAB)  # each write is whole or a one-line UsageError (files.atomic_path)
    save_run_config(run / CONFIG, config, vocab_size=vocab.size, data_fingerprint=fingerprint(corpus.train),
                    train_texts=len(corpus.train), val_texts=len(corpus.val),
                    **({"classes": list(corpus.classes)} if config.condition == "class" else {}))
    write_reference(run, corpus)


def train(config: TrainConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print, verbose: int | str = "auto",
          corpus: Corpus | None = None) -> list[dict[str, float]]:
    """Train a new run in `out`, or resume the run there; returns the history, one dict per completed epoch.

    Refuses what the CLI refuses, with the same checks, before anything is written: a new run needs a new or
    empty `out`, or `overwrite` and a charlm run there with nothing else in it. The new run is built beside
    `out` and swapped into place once its first epoch is committed, so a failure before that (bad data,
    divergence, Ctrl-C) leaves an old run whole.
    """
    out = check_out(Path(out), resume=resume, overwrite=overwrite)
    if resume:
        saved, facts = load_run_config(out)
        check_resume(saved, config.to_dict())
        config = saved.replace(epochs=config.epochs)
    corpus = corpus or load_corpus(config.data, config.field, config.val_fraction, config.val_data)
    if config.condition == "auto":
        config = config.replace(condition="class" if corpus.classes else "none")
    if config.condition == "class" and not corpus.classes:
        raise UsageError(f"{{condition}} class needs labelled data, and {config.data} has no classes (a .txt, or a "
                         f"CSV with more than {MAX_CLASSES} distinct labels); train without {{condition}} or pass "
                         "labelled data", "condition")
    if resume and config.condition == "class" and facts.get("classes") != list(corpus.classes):
        raise UsageError(f"the data's classes {list(corpus.classes)} differ from those {out} was trained on "
                         f"{facts.get('classes')}; resume with the same data", "condition")
    built = Vocab.build(corpus.train)
    built.check_known(corpus.val)  # before anything is written
    run = out if resume else new_run_dir(out)
    lock = lock_run(run)
    history: list[dict[str, float]] = []
    checkpoint = None
    try:
        if resume:
            clear_strays(out)
            vocab, model = _load_run(out, facts, corpus)
            history = read_history(out)
            if len(history) >= config.epochs:
                log(f"{out} already completed {len(history)} epochs (--epochs {config.epochs}); pass a larger "
                    "--epochs to go on")
                return history
            if config.epochs != saved.epochs:  # the new total is the truth from now on
                save_run_config(out / CONFIG, config, **{k: v for k, v in facts.items() if k != "config"})
        else:
            vocab, model = built, None
            _start_run(run, config, vocab, corpus)
        checkpoint = RunCheckpoint(run, out, history, predicted_characters(corpus.train), config.lr, overwrite,
                                   _no_class_validation(config, vocab, corpus))
        _fit(config, model, vocab, corpus, checkpoint, log, verbose, done=len(history))
    except KeyboardInterrupt:
        raise Interrupted(len(history) if resume or (checkpoint and checkpoint.run == out) else 0) from None
    finally:
        if not resume and not (checkpoint and checkpoint.run == out):  # never swapped in: `out` is as it was
            shutil.rmtree(run, ignore_errors=True)
        unlock(lock)
    return history


def _labels(config: TrainConfig, corpus: Corpus, which: str) -> dict:
    """make_dataset's class arguments for a conditional run (nothing for an unconditional one)."""
    if config.condition != "class":
        return {}
    return {"labels": getattr(corpus, f"{which}_labels"), "no_class": len(corpus.classes)}


def _no_class_validation(config: TrainConfig, vocab: Vocab, corpus: Corpus):
    """The validation set with every class hidden: the figure comparable to an unconditional model's."""
    if config.condition != "class":
        return None
    return make_dataset(corpus.val, vocab, batch_size=256, seq_len=config.seq_len, labels=[-1] * len(corpus.val),
                        no_class=len(corpus.classes))


def _fit(config: TrainConfig, model: keras.Model | None, vocab: Vocab, corpus: Corpus, checkpoint: RunCheckpoint,
         log: Callable[[str], None], verbose: int | str, done: int) -> None:
    seed = (config.seed + done) % 2**32  # a resumed run draws anew, within numpy's seed range
    keras.utils.set_random_seed(seed)
    train_ds = make_dataset(corpus.train, vocab, batch_size=config.batch_size, seq_len=config.seq_len,
                            shuffle_seed=seed, label_dropout=config.label_dropout, **_labels(config, corpus, "train"))
    val_ds = make_dataset(corpus.val, vocab, batch_size=256, seq_len=config.seq_len, **_labels(config, corpus, "val"))
    steps = int(train_ds.cardinality())
    if model is None:
        model = build_model(config, vocab.size, steps_per_epoch=steps, classes=len(corpus.classes))
    else:
        model.optimizer.learning_rate = lr_schedule(config, steps)  # the configured total may have changed
    if verbose == "auto":  # a bar on a terminal while an epoch runs; the epoch's line is ours (EpochSamples)
        verbose = 1 if sys.stdout.isatty() else 0
    # Our own progress bar ahead of the samples, so that an epoch's line is complete before they print.
    progress = [keras.callbacks.ProgbarLogger()] if verbose else []
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=done, verbose=verbose,
                  shuffle=False,
                  callbacks=[checkpoint, *progress, EpochSamples(vocab, log, checkpoint, seed=config.seed,
                                                                    epochs=config.epochs)])
    except tf.errors.ResourceExhaustedError:
        raise UsageError(f"out of memory at {{batch_size}} {config.batch_size}, {{seq_len}} {config.seq_len}, "
                         f"{{units}} {config.units}, {{layers}} {config.layers}; lower them", "batch_size", "seq_len",
                         "units", "layers") from None
