"""The lean recurrent layers: the same function and gradients as Keras' own layers, in any number of chains, and
weight drop that acts in training only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import toolkit.model
from toolkit.config import TrainConfig
from toolkit.files import UsageError
from toolkit.model import GRU, LSTM, build_model, rnn_layers

KERAS = {LSTM: keras.layers.LSTM, GRU: keras.layers.GRU}


def twins(layer_type, rng, units=6, inputs=5, ours=None, **kwargs):
    """Our layer and Keras' own with the same large random weights (saturating gates test every derivative)."""
    ours = layer_type(units, return_sequences=True, **(ours or {}), **kwargs)
    theirs = KERAS[layer_type](units, return_sequences=True, **kwargs)
    x = tf.constant(rng.normal(size=(3, 4, inputs)), tf.float32)
    ours(x), theirs(x)
    weights = [rng.normal(0, 0.8, w.shape).astype(np.float32) for w in theirs.get_weights()]
    ours.set_weights(weights), theirs.set_weights(weights)
    return ours, theirs


def loss_and_gradients(layer, x, head, training=True):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(layer(x, training=training) @ head))  # every output and timestep counts
    return loss, tape.gradient(loss, [x, *layer.trainable_weights])


@pytest.mark.parametrize("layer_type", [LSTM, GRU])
@pytest.mark.parametrize("batch, chains", [(7, 1), (7, 2), (7, 3), (1, 2)])  # uneven chains, an empty chain
def test_the_lean_loop_matches_keras_in_value_and_gradient(layer_type, batch, chains, monkeypatch):
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", str(chains))
    rng = np.random.default_rng(batch + chains)
    ours, theirs = twins(layer_type, rng)
    x = tf.constant(rng.normal(size=(batch, 9, 5)), tf.float32)
    head = tf.constant(rng.normal(size=(6, 3)), tf.float32)
    for run in (loss_and_gradients, tf.function(loss_and_gradients)):  # eager, and traced as in training
        (ours_loss, ours_grads), (keras_loss, keras_grads) = run(ours, x, head), run(theirs, x, head)
        assert abs(float(ours_loss - keras_loss)) < 1e-4
        for mine, reference in zip(ours_grads, keras_grads, strict=True):
            np.testing.assert_allclose(mine, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layer_type", [LSTM, GRU])
def test_the_last_state_is_the_state_after_the_last_step(layer_type):
    ours, theirs = twins(layer_type, np.random.default_rng(3), return_state=True)
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 5, 5)), tf.float32)
    for mine, reference in zip(ours(x, training=True), theirs(x, training=True), strict=True):
        np.testing.assert_allclose(mine, reference, atol=1e-5)


@pytest.mark.parametrize("layer_type", [LSTM, GRU])
def test_weight_drop_acts_in_training_only(layer_type):
    rng = np.random.default_rng(5)
    ours, theirs = twins(layer_type, rng, ours={"weight_drop": 0.5, "seed": 1})
    x = tf.constant(rng.normal(size=(2, 6, 5)), tf.float32)
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-5)  # inference: the whole matrix
    first, second = ours(x, training=True), ours(x, training=True)
    assert not np.allclose(first, theirs(x, training=True), atol=1e-3)  # training: a dropped matrix...
    assert not np.allclose(first, second, atol=1e-3)  # ... drawn anew each batch
    assert np.allclose(first[:, 0], theirs(x)[:, 0], atol=1e-5)  # the first step has no recurrence to drop


def test_weight_drop_reaches_every_layer_and_survives_a_checkpoint(tmp_path):
    model = build_model(TrainConfig(units=8, embedding_dim=4, layers=2, weight_drop=0.25), vocab_size=10)
    assert [layer.weight_drop for layer in rnn_layers(model)] == [0.25, 0.25]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert [layer.weight_drop for layer in rnn_layers(loaded)] == [0.25, 0.25]
    assert all(isinstance(layer, LSTM) for layer in rnn_layers(loaded))


def test_without_a_gpu_training_takes_the_lean_loop(monkeypatch):
    """Keras' fused (cuDNN) path is asked first and declines on a CPU; the lean loop then runs."""
    calls = []
    lean = toolkit.model.lstm_sequence
    monkeypatch.setattr(LSTM, "sequence", staticmethod(lambda *a: calls.append(1) or lean(*a)))
    LSTM(4, return_sequences=True)(tf.zeros((2, 3, 2)), training=True)
    assert calls


