"""The training input pipeline, in tf.data alone: no py_function and no Python per example."""

from __future__ import annotations

import tensorflow as tf

from toolkit.vocab import BOS, BREAK, EOS, PAD, SPECIALS, UNK, Vocab


def make_dataset(texts: list[str], vocab: Vocab, *, batch_size: int, seq_len: int,
                 shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(inputs, targets) batches of `<bos> text <eos>` ids, padded with 0 and grouped by length.

    A text led by BREAK starts with <eos> instead of <bos> (see `toolkit.data.texts_of`).
    Texts longer than `seq_len` are cut into chunks of `seq_len` inputs; the targets are the inputs shifted
    by one. Encoding runs once (cached); shuffling and bucketing run every epoch.
    """
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant([ord(ch) for ch in vocab.chars] + [ord(BREAK)], tf.int32),
            tf.constant([*range(len(SPECIALS), vocab.size), EOS], tf.int32)),
        default_value=UNK)

    def encode(text: tf.Tensor) -> tf.Tensor:
        ids = table.lookup(tf.strings.unicode_decode(text, "UTF-8"))
        led = tf.reduce_any(ids[:1] == EOS)  # [:1]: an empty title is a text too
        start = tf.cond(led, lambda: tf.zeros([0], tf.int32), lambda: tf.constant([BOS]))
        return tf.concat([start, ids, [EOS]], axis=0)

    def chunks(ids: tf.Tensor) -> tf.data.Dataset:
        inputs, targets = ids[:-1], ids[1:]
        starts = tf.range((tf.size(inputs) - 1) // seq_len + 1) * seq_len
        return tf.data.Dataset.from_tensor_slices(starts).map(
            lambda s: (inputs[s:s + seq_len], targets[s:s + seq_len]))

    ds = (tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string))
          .map(encode, num_parallel_calls=tf.data.AUTOTUNE)
          .flat_map(chunks)
          .cache())
    if shuffle_seed is not None:
        ds = ds.shuffle(len(texts), seed=shuffle_seed, reshuffle_each_iteration=True)
    boundaries = list(range(16, seq_len + 1, 16))
    ds = ds.bucket_by_sequence_length(
        lambda x, _y: tf.shape(x)[0], boundaries, [batch_size] * (len(boundaries) + 1),
        padding_values=(PAD, PAD))
    # The batch count is the same whatever the shuffle; Keras wants it up front.
    batches = ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    return ds.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(tf.data.AUTOTUNE)
