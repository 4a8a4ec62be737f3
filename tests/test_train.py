import collections
import csv
import errno
import hashlib
import json
import lzma
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import onnx
import pytest
from helpers import ROOT, assert_usage_error, decode, run_cli

import toolkit.data
import toolkit.files
import toolkit.rundir
import toolkit.train
from exporters.onnx import build_step_graph, export, max_logit_difference, read_weights
from toolkit.config import TrainConfig
from toolkit.data import in_validation, load_corpus
from toolkit.files import UsageError
from toolkit.model import KerasStep, build_model
from toolkit.rundir import MARKER
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.numpy_loop import generate
from toolkit.sampling.runtime import OnnxStep
from toolkit.train import Interrupted, read_history, train
from toolkit.vocab import BREAK, EOS, Vocab


def test_a_run_has_checkpoints_history_config_and_vocabulary(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"last.keras", "best.keras", "history.csv", "config.json", "vocab.json"} <= names
    history = read_history(tiny_run)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"] and history[1]["val_bpc"] < history[0]["val_bpc"]
    assert all(0 < row["val_bpc"] < 8 and row["chars_per_second"] > 0 for row in history)
    saved = json.loads((tiny_run / "config.json").read_text())
    config = TrainConfig.from_dict(saved["config"])
    assert (config.units, config.epochs) == (32, 2) and len(saved["data_fingerprint"]) == 16
    vocab = Vocab.load(tiny_run / "vocab.json")
    model = keras.saving.load_model(tiny_run / "best.keras", compile=False)
    assert model.output_shape[-1] == vocab.size == saved["vocab_size"]


def test_resume_continues_from_the_last_epoch_and_keeps_the_history(small_csv, tmp_path):
    data = tmp_path / "data.csv"
    shutil.copyfile(small_csv, data)
    config = TrainConfig(data=str(data), units=16, embedding_dim=8, epochs=1, batch_size=32)
    tmp_path = tmp_path / "run"
    logs: list[str] = []
    train(config, tmp_path, verbose=0, log=logs.append)
    first = read_history(tmp_path)
    assert any(line.strip().startswith(f"T={t}") for t in ("0.3", "1.0", "1.8") for line in logs)
    steps = int(keras.saving.load_model(tmp_path / "last.keras").optimizer.iterations.numpy())
    history = train(config.replace(epochs=3), tmp_path, resume=True, verbose=0, log=logs.append)
    assert [row["epoch"] for row in history] == [1, 2, 3] and history[0] == first[0]
    resumed = keras.saving.load_model(tmp_path / "last.keras")
    assert int(resumed.optimizer.iterations.numpy()) == 3 * steps  # the optimizer state came back too
    assert json.loads((tmp_path / "config.json").read_text())["config"]["epochs"] == 3
    added = next(t for t in (f"A title added since {i}" for i in range(100)) if not in_validation(t, 0.1))
    with open(data, "a") as f:
        f.write(f'"1","{added}","and its description"\n')
    with pytest.raises(UsageError, match="differ"):
        train(config.replace(epochs=4), tmp_path, resume=True, verbose=0)


