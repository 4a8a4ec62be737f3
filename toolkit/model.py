"""The Keras model (ids -> embedding or one-hot -> stacked LSTM/GRU -> logits) and its bits-per-character metric.

The recurrent layers are Keras' own LSTM and GRU (same weights, same checkpoints, cuDNN on a GPU), except that on
a CPU they train through a lean loop with a hand-written backward pass (`lstm_sequence`, `gru_sequence`):
TensorFlow's generic loop spends most of a step on small ops, and on two cores it splits each of them across both.
Here the input projection is one matmul over all timesteps, the loop does one matmul and a few elementwise ops a
step, the recurrent weights' gradient is one matmul after the loop, and the batch runs as independent chains, one
per core, each single-threaded (see docs/benchmarks.md).
"""

from __future__ import annotations

import math
import os

# One thread per op, and as many ops side by side as there are cores: the chains below run in parallel. Read by
# TensorFlow when it starts its runtime, so it applies unless TensorFlow has already run something.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(os.cpu_count() or 1))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src import backend as keras_backend  # noqa: E402  (Keras' cuDNN path, kept for GPUs)

from toolkit.config import TrainConfig  # noqa: E402
from toolkit.sampling.tensors import select_rows  # noqa: E402
from toolkit.vocab import PAD  # noqa: E402

LSTM_ORDER = (0, 1, 3, 2)  # Keras' gates i, f, c, o as i, f, o, c: the three sigmoid gates first


def _columns(matrix: tf.Tensor) -> tf.Tensor:
    """[T, rows, B] -> [rows, T * B]: the timesteps side by side, for one matmul over all of them."""
    return tf.reshape(tf.transpose(matrix, [1, 0, 2]), [tf.shape(matrix)[1], -1])


