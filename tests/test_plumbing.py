"""Training-side plumbing: each test fails when a value is computed right but wired wrong (units, masks, which
checkpoint, which texts)."""

import math
import shutil

import keras
import numpy as np
import pytest
from helpers import run_cli

from toolkit.config import TrainConfig
from toolkit.data import in_validation, read_csv
from toolkit.dataset import make_dataset
from toolkit.model import build_model
from toolkit.sampling.runtime import OnnxStep
from toolkit.train import RunCheckpoint, read_history, train
from toolkit.vocab import BOS, EOS, Vocab


def test_bits_per_character_are_bits_over_real_characters_only():
    """A model whose every output is the same distribution p: the figure is known by hand."""
    vocab = Vocab(tuple("ab"))  # ids: <pad> 0, <bos> 1, <eos> 2, <unk> 3, a 4, b 5
    model = build_model(TrainConfig(units=4, embedding_dim=2, dropout=0), vocab.size)
    weights = [np.zeros_like(w) for w in model.get_weights()]
    weights[-1] = np.log(np.float32([1, 1, 2, 1, 4, 1]))  # the head's bias: p = [1, 1, 2, 1, 4, 1] / 10
    model.set_weights(weights)
    # Targets: "ab" -> a b <eos>; "aaaab" -> a a a a b <eos>. One batch, so "ab" is padded by three.
    data = make_dataset(["ab", "aaaab"], vocab, batch_size=8, seq_len=32)
    assert len(list(data)) == 1
    bits = 5 * -math.log2(0.4) + 2 * -math.log2(0.1) + 2 * -math.log2(0.2)
    assert model.evaluate(data, verbose=0, return_dict=True)["bpc"] == pytest.approx(bits / 9, rel=1e-5)


@pytest.fixture(scope="module")
def both_run(small_csv, tmp_path_factory):
    """Titles and descriptions, one epoch: validation must still be on the held-out titles."""
    out = tmp_path_factory.mktemp("both") / "run"
    train(TrainConfig(data=str(small_csv), field="both", units=8, embedding_dim=4, epochs=1, batch_size=64), out,
          verbose=0, log=lambda _: None)
    return out


def test_validation_bits_per_character_are_those_of_the_held_out_titles(both_run, small_csv):
    """The history's figure, recomputed by hand: one title at a time (no padding), in bits, on titles alone."""
    titles = [r.title for r in read_csv(small_csv) if in_validation(r.title, 0.1)]
    assert titles and max(map(len, titles)) < 256  # one chunk each at the default --seq-len
    vocab = Vocab.load(both_run / "vocab.json")
    model = keras.saving.load_model(both_run / "last.keras", compile=False)
    total = count = 0
    for title in titles:
        ids = np.array([BOS, *vocab.encode(title), EOS])
        logits = np.asarray(model(ids[None, :-1].astype(np.int32), training=False), np.float64)[0]
        log_p = logits - logits.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        total -= log_p[np.arange(len(ids) - 1), ids[1:]].sum() / math.log(2)
        count += len(ids) - 1
    assert read_history(both_run)[-1]["val_bpc"] == pytest.approx(total / count, rel=1e-4)


def test_best_keras_is_the_best_epoch_and_last_keras_the_last(tmp_path):
    model = build_model(TrainConfig(units=4, embedding_dim=2, dropout=0), vocab_size=6)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = RunCheckpoint(run, run, [], chars_per_epoch=100, lr=0.01)
    checkpoint.set_model(model)
    for epoch, val_bpc in enumerate([3.0, 2.0, 2.5]):
        model.set_weights([np.full_like(w, epoch + 1) for w in model.get_weights()])  # epoch N's weights are N
        checkpoint.on_epoch_begin(epoch)
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "bpc": 1.5, "val_loss": 1.0, "val_bpc": val_bpc})

    def epoch_of(name: str) -> set[float]:
        return {float(w.flat[0]) for w in keras.saving.load_model(run / name).get_weights() if w.size}

    assert epoch_of("best.keras") == {2.0} and epoch_of("last.keras") == {3.0}
    assert [row["val_bpc"] for row in read_history(run)] == [3.0, 2.0, 2.5]


def test_export_onnx_checkpoint_last_exports_last(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model*"))
    last = keras.saving.load_model(run / "last.keras")
    last.set_weights([w * 0.5 if w.ndim else w for w in last.get_weights()])  # last now differs from best
    last.save(run / "last.keras")
    best = keras.saving.load_model(run / "best.keras", compile=False)
    result = run_cli("export-onnx", run, "--checkpoint", "last", "--out", tmp_path / "last.onnx")
    assert result.returncode == 0, result.stderr
    step = OnnxStep(tmp_path / "last.onnx", device="cpu")
    logits, _ = step(np.array([BOS]), step.initial_state(1))
    assert np.allclose(logits, np.asarray(last(np.array([[BOS]], np.int32)))[:, 0], atol=1e-4)
    assert not np.allclose(logits, np.asarray(best(np.array([[BOS]], np.int32)))[:, 0], atol=1e-2)


@pytest.mark.parametrize("dropout, layers", [(0.0, 1), (0.3, 2)])
def test_dropout_reaches_the_model(dropout, layers):
    model = build_model(TrainConfig(units=4, embedding_dim=2, layers=layers, dropout=dropout), vocab_size=6)
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == ([dropout] * layers if dropout else [])