def test_a_killed_run_resumes_losing_only_the_epoch_in_flight(small_csv, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", "--data", str(small_csv), "--out", str(out),
           "--units", "16", "--embedding-dim", "8", "--batch-size", "32", "--epochs", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.time() + 240
    while len(read_history(out)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = read_history(out)
    assert 2 <= len(done) < 200
    result = subprocess.run([*cmd[:-1], str(len(done) + 1), "--resume"], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no TensorFlow start-up chatter either
    history = read_history(out)
    assert [row["epoch"] for row in history] == list(range(1, len(done) + 2))
    assert history[:len(done)] == done


# --- helpers -----------------------------------------------------------------------------------------------------

def tiny(data, **changes) -> TrainConfig:
    """A model small enough that an epoch on ~200 titles takes a second."""
    return TrainConfig(**{"data": str(data), "units": 8, "embedding_dim": 4, "seq_len": 32, "batch_size": 32,
                          "epochs": 1, **changes})


def snapshot(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def siblings(out) -> list[str]:
    """What a run left beside its directory (a half-built new run, an old run moved aside)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def sabotage(monkeypatch, epoch: int, when: str, act) -> None:
    """Make `act(model)` happen in training: at the first batch of `epoch` ("begin"), or after its last ("end")."""

    class Sabotaged(toolkit.train.EpochSamples):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e + 1

        def on_train_batch_begin(self, batch, logs=None):
            if when == "begin" and self.epoch == epoch and batch == 0:
                act(self.model)

        def on_train_batch_end(self, batch, logs=None):
            if when == "end" and self.epoch == epoch and batch == self.params["steps"] - 1:
                act(self.model)

    monkeypatch.setattr(toolkit.train, "EpochSamples", Sabotaged)


def poison(model) -> None:
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])


def interrupt(_model) -> None:
    raise KeyboardInterrupt


def run_patched(script: str, *args, **env: str) -> subprocess.CompletedProcess:
    """`script` patches the toolkit, then runs the CLI (its first argument) as a user would, in a fresh process."""
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), **env})


def tiny_flags(data) -> list:
    """tiny()'s settings as `cli.py train` flags."""
    return ["--data", data, "--units", "8", "--embedding-dim", "4", "--seq-len", "32", "--batch-size", "32"]


def iterations(path) -> int:
    return int(keras.saving.load_model(path).optimizer.iterations.numpy())


@pytest.fixture(scope="module")
def titles_csv(small_csv, tmp_path_factory):
    """The first 200 rows of AG News."""
    path = tmp_path_factory.mktemp("titles") / "t200.csv"
    path.write_text("".join(small_csv.read_text(encoding="utf-8").splitlines(keepends=True)[:200]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def old_run(titles_csv, tmp_path_factory):
    """A finished one-epoch run, to be copied and then replaced, resumed or refused."""
    out = tmp_path_factory.mktemp("old") / "run"
    train(tiny(titles_csv), out, verbose=0, log=lambda _: None)
    return out


def copy_run(old_run, tmp_path):
    shutil.copytree(old_run, tmp_path / "run")
    return tmp_path / "run"


# --- item 2: every cell, depth, input and head trains, samples, exports and samples again on ONNX -----------

INPUTS = {"one-hot": {"embedding_dim": 0}, "embedding": {"embedding_dim": 4},
          "tied+weight-drop": {"embedding_dim": 4, "tie": True, "weight_drop": 0.3}}
# Every pair of (input, depth, cell) at least once: 6 runs instead of the 12 of every triple (a test of 6-12 s each).
PAIRWISE = [("one-hot", 1, "lstm"), ("one-hot", 2, "gru"), ("embedding", 1, "gru"), ("embedding", 2, "lstm"),
            ("tied+weight-drop", 1, "lstm"), ("tied+weight-drop", 2, "gru")]


@pytest.mark.parametrize(("options", "layers", "cell"), [(INPUTS[i], n, c) for i, n, c in PAIRWISE],
                         ids=[f"{i}-{n}-{c}" for i, n, c in PAIRWISE])
def test_every_architecture_trains_exports_and_samples_on_onnx(titles_csv, tmp_path, cell, layers, options):
    logs: list[str] = []
    config = tiny(titles_csv, cell=cell, layers=layers, **options)
    history = train(config, tmp_path / "run", verbose=0, log=logs.append)
    assert [row["epoch"] for row in history] == [1]
    assert sum(line.strip().startswith("T=") for line in logs) == 6  # the epoch's samples ran (GRU crashed here)
    assert any("bits/char" in line and "characters/s" in line for line in logs)  # and its summary
    result = export(tmp_path / "run")  # verified against Keras on export
    assert result.max_abs_diff <= 1e-4
    config = SampleConfig((0.0, 1.0), n=4, max_len=40, seed=1)
    run = sample_batch(result.path, tmp_path / "samples", config, device="cpu")
    with open(tmp_path / "samples" / "samples.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == run.rows == 8
    vocab = Vocab.load(tmp_path / "run" / "vocab.json")
    assert all(set(r["text"]) <= set(vocab.chars) for r in rows)
    # The same greedy title from the Keras step (training's samples) and the ONNX step (sample-batch).
    keras_step = KerasStep(keras.saving.load_model(tmp_path / "run" / "best.keras", compile=False))
    onnx_step = OnnxStep(result.path, device="cpu")
    assert onnx_step.spec.cell == cell and onnx_step.spec.layers == layers
    greedy = [decode(vocab, generate(step, SampleConfig((0.0,), n=1, max_len=40), np.arange(1), [[]]).ids[0])
              for step in (keras_step, onnx_step)]
    assert greedy[0] == greedy[1] == rows[0]["text"]


def test_the_epoch_line_reports_that_epoch_and_the_best_so_far(tmp_path):
    """What a user reads after each epoch: its validation figure, the best of the run so far, speed and rate."""
    vocab = Vocab.build(["abc def"])
    model = build_model(TrainConfig(units=8, embedding_dim=4), vocab.size)
    history = [{"epoch": e, "bpc": v + 0.25, "val_bpc": v, "seconds": 61.4, "chars_per_second": 12_345, "lr": 1e-3}
               for e, v in ((1, 3.0), (2, 2.5), (3, 2.8))]
    logs: list[str] = []
    callback = toolkit.train.EpochSamples(vocab, logs.append, toolkit.train.RunCheckpoint(tmp_path, tmp_path, history,
                                                                                          1000, 1e-3))
    callback.epochs = 20
    callback.set_model(model)
    callback.on_epoch_end(2)
    assert logs[0] == ("  epoch 3/20: training 3.050, validation 2.800 bits/char (best 2.500), 61 s, 12,345 "
                       "characters/s, learning rate 0.001")


def test_training_logs_a_line_per_epoch_then_its_samples_when_not_on_a_terminal(titles_csv, tmp_path, capsys):
    """`verbose="auto"` (the CLI's): in a log file no progress bar and one line per epoch (ours, not Keras' too,
    which said the same), each before its samples."""
    logs: list[str] = []
    train(tiny(titles_csv, epochs=2), tmp_path / "run", log=logs.append)
    printed = capsys.readouterr().out.splitlines()
    assert not any("\u2501" in line or "\r" in line or "val_bpc" in line for line in printed)  # no bar, no Keras
    starts = [i for i, line in enumerate(logs) if line.startswith("  epoch ")]
    assert starts == [0, 7] and logs[0].startswith("  epoch 1/2: training ")
    assert sum(line.startswith("  T=") for line in logs) == 12


# --- item 1: --overwrite replaces a run only once the new one has an epoch ---------------------------------------

def test_overwrite_swaps_the_new_run_in_after_its_first_epoch(old_run, titles_csv, tmp_path, monkeypatch):
    run = copy_run(old_run, tmp_path)
    seen: list[dict] = []
    sabotage(monkeypatch, 1, "begin", lambda _m: seen.append(json.loads((run / "config.json").read_text())))
    history = train(tiny(titles_csv, seed=7, epochs=2), run, overwrite=True, verbose=0, log=lambda _: None)
    assert seen[0]["config"]["seed"] == 0  # during epoch 1 the old run was still in place
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 7
    assert [row["epoch"] for row in history] == [1, 2] and len(read_history(run)) == 2
    assert json.loads((run / MARKER).read_text()) == {"toolkit": "charlm", "format": 1}
    assert siblings(run) == []


@pytest.mark.parametrize("act, error", [(poison, UsageError), (interrupt, Interrupted)])
def test_a_failure_before_the_first_epoch_leaves_the_old_run_whole(old_run, titles_csv, tmp_path, monkeypatch,
                                                                   act, error):
    run = copy_run(old_run, tmp_path)
    before = snapshot(run)
    sabotage(monkeypatch, 1, "end", act)
    with pytest.raises(error) as e:
        train(tiny(titles_csv, seed=7), run, overwrite=True, verbose=0, log=lambda _: None)
    assert snapshot(run) == before and siblings(run) == []
    if error is Interrupted:
        assert e.value.epochs == 0
    else:
        assert "epoch 1" in str(e.value) and "as it was" in str(e.value)


@pytest.mark.parametrize("resume", [False, True])
def test_ctrl_c_after_an_epoch_keeps_it_and_says_so(old_run, titles_csv, tmp_path, monkeypatch, resume):
    """The library's side of `test_ctrl_c_says_what_was_kept`: the count the CLI prints, and the run left whole."""
    run = copy_run(old_run, tmp_path)
    sabotage(monkeypatch, 2, "begin", interrupt)
    with pytest.raises(Interrupted) as e:
        train(tiny(titles_csv, seed=0 if resume else 7, epochs=3), run, resume=resume, overwrite=not resume,
              verbose=0, log=lambda _: None)
    assert e.value.epochs == 1 == len(read_history(run)) and siblings(run) == []
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == (0 if resume else 7)


@pytest.mark.parametrize("overwrite, held, words", [(False, False, "a run appeared"),
                                                     (True, True, "another `train` is writing")])
def test_a_run_that_appears_while_training_is_never_replaced_unasked(old_run, titles_csv, tmp_path, monkeypatch,
                                                                    overwrite, held, words):
    """Two trains into one --out: the second to finish its first epoch is refused, and the first run stays whole."""
    out = tmp_path / "run"
    handles = []

    def other_train(_model):
        if not out.exists():
            shutil.copytree(old_run, out)  # what a concurrent `train` made meanwhile
            if held:
                handles.append(toolkit.rundir.lock_run(out))  # and is still writing

    sabotage(monkeypatch, 1, "begin", other_train)
    try:
        with pytest.raises(UsageError, match=words):
            train(tiny(titles_csv, seed=9), out, overwrite=overwrite, verbose=0, log=lambda _: None)
    finally:
        for handle in handles:
            toolkit.files.unlock(handle)
    assert snapshot(out) == snapshot(old_run) and siblings(out) == []


# --- item 3: divergence stops training and keeps the last finite epoch ------------------------------------------

def test_divergence_stops_at_the_batch_and_keeps_the_last_finite_epoch(titles_csv, tmp_path, monkeypatch):
    out = tmp_path / "run"
    batches: list[int] = []
    sabotage(monkeypatch, 2, "begin", poison)
    monkeypatch.setattr(toolkit.train.RunCheckpoint, "on_train_batch_begin", lambda self, b, logs=None: batches.append(
        self.epoch) if self.epoch == 2 else None, raising=False)
    with pytest.raises(UsageError, match=r"non-finite.*epoch 2.*keeps epoch 1.*lower lr than 0.003"):
        train(tiny(titles_csv, epochs=3), out, verbose=0, log=lambda _: None)
    assert batches == [2]  # stopped at the batch where the loss went NaN, not at the end of the epoch
    assert [row["epoch"] for row in read_history(out)] == [1]
    steps = iterations(out / "last.keras")
    for name in ("last.keras", "best.keras"):
        model = keras.saving.load_model(out / name)
        assert all(np.isfinite(w).all() for w in model.get_weights())
        assert int(model.optimizer.iterations.numpy()) == steps  # epoch 1's state, not a partial epoch 2
    assert all(math.isfinite(v) for v in read_history(out)[0].values())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_non_finite_weights_after_the_last_batch_are_never_saved(titles_csv, tmp_path, monkeypatch):
    out = tmp_path / "run"
    sabotage(monkeypatch, 2, "end", poison)  # the training loss stays finite; validation is NaN
    with pytest.raises(UsageError, match="epoch 2"):
        train(tiny(titles_csv, epochs=2), out, verbose=0, log=lambda _: None)
    assert len(read_history(out)) == 1
    assert all(np.isfinite(w).all() for w in keras.saving.load_model(out / "last.keras").get_weights())


SABOTAGED_CLI = """
import runpy, sys
import numpy as np
import toolkit.files
import toolkit.rundir
import toolkit.train

class Sabotaged(toolkit.train.EpochSamples):
    def on_epoch_end(self, epoch, logs=None):
        self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])

toolkit.train.EpochSamples = Sabotaged
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_cli_reports_divergence_in_one_line_with_exit_status_2(titles_csv, tmp_path):
    out = tmp_path / "run"
    result = run_patched(SABOTAGED_CLI, ROOT / "cli.py", "train", *tiny_flags(titles_csv), "--out", out, "--epochs", 3)
    assert_usage_error(result, "epoch 2", "--lr")
    assert len(read_history(out)) == 1


INTERRUPTED_CLI = """
import os, runpy, signal, sys
import toolkit.train

class CtrlC(toolkit.train.EpochSamples):
    def on_train_batch_begin(self, batch, logs=None):
        if self.model.optimizer.iterations.numpy() >= int(os.environ["CTRL_C_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGINT)

toolkit.train.EpochSamples = CtrlC
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("epoch", [1, 2])
def test_ctrl_c_says_what_was_kept(old_run, titles_csv, tmp_path, epoch):
    run = copy_run(old_run, tmp_path)
    before = snapshot(run)
    steps = iterations(old_run / "last.keras")
    result = run_patched(INTERRUPTED_CLI, ROOT / "cli.py", "train", *tiny_flags(titles_csv), "--out", run,
                         "--epochs", 3, "--seed", 4, "--overwrite", CTRL_C_AT_STEP=str((epoch - 1) * steps + 1))
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    if epoch == 1:
        assert "nothing was written" in result.stderr and snapshot(run) == before
    else:
        assert "1 completed epoch saved" in result.stderr and "--resume" in result.stderr
        assert len(read_history(run)) == 1 and json.loads((run / "config.json").read_text())["config"]["seed"] == 4
    assert siblings(run) == []


def test_export_refuses_a_model_with_non_finite_logits(tmp_path):
    model = build_model(TrainConfig(units=8, embedding_dim=4, dropout=0), vocab_size=12)
    path = tmp_path / "m.onnx"


    poison(model)
    onnx.save(build_step_graph(read_weights(model), {}), path)
    with pytest.raises(UsageError, match="non-finite"):
        max_logit_difference(model, path, 12)


# --- item 4: resume is exact -------------------------------------------------------------------------------------

def cosine(lr: float, step: int, total: int) -> float:
    """The schedule by hand: from lr down to lr / 10 along half a cosine."""
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def test_resume_with_more_epochs_follows_the_longer_cosine(old_run, titles_csv, tmp_path):
    run = copy_run(old_run, tmp_path)
    steps = iterations(run / "last.keras")
    config = tiny(titles_csv, epochs=3)
    history = train(config, run, resume=True, verbose=0, log=lambda _: None)
    assert history[0]["lr"] == pytest.approx(cosine(config.lr, steps, steps))  # epoch 1 ended on the 1-epoch floor
    for row in history[1:]:
        assert row["lr"] == pytest.approx(cosine(config.lr, row["epoch"] * steps, 3 * steps), rel=1e-5)
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 3


def test_a_run_with_the_largest_seed_resumes(titles_csv, tmp_path):
    """A resumed run seeds with (seed + epochs done), which must wrap within numpy's range."""
    config = tiny(titles_csv, seed=2**32 - 1)
    train(config, tmp_path / "run", verbose=0, log=lambda _: None)
    history = train(config.replace(epochs=2), tmp_path / "run", resume=True, verbose=0, log=lambda _: None)
    assert [row["epoch"] for row in history] == [1, 2]


def test_resume_with_fewer_epochs_than_done_changes_nothing(old_run, titles_csv, tmp_path):
    run = copy_run(old_run, tmp_path)
    train(tiny(titles_csv, epochs=2), run, resume=True, verbose=0, log=lambda _: None)
    before = snapshot(run)
    logs: list[str] = []
    history = train(tiny(titles_csv, epochs=1), run, resume=True, verbose=0, log=logs.append)
    assert len(history) == 2
    assert logs == [f"{run} already completed 2 epochs (--epochs 1); pass a larger --epochs to go on"]
    assert snapshot(run) == before  # config.json still says 2 epochs


KILLED_CLI = """
import os, runpy, signal, sys

n, count, replace = int(sys.argv[1]), [0], os.replace

def killing_replace(src, dst):
    count[0] += 1
    if count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)

os.replace = killing_replace
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_kill_at_any_rename_resumes_from_a_consistent_epoch(old_run, titles_csv, tmp_path):
    """Kill a real `train --overwrite --epochs 2` before each of its renames in turn; then the next start finds
    either the old run whole or the new run at a completed epoch, with no stray file, and resumes it exactly.
    Each kill runs in a folder of its own, two at a time (a fresh process each, most of it spent importing)."""
    steps = iterations(old_run / "last.keras")
    pristine = snapshot(old_run)
    config = tiny(titles_csv, seed=5, epochs=2)

    def killed_at(n: int):
        """The run as a `train --overwrite` killed before its n-th rename leaves it, and that process's result."""
        (tmp_path / f"kill{n}").mkdir()
        run = copy_run(old_run, tmp_path / f"kill{n}")
        return run, run_patched(KILLED_CLI, n, ROOT / "cli.py", "train", *tiny_flags(titles_csv), "--out", run,
                                "--seed", 5, "--epochs", 2, "--overwrite")

    outcomes = []
    with ThreadPoolExecutor(2) as pool:
        pending = collections.deque(pool.submit(killed_at, n) for n in (1, 2))
        for n in range(3, 42):
            run, result = pending.popleft().result()
            if result.returncode == 0:  # past the last rename: the run went through
                break
            pending.append(pool.submit(killed_at, n))
            assert result.returncode == -signal.SIGKILL, result.stderr
            if not run.exists() or json.loads((run / "config.json").read_text())["config"]["seed"] == 0:
                toolkit.rundir.check_out(run, resume=False, overwrite=True)  # the next start puts an old run back
                assert snapshot(run) == pristine, run
                outcomes.append("old")
            else:
                history = train(config, run, resume=True, verbose=0, log=lambda _: None)
                assert [row["epoch"] for row in history] == [1, 2], run
                assert iterations(run / "last.keras") == 2 * steps, run  # no epoch trained twice, none skipped
                assert not [p for p in run.iterdir() if p.name.startswith(".")], run
                outcomes.append("new")
            assert siblings(run) == [], run
    assert result.returncode == 0 and "old" in outcomes and "new" in outcomes, outcomes
    assert len(outcomes) >= 10  # marker, vocab, config, reference, two commits of 3-4 files, the swap


# --- contract item 1: the reference titles travel with the run ----------------------------------------------------

def test_the_run_stores_its_training_and_held_out_titles(titles_csv, tmp_path):
    config = tiny(titles_csv, field="description")
    train(config, tmp_path / "run", verbose=0, log=lambda _: None)
    reference = json.loads(lzma.decompress((tmp_path / "run" / "reference.json.xz").read_bytes()).decode("utf-8"))
    corpus = load_corpus(str(titles_csv), "description")
    assert reference == {"train_titles": corpus.train_titles, "val_titles": corpus.val_titles,
                         "classes": list(corpus.classes), "train_labels": corpus.train_title_labels,
                         "val_labels": corpus.val_title_labels}
    assert corpus.classes and len(reference["val_labels"]) == len(reference["val_titles"])  # each title's class
    held = [t for t in reference["val_titles"] if in_validation(t, 0.1)]
    assert held == reference["val_titles"] and len(held) > 5  # titles, although the model validated on descriptions
    assert not set(reference["val_titles"]) & set(reference["train_titles"])


# --- item 5: what a user can do to a run, or the machine to training, ends in one line ---------------------------

@pytest.mark.parametrize("name, text", [
    ("config.json", '{"config": {"units": "many"}}'),
    ("config.json", "{not json"),
    ("vocab.json", '{"chars": 3}'),
    ("last.keras", "truncated"),
])
def test_a_tampered_run_is_refused_on_resume_in_one_line(old_run, tmp_path, name, text):
    run = copy_run(old_run, tmp_path)
    (run / name).write_text(text)
    before = snapshot(run)
    result = run_cli("train", "--out", run, "--resume", "--epochs", "2")
    assert_usage_error(result, "corrupt")
    assert snapshot(run) == before


def test_a_full_disk_during_an_epoch_is_one_line_and_keeps_the_old_run(old_run, titles_csv, tmp_path, monkeypatch):
    run = copy_run(old_run, tmp_path)
    before = snapshot(run)

    def full(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(keras.Model, "save", full)
    with pytest.raises(UsageError, match="No space left on device"):
        train(tiny(titles_csv, seed=3), run, overwrite=True, verbose=0, log=lambda _: None)
    assert snapshot(run) == before and siblings(run) == []


def test_running_out_of_memory_is_one_line_naming_the_sizes(titles_csv, tmp_path, monkeypatch):
    import tensorflow as tf

    def oom(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(keras.Model, "fit", oom)
    with pytest.raises(UsageError, match="out of memory.*batch_size 32.*units 8"):
        train(tiny(titles_csv), tmp_path / "run", verbose=0, log=lambda _: None)
    assert not (tmp_path / "run").exists() and siblings(tmp_path / "run") == []


# --- train.py's pieces without fitting: cheap enough to run against each of its mutants ---------------------------

LOGS = {"loss": 2.0, "bpc": 2.9, "val_loss": 2.1, "val_bpc": 3.0}


def test_the_data_fingerprint_keeps_its_format_so_older_runs_still_resume():
    """A run stores it and `--resume` compares it: the same texts must give the same 16 hex digits, as before."""
    assert toolkit.train.fingerprint(["ab", "c"]) == hashlib.sha256(b"ab\nc\n").hexdigest()[:16]
    assert toolkit.train.fingerprint(["ab", "c"]) != toolkit.train.fingerprint(["a", "bc"])


def test_an_epoch_predicts_every_character_and_the_end_but_not_a_leading_break():
    assert toolkit.train.predicted_characters(["abc", BREAK + "de", ""]) == 4 + 3 + 1


def test_the_history_reads_back_what_an_epoch_wrote(tmp_path):
    assert read_history(tmp_path) == []
    rows = [dict(zip(toolkit.train.HISTORY_COLUMNS, range(i, i + 8), strict=True)) for i in (1, 2)]
    toolkit.train._write_history(tmp_path / "history.csv", rows)
    assert read_history(tmp_path) == rows
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == ",".join(toolkit.train.HISTORY_COLUMNS)


def checkpoint_on(tmp_path, monkeypatch, *, history=(), run=None, seconds=2.5049):
    """A RunCheckpoint on a tiny untrained model, its clock stopped so each epoch lasts `seconds`."""
    clock = iter(np.arange(100) * seconds)
    monkeypatch.setattr(toolkit.train, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    checkpoint = toolkit.train.RunCheckpoint(run or out, out, list(history), 1000, 3e-3)
    checkpoint.set_model(build_model(TrainConfig(units=8, embedding_dim=4), vocab_size=10))
    return checkpoint


def end_epoch(checkpoint, epoch: int, **logs) -> None:
    checkpoint.on_epoch_begin(epoch - 1)
    checkpoint.on_epoch_end(epoch - 1, {**LOGS, **logs})


def test_an_epoch_commits_its_row_the_last_model_and_the_best_one(tmp_path, monkeypatch):
    checkpoint = checkpoint_on(tmp_path, monkeypatch)
    out = checkpoint.out
    end_epoch(checkpoint, 1)
    row = checkpoint.history[0]
    lr = float(checkpoint.model.optimizer.learning_rate)
    assert row == {"epoch": 1, **LOGS, "lr": lr, "seconds": 2.5, "chars_per_second": 399}  # 1000 / 2.5049
    assert read_history(out) == [row] and checkpoint.best == 3.0
    assert (out / "best.keras").read_bytes() == (out / "last.keras").read_bytes()
    best = (out / "best.keras").read_bytes()
    checkpoint.model.set_weights([w + 1 for w in checkpoint.model.get_weights()])
    end_epoch(checkpoint, 2, val_bpc=3.5)  # worse: best.keras stays epoch 1's
    assert (out / "best.keras").read_bytes() == best != (out / "last.keras").read_bytes()
    assert checkpoint.best == 3.0 and [r["val_bpc"] for r in read_history(out)] == [3.0, 3.5]
    end_epoch(checkpoint, 3, val_bpc=2.0)  # better
    assert (out / "best.keras").read_bytes() == (out / "last.keras").read_bytes() != best
    assert checkpoint.best == 2.0 and [r["epoch"] for r in read_history(out)] == [1, 2, 3]
    best = (out / "best.keras").read_bytes()
    checkpoint.model.set_weights([w + 1 for w in checkpoint.model.get_weights()])
    end_epoch(checkpoint, 4, val_bpc=2.0)  # a tie: the best stays the epoch that reached it first
    assert (out / "best.keras").read_bytes() == best != (out / "last.keras").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["best.keras", "history.csv", "last.keras"]  # nothing pending


def test_a_resumed_checkpoint_knows_the_best_epoch_so_far(tmp_path, monkeypatch):
    history = [{"epoch": 1, "val_bpc": 2.5}, {"epoch": 2, "val_bpc": 2.7}]
    checkpoint = checkpoint_on(tmp_path, monkeypatch, history=history)
    assert checkpoint.best == 2.5
    end_epoch(checkpoint, 3, val_bpc=2.6)
    assert not (checkpoint.out / "best.keras").exists() and checkpoint.best == 2.5


def test_the_first_epoch_of_a_new_run_swaps_it_into_place(tmp_path, monkeypatch):
    out = tmp_path / "run"
    new = toolkit.rundir.new_run_dir(out)
    checkpoint = checkpoint_on(tmp_path, monkeypatch, run=new)
    out.rmdir()  # the empty --out checked at the start
    end_epoch(checkpoint, 1)
    assert checkpoint.run == out and not new.exists() and (out / "last.keras").is_file() and (out / MARKER).is_file()
    end_epoch(checkpoint, 2)  # later epochs are written in place
    assert len(read_history(out)) == 2 and siblings(out) == []


@pytest.mark.parametrize("logs, weights", [({"val_loss": math.nan}, 0), ({"bpc": math.inf}, 0), ({}, math.nan)])
def test_a_non_finite_epoch_is_refused_and_nothing_of_it_is_written(tmp_path, monkeypatch, logs, weights):
    checkpoint = checkpoint_on(tmp_path, monkeypatch, history=[{"epoch": 1, "val_bpc": 3.0}])
    checkpoint.model.set_weights([w + weights for w in checkpoint.model.get_weights()])
    with pytest.raises(UsageError) as e:
        end_epoch(checkpoint, 2, **logs)
    assert str(e.value) == (f"the loss became non-finite (NaN or inf) in epoch 2: training diverged and stopped; "
                            f"{checkpoint.out} keeps epoch 1, the last finite one; train again with a lower lr "
                            "than 0.003, e.g. lr 0.0003")
    assert list(checkpoint.out.iterdir()) == [] and len(checkpoint.history) == 1


@pytest.mark.parametrize("loss, stops", [(math.nan, True), (-math.inf, True), (1e30, False)])
def test_a_batch_with_a_non_finite_loss_stops_training(tmp_path, monkeypatch, loss, stops):
    checkpoint = checkpoint_on(tmp_path, monkeypatch, run=tmp_path / "elsewhere")
    checkpoint.on_epoch_begin(0)
    if not stops:
        checkpoint.on_train_batch_end(0, {"loss": loss})
        return
    with pytest.raises(UsageError, match=rf"in epoch 1:.*no epoch completed, so {checkpoint.out} is as it was"):
        checkpoint.on_train_batch_end(0, {"loss": loss})


def test_a_failed_epoch_write_names_the_epoch_and_the_reason(tmp_path, monkeypatch):
    checkpoint = checkpoint_on(tmp_path, monkeypatch)

    def full(run, files):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(toolkit.train, "commit", full)
    with pytest.raises(UsageError) as e:
        end_epoch(checkpoint, 1)
    assert str(e.value) == (f"cannot write epoch 1 of {checkpoint.out}: No space left on device; training stopped "
                            "there")
    assert checkpoint.history == []


def test_each_epoch_samples_every_temperature_from_its_own_seed(tmp_path, monkeypatch):
    checkpoint = checkpoint_on(tmp_path, monkeypatch)
    end_epoch(checkpoint, 1)
    weights = checkpoint.model.get_weights()
    weights[-1][EOS] = -1e4  # the output bias: no title ends before the length limit
    checkpoint.model.set_weights(weights)
    vocab = Vocab.build(["abcdef"])
    logs: list[str] = []
    samples = toolkit.train.EpochSamples(vocab, logs.append, checkpoint, per_temp=3, seed=5)
    samples.set_model(checkpoint.model)
    for epoch in (0, 0, 1):
        samples.on_epoch_end(epoch)
    titles = [logs[i * 10 + 1:i * 10 + 10] for i in range(3)]
    assert all(len(block) == 9 for block in titles) and len(logs) == 30
    assert [line.split()[0] for line in titles[0]] == ["T=0.3"] * 3 + ["T=1.0"] * 3 + ["T=1.8"] * 3
    assert titles[0] == titles[1] != titles[2]  # the seed is the run's plus the epoch's
    expected = generate(KerasStep(checkpoint.model), SampleConfig((0.3, 1.0, 1.8), n=3, max_len=100, seed=6),
                        np.arange(9), [[]])
    assert [line.split("  ", 2)[2] for line in titles[2]] == list(vocab.decode_rows(expected.ids))
    assert {len(line.split("  ", 2)[2]) for block in titles for line in block} == {100}


def test_a_run_refuses_to_resume_on_other_texts_or_from_broken_files(tmp_path):
    corpus = toolkit.data.Corpus(["abc", "abd"], ["abe"], ["abc", "abd"], ["abe"])
    with pytest.raises(UsageError) as e:
        toolkit.train._load_run(tmp_path, {"data_fingerprint": "0" * 16}, corpus)
    assert str(e.value) == (f"the training texts differ from those {tmp_path} was trained on; resume with the same "
                            "data, or start a new run with overwrite")
    Vocab.build(corpus.train).save(tmp_path / "vocab.json")
    (tmp_path / "last.keras").write_text("not a model")
    try:
        keras.saving.load_model(tmp_path / "last.keras")
    except Exception as error:  # what Keras says of it, whatever its type
        reason = str(error).splitlines()[0][:160]
    facts = {"data_fingerprint": toolkit.train.fingerprint(corpus.train)}
    with pytest.raises(UsageError) as e:
        toolkit.train._load_run(tmp_path, facts, corpus)
    assert str(e.value) == (f"cannot load the run in {tmp_path} ({reason}); it is incomplete or corrupt: start a "
                            "new run with overwrite")


def test_a_new_run_holds_its_vocabulary_settings_and_titles_before_its_first_epoch(tmp_path):
    corpus = toolkit.data.Corpus(["abc", "xyz!"], ["ab"], ["abc t"], ["ab t"])
    config = TrainConfig(units=8, epochs=3)
    toolkit.train._start_run(tmp_path, config, Vocab.build(corpus.train), corpus)
    assert Vocab.load(tmp_path / "vocab.json") == Vocab.build(corpus.train)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == {"config": config.to_dict(), "vocab_size": 4 + 7, "data_fingerprint":
                     toolkit.train.fingerprint(corpus.train), "train_texts": 2, "val_texts": 1}
    reference = json.loads(lzma.decompress((tmp_path / "reference.json.xz").read_bytes()))
    assert reference == {"train_titles": ["abc t"], "val_titles": ["ab t"]}
    (tmp_path / "vocab.json").unlink()
    (tmp_path / "vocab.json").mkdir()  # what cannot be written
    with pytest.raises(UsageError) as e:
        toolkit.train._start_run(tmp_path, config, Vocab.build(corpus.train), corpus)
    assert str(e.value) == f"cannot write {tmp_path / 'vocab.json'}: Is a directory; choose another location"
