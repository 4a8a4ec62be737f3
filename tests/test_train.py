import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from helpers import ROOT

from toolkit.config import TrainConfig
from toolkit.data import in_validation
from toolkit.files import UsageError
from toolkit.model import build_model, rnn_layers
from toolkit.train import read_history, train
from toolkit.vocab import Vocab


def test_the_notebook_model_is_expressible_with_flags():
    """One-hot input, LSTM(128), Dense: the notebook's 119,892 parameters at its vocabulary size of 84."""
    model = build_model(TrainConfig(embedding_dim=0, units=128, dropout=0), vocab_size=84)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 119_892


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 3)])
def test_cells_and_depths(cell, layers):
    model = build_model(TrainConfig(cell=cell, layers=layers, units=8, embedding_dim=4), vocab_size=10)
    assert [type(layer).__name__ for layer in rnn_layers(model)] == [cell.upper()] * layers
    assert model(np.ones((2, 5), np.int32)).shape == (2, 5, 10)  # logits for every position


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
    assert result.returncode == 0, result.stderr
    history = read_history(out)
    assert [row["epoch"] for row in history] == list(range(1, len(done) + 2))
    assert history[:len(done)] == done
