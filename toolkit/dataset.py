"""The training input pipeline, in tf.data alone: no py_function and no Python per example."""

from __future__ import annotations

import tensorflow as tf

from toolkit.vocab import BOS, BREAK, EOS, PAD, SPECIALS, UNK, Vocab


def make_dataset(texts: list[str], vocab: Vocab, *, batch_size: int, seq_len: int,
                 shuffle_seed: int | None = None, labels: list[int] | None = None, no_class: int = 0,
                 label_dropout: float = 0.0) -> tf.data.Dataset:
    """(inputs, targets) batches of `<bos> text <eos>` ids, padded with 0 and grouped by length.

    A text led by BREAK starts with <eos> instead of <bos> (see `toolkit.data.texts_of`).
    Texts longer than `seq_len` are cut into chunks of `seq_len` inputs; the targets are the inputs shifted
    by one. Encoding runs once (cached); shuffling and bucketing run every epoch.

    With `labels` (each text's class), the inputs are (ids, class): every chunk of a text has the text's class, a
    label of -1 (a class training never saw) or a share `label_dropout` of the chunks, drawn anew each epoch from
    `shuffle_seed`, becomes `no_class`.
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

    def chunks(ids: tf.Tensor, label=None) -> tf.data.Dataset:
        inputs, targets = ids[:-1], ids[1:]
        starts = tf.range((tf.size(inputs) - 1) // seq_len + 1) * seq_len
        if label is None:
            return tf.data.Dataset.from_tensor_slices(starts).map(
                lambda s: (inputs[s:s + seq_len], targets[s:s + seq_len]))
        return tf.data.Dataset.from_tensor_slices(starts).map(
            lambda s: ((inputs[s:s + seq_len], label), targets[s:s + seq_len]))

    if labels is None:
        ds = (tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string))
              .map(encode, num_parallel_calls=tf.data.AUTOTUNE)
              .flat_map(chunks))
    else:
        known = tf.constant([no_class if label < 0 else label for label in labels], tf.int32)
        ds = (tf.data.Dataset.from_tensor_slices((tf.constant(texts, tf.string), known))
              .map(lambda text, label: (encode(text), label), num_parallel_calls=tf.data.AUTOTUNE)
              .flat_map(chunks))
    ds = ds.cache()
    if labels is not None and label_dropout:
        draws = tf.random.Generator.from_seed(shuffle_seed or 0)  # a new draw each epoch, the same each run

        def drop(inputs, targets):
            ids, label = inputs
            hidden = draws.uniform([]) < label_dropout
            return (ids, tf.where(hidden, tf.constant(no_class, tf.int32), label)), targets

        ds = ds.map(drop)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(texts), seed=shuffle_seed, reshuffle_each_iteration=True)
    boundaries = list(range(16, seq_len + 1, 16))
    length = (lambda x, _y: tf.shape(x)[0]) if labels is None else (lambda x, _y: tf.shape(x[0])[0])
    padding = (PAD, PAD) if labels is None else ((PAD, no_class), PAD)
    ds = ds.bucket_by_sequence_length(length, boundaries, [batch_size] * (len(boundaries) + 1),
                                      padding_values=padding)
    # The batch count is the same whatever the shuffle; Keras wants it up front.
    batches = ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    return ds.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(tf.data.AUTOTUNE)
