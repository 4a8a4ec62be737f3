import numpy as np
from helpers import decode

from toolkit.dataset import make_dataset
from toolkit.vocab import BOS, BREAK, EOS, PAD, Vocab

TEXTS = ["short", "a somewhat longer title here", "x", "", "Woods #39;s back, &lt;b&gt;", "mid length title"]


def batches(texts, **kw):
    vocab = Vocab.build(texts)
    return vocab, [(x.numpy(), y.numpy()) for x, y in make_dataset(texts, vocab, **kw)]


def test_each_text_is_bos_text_eos_shifted_by_one():
    vocab, out = batches(TEXTS, batch_size=2, seq_len=64)
    seen = []
    for x, y in out:
        assert x.shape == y.shape
        for xi, yi in zip(x, y, strict=True):
            n = int((yi != PAD).sum())
            assert xi[0] == BOS and yi[n - 1] == EOS and (xi[1:n] == yi[:n - 1]).all()
            assert (xi[n:] == PAD).all() and (yi[n:] == PAD).all()
            seen.append(decode(vocab, yi[:n]))
    assert sorted(seen) == sorted(TEXTS)


def test_long_texts_are_cut_into_chunks_that_predict_every_character_once():
    vocab, out = batches(TEXTS, batch_size=4, seq_len=8)
    targets = [t for _, y in out for row in y for t in row if t != PAD]
    assert len(targets) == sum(len(t) + 1 for t in TEXTS)  # every character and each <eos>, once
    assert max(x.shape[1] for x, _ in out) <= 8


def test_batches_group_similar_lengths():
    texts = [("w" * n) for n in range(1, 200)]
    _, out = batches(texts, batch_size=8, seq_len=256, shuffle_seed=0)
    padding = sum(int((y == PAD).sum()) for _, y in out)
    real = sum(len(t) + 1 for t in texts)
    assert padding < 0.15 * real  # sorted into buckets of 16 lengths, not padded to the longest


def test_shuffle_changes_order_between_epochs_but_not_content():
    vocab = Vocab.build(TEXTS * 20)
    ds = make_dataset([f"{t} {i}" for i, t in enumerate(TEXTS * 20)], vocab, batch_size=4, seq_len=64,
                      shuffle_seed=1)
    def epoch():
        batches = [x.numpy() for x, _ in ds]
        return batches, sorted(tuple(row[row != PAD]) for x in batches for row in x)

    (first, rows1), (second, rows2) = epoch(), epoch()
    assert len(first) == len(second) == ds.cardinality().numpy()
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True)) and rows1 == rows2


def test_a_description_continues_a_finished_title():
    vocab, out = batches([f"{BREAK}cd"], batch_size=1, seq_len=64)
    (x, y), = out
    assert BREAK not in vocab.chars
    assert x[0].tolist() == [EOS, *vocab.encode("cd")]  # <bos> only ever precedes a title
    assert y[0].tolist() == [*vocab.encode("cd"), EOS]


def test_predicted_characters_count_every_target_once():
    from toolkit.train import predicted_characters

    texts = ["Ab", f"{BREAK}cde", "x"]
    vocab, out = batches(texts, batch_size=4, seq_len=64)
    assert predicted_characters(texts) == sum(int((y != PAD).sum()) for _, y in out) == 3 + 4 + 2
