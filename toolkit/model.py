"""The Keras model (ids -> embedding or one-hot -> stacked LSTM/GRU -> logits) and its bits-per-character metric."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from toolkit.config import TrainConfig
from toolkit.vocab import PAD

RNN_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


@keras.saving.register_keras_serializable(package="charlm")
class BitsPerChar(keras.metrics.Metric):
    """Cross-entropy in bits summed over every predicted character (padding excluded) / their count.

    Keras averages per-batch means; this counts each character once, so it is the exact figure that
    compressors report.
    """

    def __init__(self, name: str = "bpc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(y_true, tf.cast(y_pred, tf.float32))
        mask = tf.cast(y_true != PAD, tf.float32)
        self.total.assign_add(tf.reduce_sum(nats * mask) / math.log(2))
        self.count.assign_add(tf.reduce_sum(mask))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)


def lr_schedule(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate at optimizer step s: a cosine from `lr` to a tenth of it over the configured epochs.

    A pure function of the step and the configured total, so a run resumed with more --epochs gets this
    schedule anew (`train` sets it on the loaded optimizer) and continues along the longer cosine.
    """
    return keras.optimizers.schedules.CosineDecay(config.lr, config.epochs * steps_per_epoch, alpha=0.1)


def build_model(config: TrainConfig, vocab_size: int, steps_per_epoch: int = 1) -> keras.Model:
    """The model `train` fits. `embedding_dim=0` gives the notebook's one-hot input (a frozen identity table).

    Padding is masked in the loss, not in the RNN: with right padding no real position ever sees a pad.
    The learning rate decays along a cosine to a tenth of `lr` over `epochs * steps_per_epoch` steps.
    """
    keras.utils.set_random_seed(config.seed)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    if config.embedding_dim:
        x = keras.layers.Embedding(vocab_size, config.embedding_dim, name="embedding")(tokens)
    else:
        x = keras.layers.Embedding(vocab_size, vocab_size, embeddings_initializer="identity",
                                   trainable=False, name="one_hot")(tokens)
    for i in range(config.layers):
        x = RNN_LAYERS[config.cell](config.units, return_sequences=True, name=f"rnn_{i}")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(vocab_size, name="logits")(x)
    model = keras.Model(tokens, logits, name=f"charlm_{config.cell}")
    model.compile(optimizer=keras.optimizers.Adam(lr_schedule(config, steps_per_epoch), clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD),
                  metrics=[BitsPerChar()])
    return model


def rnn_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, tuple(RNN_LAYERS.values()))]


class KerasStep:
    """One step of a Keras model with the state carried: the same interface as the ONNX step.

    Used for samples during training and as the TensorFlow baseline of the benchmarks.
    """

    def __init__(self, model: keras.Model):
        self.embedding = model.get_layer(index=1)
        self.cells = [layer.cell for layer in rnn_layers(model)]
        self.head = model.get_layer("logits")
        self.lstm = isinstance(self.cells[0], keras.layers.LSTMCell)
        self.layers, self.units = len(self.cells), self.cells[0].units
        self._step = tf.function(self._call, reduce_retracing=True)

    def initial_state(self, batch: int) -> tuple[np.ndarray, ...]:
        zeros = np.zeros((self.layers, batch, self.units), np.float32)
        return (zeros, zeros.copy()) if self.lstm else (zeros,)

    def _call(self, tokens: tf.Tensor, state: tuple[tf.Tensor, ...]):
        x = self.embedding(tokens)
        new = [[] for _ in state]
        for i, cell in enumerate(self.cells):
            # A list in, a list out, for both cells (a GRU cell given a bare tensor returns a bare tensor).
            x, layer_state = cell(x, [s[i] for s in state], training=False)
            for kind, s in zip(new, layer_state, strict=True):
                kind.append(s)
        return self.head(x), tuple(tf.stack(s) for s in new)

    def __call__(self, tokens: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple]:
        logits, state = self._step(tf.constant(tokens, tf.int32), tuple(tf.constant(s) for s in state))
        return logits.numpy(), tuple(s.numpy() for s in state)

    @staticmethod
    def select(state: tuple[np.ndarray, ...], rows: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(s[:, rows] for s in state)
