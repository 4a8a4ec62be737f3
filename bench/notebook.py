"""The tutorial notebook's pipeline, model and sampler, re-created faithfully as the benchmarks' baselines.

Keras 3 dropped `keras.preprocessing.text.Tokenizer`; a dict does its `char_level=True` job (code-point order
instead of frequency order, which changes nothing about speed). Everything else is as the notebook has it: Python
per batch in `py_function` (its outputs given the rank Keras 3 requires), `pad_sequences` (left padding), one-hot
inputs and targets, `Masking`, softmax outputs with categorical cross-entropy, batch size 8, and a generator that
re-runs the whole prefix through the model for every character at batch size 1.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class CharTokenizer:
    def __init__(self, titles: list[str]):
        self.word_index = {ch: i for i, ch in enumerate(sorted(set("".join(titles))), start=1)}
        self.eos = len(self.word_index) + 1
        self.vocab_size = self.eos + 1
        self.reverse = {i: ch for ch, i in self.word_index.items()}

    def texts_to_sequences(self, texts: list[str]) -> list[list[int]]:
        return [[self.word_index[ch] for ch in t if ch in self.word_index] for t in texts]


def dataset(titles: list[str], tok: CharTokenizer, batch_size: int = 8) -> tf.data.Dataset:
    """The notebook's `ds_train.batch(8).map(title_batch_fn)`."""

    def title_batch(x):
        z = tok.texts_to_sequences([t.numpy().decode("utf-8") for t in x])
        z = keras.utils.pad_sequences(z)
        eos = tf.constant(tok.eos, shape=(len(z), 1))
        return tf.one_hot(z, tok.vocab_size), tf.one_hot(tf.concat([z[:, 1:], eos], axis=1), tok.vocab_size)

    def title_batch_fn(x):
        a, b = tf.py_function(title_batch, inp=[x], Tout=(tf.float32, tf.float32))
        a.set_shape([None, None, tok.vocab_size])  # Keras 3 needs the rank, which Keras 2 did not
        b.set_shape([None, None, tok.vocab_size])
        return a, b

    return tf.data.Dataset.from_tensor_slices(titles).batch(batch_size).map(title_batch_fn)


def model(vocab_size: int, units: int = 128) -> keras.Model:
    m = keras.models.Sequential([
        keras.Input((None, vocab_size)),
        keras.layers.Masking(),
        keras.layers.LSTM(units, return_sequences=True),
        keras.layers.Dense(vocab_size, activation="softmax"),
    ])
    m.compile(loss="categorical_crossentropy")
    return m


def generate_soft(logits_model: keras.Model, start_ids: list[int], eos: int, size: int = 100,
                  temperature: float = 1.0, rng: np.random.Generator | None = None) -> list[int]:
    """The notebook's `generate_soft`, on a model of ours (ids in, logits out): the whole prefix every step."""
    rng = rng or np.random.default_rng(0)
    chars = list(start_ids)
    for _ in range(size):
        logits = logits_model(np.array([chars], np.int32))[0][-1]
        out = tf.nn.softmax(logits)
        probs = tf.exp(tf.math.log(out) / temperature).numpy().astype(np.float64)
        probs = probs / np.sum(probs)
        nc = int(np.argmax(rng.multinomial(1, probs, 1)))
        if nc == eos:
            break
        chars.append(nc)
    return chars