def _project(x: tf.Tensor, weights: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """x [B, T, E] @ weights [G, E] + bias [G, 1] for all timesteps at once -> [T, G, B]."""
    steps, batch = tf.shape(x)[1], tf.shape(x)[0]
    flat = tf.matmul(weights, tf.reshape(tf.transpose(x, [2, 1, 0]), [x.shape[-1], -1])) + bias
    return tf.transpose(tf.reshape(flat, [weights.shape[0], steps, batch]), [1, 0, 2])


def _lstm_loop(xw: tf.Tensor, ut: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor):
    """The LSTM recurrence on transposed state: h, c [U, B]; xw [T, 4U, B] (input projection and bias), ut [4U, U].

    Gates are row blocks i, f, o, c, so each is a free slice. The c rows come doubled (tanh(x) = 2 sigmoid(2x) - 1),
    so one Sigmoid a step serves all four gates. Returns H [T, U, B] and the last c.
    """
    u = ut.shape[1]

    @tf.custom_gradient
    def run(xw, ut, h0, c0):
        steps = tf.shape(xw)[0]

        def step(t, h, c, hs, cs, gates):
            s = tf.sigmoid(xw[t] + tf.matmul(ut, h))
            c = s[u:2 * u] * c + s[:u] * (2 * s[3 * u:] - 1)
            h = s[2 * u:3 * u] * tf.tanh(c)
            return t + 1, h, c, hs.write(t, h), cs.write(t, c), gates.write(t, s)

        arrays = [tf.TensorArray(xw.dtype, size=steps) for _ in range(3)]
        _, _, c_last, hs, cs, gates = tf.while_loop(lambda t, *_: t < steps, step, (0, h0, c0, *arrays))
        h_all, c_all, s_all = hs.stack(), cs.stack(), gates.stack()

        def grad(d_h_all, d_c_last):
            c_prev = tf.concat([c0[None], c_all[:-1]], 0)

            def back(t, dh, dc, dzs):
                t -= 1
                s, tc = s_all[t], tf.tanh(c_all[t])
                dh += d_h_all[t]
                dc += dh * s[2 * u:3 * u] * (1 - tc * tc)
                # Each gate's output gradient times sigmoid' = s (1 - s); the doubled c row's is 2 s (1 - s).
                dz = tf.concat([dc * (2 * s[3 * u:] - 1), dc * c_prev[t], dh * tc, 2 * dc * s[:u]], 0) * s * (1 - s)
                return t, tf.matmul(ut, dz, transpose_a=True), dc * s[u:2 * u], dzs.write(t, dz)

            dc_last = tf.zeros_like(c0) if d_c_last is None else d_c_last
            _, dh0, dc0, dzs = tf.while_loop(lambda t, *_: t > 0, back, (
                steps, tf.zeros_like(h0), dc_last, tf.TensorArray(xw.dtype, size=steps)))
            dz_all = dzs.stack()
            h_prev = tf.concat([h0[None], h_all[:-1]], 0)
            return dz_all, tf.matmul(_columns(dz_all), _columns(h_prev), transpose_b=True), dh0, dc0

        return (h_all, c_last), grad

    return run(xw, ut, h0, c0)


def _gru_loop(xw: tf.Tensor, ut: tf.Tensor, rb: tf.Tensor, h0: tf.Tensor):
    """The GRU recurrence (reset_after, as cuDNN) on transposed state h [U, B]: xw [T, 3U, B] (input projection and
    input bias, gates z, r, h), ut [3U, U], rb [3U, 1] the recurrent bias. Returns H [T, U, B]."""
    u = ut.shape[1]

    @tf.custom_gradient
    def run(xw, ut, rb, h0):
        steps = tf.shape(xw)[0]

        def step(t, h, hs, gates, cands, recs):
            rec = tf.matmul(ut, h) + rb
            zr = tf.sigmoid(xw[t][:2 * u] + rec[:2 * u])
            cand = tf.tanh(xw[t][2 * u:] + zr[u:] * rec[2 * u:])
            h = cand + zr[:u] * (h - cand)
            return t + 1, h, hs.write(t, h), gates.write(t, zr), cands.write(t, cand), recs.write(t, rec[2 * u:])

        arrays = [tf.TensorArray(xw.dtype, size=steps) for _ in range(4)]
        _, _, hs, gates, cands, recs = tf.while_loop(lambda t, *_: t < steps, step, (0, h0, *arrays))
        h_all, zr_all, cand_all, rec_all = hs.stack(), gates.stack(), cands.stack(), recs.stack()

        def grad(d_h_all):
            h_prev = tf.concat([h0[None], h_all[:-1]], 0)

            def back(t, dh, drecs, dcands):
                t -= 1
                zr, cand = zr_all[t], cand_all[t]
                dh += d_h_all[t]
                dcand = dh * (1 - zr[:u]) * (1 - cand * cand)  # through tanh, to the candidate's pre-activation
                dzr = tf.concat([dh * (h_prev[t] - cand), dcand * rec_all[t]], 0) * zr * (1 - zr)
                drec = tf.concat([dzr, dcand * zr[u:]], 0)
                dh = dh * zr[:u] + tf.matmul(ut, drec, transpose_a=True)
                return t, dh, drecs.write(t, drec), dcands.write(t, dcand)

            _, dh0, drecs, dcands = tf.while_loop(lambda t, *_: t > 0, back, (
                steps, tf.zeros_like(h0), *(tf.TensorArray(xw.dtype, size=steps) for _ in range(2))))
            drec_all = drecs.stack()
            dxw = tf.concat([drec_all[:, :2 * u], dcands.stack()], 1)
            dut = tf.matmul(_columns(drec_all), _columns(h_prev), transpose_b=True)
            return dxw, dut, tf.reduce_sum(drec_all, [0, 2])[:, None], dh0

        return h_all, grad

    return run(xw, ut, rb, h0)


def lstm_sequence(x, kernel, recurrent, bias, h0, c0):
    """Keras' LSTM (its weight layout, return_sequences) through the lean loop: outputs [B, T, U] and [h, c]."""
    u = recurrent.shape[0]
    scale = tf.constant([1.0, 1.0, 1.0, 2.0])[:, None, None]

    def rows(w):  # [n, 4U] Keras layout -> [4U, n], gates i, f, o, c, the c rows doubled
        return tf.reshape(tf.gather(tf.reshape(tf.transpose(w), [4, u, -1]), LSTM_ORDER) * scale, [4 * u, -1])

    h_all, c_last = _lstm_loop(_project(x, rows(kernel), rows(bias[None])), rows(recurrent), tf.transpose(h0),
                               tf.transpose(c0))
    outputs = tf.transpose(h_all, [2, 0, 1])
    return outputs, [outputs[:, -1], tf.transpose(c_last)]


def gru_sequence(x, kernel, recurrent, bias, h0):
    """Keras' GRU (reset_after, its weight layout, return_sequences) through the lean loop: outputs and [h]."""
    h_all = _gru_loop(_project(x, tf.transpose(kernel), bias[0][:, None]), tf.transpose(recurrent), bias[1][:, None],
                      tf.transpose(h0))
    outputs = tf.transpose(h_all, [2, 0, 1])
    return outputs, [outputs[:, -1]]


def _chains() -> int:
    """Independent slices of a batch, one per inter-op thread (each chain runs single-threaded)."""
    return int(os.environ.get("TF_NUM_INTEROP_THREADS") or 0) or os.cpu_count() or 1  # 0: TensorFlow's default


class _Lean:
    """What the LSTM and GRU below add to Keras' layers: weight drop on the recurrent matrix (DropConnect, one mask
    a batch) and, where Keras has no fused kernel (no GPU), the lean loop in chains."""

    def __init__(self, units: int, weight_drop: float = 0.0, **kwargs):  # pragma: no mutate block (Keras inspects it)
        super().__init__(units, **kwargs)
        self.weight_drop = weight_drop
        self.weight_seed = keras.random.SeedGenerator(kwargs.get("seed"))

    def get_config(self) -> dict:
        return {**super().get_config(), "weight_drop": self.weight_drop}

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if mask is not None or self.go_backwards or self.unroll or self.dropout or self.recurrent_dropout:
            return super().inner_loop(sequences, initial_state, mask, training=training)
        recurrent = self.cell.recurrent_kernel
        if training and self.weight_drop:
            recurrent = keras.random.dropout(recurrent, self.weight_drop, seed=self.weight_seed)
        cell = self.cell
        try:  # cuDNN, on a GPU
            outputs = self.fused(sequences, initial_state, recurrent, activation=cell.activation,
                                 recurrent_activation=cell.recurrent_activation, return_sequences=True)
            self.supports_jit = False  # as Keras: cuDNN ops do not compile with XLA
            return outputs
        except NotImplementedError:
            pass
        batch, n = tf.shape(sequences)[0], _chains()
        sizes = [(batch * (i + 1)) // n - (batch * i) // n for i in range(n)]
        parts = zip(tf.split(sequences, sizes), *(tf.split(s, sizes) for s in initial_state), strict=True)
        results = [self.sequence(x, cell.kernel, recurrent, cell.bias, *state) for x, *state in parts]
        outputs = tf.concat([r[0] for r in results], 0)
        states = [tf.concat(s, 0) for s in zip(*(r[1] for r in results), strict=True)]
        return outputs[:, -1], outputs, states


@keras.saving.register_keras_serializable(package="charlm")
class LSTM(_Lean, keras.layers.LSTM):
    sequence = staticmethod(lstm_sequence)

    def fused(self, x, state, recurrent, **kwargs):
        return keras_backend.lstm(x, state[0], state[1], None, kernel=self.cell.kernel, recurrent_kernel=recurrent,
                                  bias=self.cell.bias, **kwargs)


@keras.saving.register_keras_serializable(package="charlm")
class GRU(_Lean, keras.layers.GRU):
    sequence = staticmethod(gru_sequence)

    def fused(self, x, state, recurrent, **kwargs):
        return keras_backend.gru(x, state[0], None, kernel=self.cell.kernel, recurrent_kernel=recurrent,
                                 bias=self.cell.bias, reset_after=True, **kwargs)


RNN_LAYERS = {"lstm": LSTM, "gru": GRU}


@keras.saving.register_keras_serializable(package="charlm")
class ClassSteps(keras.layers.Layer):
    """A sequence's class vector [batch, dim] repeated at each of the steps of `like` [batch, steps, ...]."""

    def call(self, inputs):
        vector, like = inputs
        return tf.repeat(vector[:, None, :], tf.shape(like)[1], axis=1)


@keras.saving.register_keras_serializable(package="charlm")
class TiedEmbedding(keras.layers.Layer):
    """The input embedding that also makes the logits (weight tying): a character's input vector is its output
    vector. Called on ids it embeds them; called with `logits=True` on the last layer's outputs [.., units] it
    gives (outputs @ projection) @ embeddings^T + bias, the projection taking units to the embedding size."""

    def __init__(self, vocab_size: int, dim: int, units: int, **kwargs):  # pragma: no mutate block (Keras inspects it)
        super().__init__(**kwargs)
        self.vocab_size, self.dim, self.units = vocab_size, dim, units

    def build(self, input_shape=None) -> None:
        self.embeddings = self.add_weight(shape=(self.vocab_size, self.dim), initializer="uniform", name="embeddings")
        self.projection = self.add_weight(shape=(self.units, self.dim), initializer="glorot_uniform",
                                          name="projection")
        self.bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros", name="bias")

    def call(self, inputs, logits: bool = False):
        if not logits:
            return tf.gather(self.embeddings, tf.cast(inputs, tf.int32))
        return tf.matmul(tf.matmul(inputs, self.projection), self.embeddings, transpose_b=True) + self.bias

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The logits as one Dense layer would hold them: kernel [units, vocab], bias [vocab]."""
        return np.asarray(self.projection) @ np.asarray(self.embeddings).T, np.asarray(self.bias)

    def get_config(self) -> dict:
        return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim, "units": self.units}


@keras.saving.register_keras_serializable(package="charlm")
class BitsPerChar(keras.metrics.Metric):
    """Cross-entropy in bits summed over every predicted character (padding excluded) / their count.

    Keras averages per-batch means; this counts each character once, so it is the exact figure that
    compressors report.
    """

    def __init__(self, name: str = "bpc", **kwargs):  # pragma: no mutate block (Keras inspects it)
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


CLASS_DIM = 16  # the size of a class's vector


def build_model(config: TrainConfig, vocab_size: int, steps_per_epoch: int = 1, classes: int = 0) -> keras.Model:
    """The model `train` fits. `embedding_dim=0` gives the notebook's one-hot input (a frozen identity table).

    Padding is masked in the loss, not in the RNN: with right padding no real position ever sees a pad.
    The learning rate decays along a cosine to a tenth of `lr` over `epochs * steps_per_epoch` steps.

    With `config.condition == "class"` the model also takes each sequence's class ([batch] int32, `classes` the
    "no class" id): a learned vector per class, either joined to every step's input of the first layer (`input`:
    what it adds to the gates is a [classes + 1, gates * units] table, exported as one Gather) or turned into
    every layer's initial state (`state`).
    """
    keras.utils.set_random_seed(config.seed)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    label = keras.Input(shape=(), dtype="int32", name="class") if config.condition == "class" else None
    condition = keras.layers.Embedding(classes + 1, CLASS_DIM, name="class_embedding")(label) if label is not None \
        else None
    tied = TiedEmbedding(vocab_size, config.embedding_dim, config.units, name="embedding") if config.tie else None
    if tied:
        x = tied(tokens)
    elif config.embedding_dim:
        x = keras.layers.Embedding(vocab_size, config.embedding_dim, name="embedding")(tokens)
    else:
        x = keras.layers.Embedding(vocab_size, vocab_size, embeddings_initializer="identity",
                                   trainable=False, name="one_hot")(tokens)
    if condition is not None and config.condition_via == "input":
        x = keras.layers.Concatenate(name="with_class")([x, ClassSteps(name="class_steps")([condition, x])])
    for i in range(config.layers):
        initial = None
        if condition is not None and config.condition_via == "state":
            kinds = 2 if config.cell == "lstm" else 1
            initial = [keras.layers.Dense(config.units, activation="tanh", name=f"initial_{i}_{k}")(condition)
                       for k in range(kinds)]
        x = RNN_LAYERS[config.cell](config.units, return_sequences=True, weight_drop=config.weight_drop,
                                    name=f"rnn_{i}")(x, initial_state=initial)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    logits = tied(x, logits=True) if tied else keras.layers.Dense(vocab_size, name="logits")(x)
    model = keras.Model(tokens if label is None else [tokens, label], logits, name=f"charlm_{config.cell}")
    model.compile(optimizer=keras.optimizers.Adam(lr_schedule(config, steps_per_epoch), clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD),
                  metrics=[BitsPerChar()])
    return model


def rnn_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The recurrent layers, ours or Keras' own (runs trained before the lean loop)."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM | keras.layers.GRU)]


class KerasStep:
    """One step of a Keras model with the state carried: the same interface as the ONNX step.

    Used for samples during training and as the TensorFlow baseline of the benchmarks. A class-conditional model's
    state ends with the rows' classes ([1, rows] int64, the "no class" id unless `initial_state` is given them).
    """

    def __init__(self, model: keras.Model):
        names = {layer.name for layer in model.layers}
        self.embedding = model.get_layer("embedding" if "embedding" in names else "one_hot")
        self.cells = [layer.cell for layer in rnn_layers(model)]
        tied = isinstance(self.embedding, TiedEmbedding)
        self.head = (lambda x: self.embedding(x, logits=True)) if tied else model.get_layer("logits")
        self.lstm = isinstance(self.cells[0], keras.layers.LSTMCell)
        self.layers, self.units = len(self.cells), self.cells[0].units
        self.classes = model.get_layer("class_embedding") if "class_embedding" in names else None
        self.via_input = "with_class" in names
        self.initial = [[model.get_layer(f"initial_{i}_{k}") for k in range(2 if self.lstm else 1)]
                        for i in range(self.layers)] if self.classes is not None and not self.via_input else None
        self._step = tf.function(self._call, reduce_retracing=True)

    @property
    def no_class(self) -> int | None:
        return None if self.classes is None else self.classes.input_dim - 1

    def initial_state(self, batch: int, classes: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        zeros = np.zeros((self.layers, batch, self.units), np.float32)
        state = (zeros, zeros.copy()) if self.lstm else (zeros,)
        if self.classes is None:
            return state
        label = np.full(batch, self.no_class, np.int64) if classes is None else np.asarray(classes, np.int64)
        if self.initial is not None:  # the class gives every layer's initial state
            vector = self.classes(tf.constant(label, tf.int32))
            state = tuple(np.stack([np.asarray(self.initial[i][k](vector)) for i in range(self.layers)])
                          for k in range(len(state)))
        return (*state, label[None, :])

    def _call(self, tokens: tf.Tensor, state: tuple[tf.Tensor, ...]):
        label = None
        if self.classes is not None:
            *state, label = state
        x = self.embedding(tokens)
        if label is not None and self.via_input:
            x = tf.concat([x, self.classes(tf.cast(label[0], tf.int32))], axis=-1)
        new = [[] for _ in state]
        for i, cell in enumerate(self.cells):
            # A list in, a list out, for both cells (a GRU cell given a bare tensor returns a bare tensor).
            x, layer_state = cell(x, [s[i] for s in state], training=False)
            for kind, s in zip(new, layer_state, strict=True):
                kind.append(s)
        stacked = tuple(tf.stack(s) for s in new)
        return self.head(x), stacked if label is None else (*stacked, label)

    def __call__(self, tokens: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple]:
        logits, state = self._step(tf.constant(tokens, tf.int32), tuple(tf.constant(s) for s in state))
        return logits.numpy(), tuple(s.numpy() for s in state)

    select = staticmethod(select_rows)


def load_checkpoint(path: str | os.PathLike, checkpoint: str = "best", compile: bool = False) -> keras.Model:
    """The one call that opens a run's Keras model: `path` is a run directory (its best.keras, or last.keras with
    `checkpoint="last"`) or a .keras file. `keras.saving.load_model` alone cannot: the checkpoint holds this
    module's layers (charlm>LSTM, ...), which Keras finds only once this module is imported. `compile=True` restores
    the optimizer too, to train on."""
    from pathlib import Path

    from toolkit.files import UsageError
    from toolkit.rundir import CHECKPOINTS

    path = Path(path)
    file = path / CHECKPOINTS[checkpoint] if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{file} does not exist; pass a run directory made by `cli.py train` or its .keras file")
    try:
        return keras.saving.load_model(file, compile=compile)
    except Exception as e:  # missing, truncated or foreign files: Keras raises many types
        raise UsageError(f"cannot load {file} ({str(e).splitlines()[0][:160]}); the run is incomplete or "
                         "corrupt") from None