@pytest.mark.parametrize("layer_type, fused", [(LSTM, "lstm"), (GRU, "gru")])
def test_on_a_gpu_keras_fused_kernel_gets_the_weight_dropped_matrix(layer_type, fused, monkeypatch):
    """Where Keras has cuDNN (its backend's lstm/gru do not decline), that path runs, given the dropped recurrent
    matrix in training and the whole one at inference; the GRU asks for cuDNN's variant (reset_after)."""
    seen = []

    def cudnn(x, *args, **kwargs):
        seen.append((args, kwargs))
        outputs = tf.zeros((x.shape[0], x.shape[1], 4))
        return outputs[:, -1], outputs, [outputs[:, -1]] * (2 if fused == "lstm" else 1)

    monkeypatch.setattr(toolkit.model.keras_backend, fused, cudnn)
    layer = layer_type(4, return_sequences=True, weight_drop=0.5)
    x = tf.ones((2, 3, 2))
    layer(x), layer(x, training=True)
    recurrent = [kwargs["recurrent_kernel"] for _, kwargs in seen]
    assert np.array_equal(recurrent[0], layer.cell.recurrent_kernel)
    assert not np.array_equal(recurrent[1], layer.cell.recurrent_kernel)
    assert all(kwargs.get("reset_after", fused == "lstm") for _, kwargs in seen)


def test_tying_shares_the_embedding_and_needs_one():
    model = build_model(TrainConfig(units=8, embedding_dim=4, tie=True), vocab_size=10)
    names = [layer.name for layer in model.layers]
    assert "logits" not in names and names.count("embedding") == 1  # one layer both embeds and makes the logits
    tied = model.get_layer("embedding")
    assert [tuple(w.shape) for w in (tied.embeddings, tied.projection, tied.bias)] == [(10, 4), (8, 4), (10,)]
    assert not tied.bias.numpy().any()  # it starts where the untied head's Dense bias starts
    with pytest.raises(UsageError, match="^tie needs an embedding"):
        TrainConfig(tie=True, embedding_dim=0)


def test_the_loss_is_the_cross_entropy_of_the_logits_and_ignores_padding():
    """Training minimises -log softmax(logits)[target] averaged over real characters; padded targets count nothing."""
    model = build_model(TrainConfig(units=8, embedding_dim=4, dropout=0.0), vocab_size=10)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 10)).astype(np.float32)
    targets = rng.integers(4, 10, (2, 5))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_softmax, targets[..., None], -1).mean()
    assert float(model.loss(targets, logits)) == pytest.approx(expected, rel=1e-5)
    padded = targets.copy()
    padded[:, 3:] = 0  # PAD
    changed = logits.copy()
    changed[:, 3:] = rng.normal(0, 3, (2, 2, 10))
    assert float(model.loss(padded, logits)) == pytest.approx(float(model.loss(padded, changed)), rel=1e-6)


def test_the_notebook_model_is_expressible_with_flags():
    """One-hot input, LSTM(128), Dense: the notebook's 119,892 parameters at its vocabulary size of 84."""
    model = build_model(TrainConfig(embedding_dim=0, units=128, dropout=0), vocab_size=84)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 119_892


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 3)])
def test_cells_and_depths(cell, layers):
    model = build_model(TrainConfig(cell=cell, layers=layers, units=8, embedding_dim=4), vocab_size=10)
    assert [type(layer).__name__ for layer in rnn_layers(model)] == [cell.upper()] * layers
    assert model(np.ones((2, 5), np.int32)).shape == (2, 5, 10)  # logits for every position


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("tie", [False, True])
def test_the_keras_step_carries_state_to_the_models_own_logits(cell, tie):
    """Training's samples step the model one character at a time: each step must give what the whole sequence
    gives at that position, tied head included."""
    model = build_model(TrainConfig(cell=cell, layers=2, units=8, embedding_dim=8 if tie else 4, tie=tie,
                                    dropout=0), vocab_size=11)
    model.set_weights([np.random.default_rng(0).normal(0, 0.5, w.shape) for w in model.get_weights()])
    tokens = np.random.default_rng(1).integers(1, 11, size=(2, 5)).astype(np.int32)
    whole = model(tokens).numpy()
    step = toolkit.model.KerasStep(model)
    state = step.initial_state(2)
    for t in range(5):
        logits, state = step(tokens[:, t], state)
        np.testing.assert_allclose(logits, whole[:, t], atol=1e-5)
