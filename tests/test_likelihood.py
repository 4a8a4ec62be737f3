"""Teacher-forced likelihood: batched and chunked, it equals a plain one-text loop and the model's own loss."""

import math

import numpy as np
import pytest
from helpers import CHARS, step_model

from toolkit.sampling.draw import log_softmax
from toolkit.sampling.likelihood import bits_per_character, log_likelihood
from toolkit.sampling.runtime import OnnxStep
from toolkit.vocab import BOS, EOS, Vocab

TOY_VOCAB = Vocab(CHARS)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return OnnxStep(step_model(tmp_path_factory.mktemp("m") / "m.onnx", seed=3), "cpu")


def one_at_a_time(step, vocab, text, finished=True):
    """The definition: feed <bos> and the text one id at a time, add log p(next id), then log p(<eos>)."""
    ids = vocab.encode(text)
    targets = ids + ([EOS] if finished else [])
    state, total, token = step.initial_state(1), 0.0, BOS
    for target in targets:
        logits, state = step(np.array([token]), state)
        logits = logits[0].astype(np.float64)
        total += logits[target] - math.log(np.exp(logits - logits.max()).sum()) - logits.max()
        token = target
    return total


def test_batched_scores_equal_one_text_at_a_time(toy):
    rng = np.random.default_rng(0)
    step = toy
    texts = ["".join(rng.choice(list("abcdefgh"), rng.integers(0, 30))) for _ in range(40)] + ["", "a", "z?"]
    finished = rng.random(len(texts)) < 0.7
    expected = [one_at_a_time(step, TOY_VOCAB, t, f) for t, f in zip(texts, finished, strict=True)]
    for batch_size in (1, 3, 64):  # chunks of one, of a few (rows dropped as they end), and all at once
        got = log_likelihood(step, TOY_VOCAB, texts, finished, batch_size=batch_size)
        assert got.dtype == np.float64 and got.shape == (len(texts),)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert log_likelihood(step, TOY_VOCAB, [""], [False])[0] == 0  # nothing to score
    # finished by default: every text is scored on its <eos> too
    np.testing.assert_allclose(log_likelihood(step, TOY_VOCAB, texts[:5]),
                               [one_at_a_time(step, TOY_VOCAB, t) for t in texts[:5]], rtol=1e-6)


def test_finished_must_match_the_texts(toy):
    with pytest.raises(ValueError, match="2 values for 1 texts"):
        log_likelihood(toy, TOY_VOCAB, ["ab"], [True, False])


def test_bits_per_character_of_the_validation_titles_equal_the_training_loss(tiny_run, tiny_onnx):
    """The exported best checkpoint scores the held-out titles exactly as Keras did in training (val_bpc)."""
    from toolkit.config import load_run_config
    from toolkit.data import load_corpus
    from toolkit.train import read_history

    config, _ = load_run_config(tiny_run)
    val = load_corpus(config.data, config.field, config.val_fraction, config.val_data).val
    step = OnnxStep(tiny_onnx, "cpu")
    nats = log_likelihood(step, step.spec.vocab, val, batch_size=50)
    bpc = -nats.sum() / math.log(2) / sum(len(t) + 1 for t in val)
    best = min(row["val_bpc"] for row in read_history(tiny_run))
    assert bpc == pytest.approx(best, rel=1e-4)


def test_bits_per_character_of_a_model_that_knows_nothing_are_log2_of_the_vocabulary(tmp_path):
    """All weights zero: every id, <eos> included, has probability 1 / vocabulary size at every step."""
    step = OnnxStep(step_model(tmp_path / "zero.onnx", scale=0.0), "cpu")
    assert bits_per_character(step, TOY_VOCAB, ["abc", "j", "", "hello there"]) == pytest.approx(
        math.log2(TOY_VOCAB.size), rel=1e-6)
    assert math.isnan(bits_per_character(step, TOY_VOCAB, []))


def test_log_softmax_normalises_each_row_on_its_own():
    rows = np.array([[0.0, 1.0, 2.0], [1000.0, 1001.0, 1002.0], [-1000.0, -999.0, -998.0]], np.float32)
    expected = np.array([0.0, 1.0, 2.0]) - math.log(1 + math.e + math.e**2)
    np.testing.assert_allclose(log_softmax(rows.astype(np.float64)), np.tile(expected, (3, 1)), rtol=1e-12)


def test_scores_keep_the_digits_of_float64(toy):
    """A title's ~50 log-probabilities are summed in float64, as the one-at-a-time definition sums them."""
    rng = np.random.default_rng(1)
    texts = ["".join(rng.choice(list("abcdefgh "), rng.integers(20, 60))) for _ in range(20)]
    expected = [one_at_a_time(toy, TOY_VOCAB, t) for t in texts]
    np.testing.assert_allclose(log_likelihood(toy, TOY_VOCAB, texts), expected, rtol=1e-10)


class CountingStep:
    """A step that counts its chunks (one initial state each) and the rows it runs, step by step."""

    def __init__(self, step):
        self.step, self.chunks, self.rows = step, 0, 0

    def initial_state(self, rows):
        self.chunks += 1
        return self.step.initial_state(rows)

    def __call__(self, tokens, state):
        self.rows += tokens.size
        return self.step(tokens, state)

    def select(self, state, rows):
        return self.step.select(state, rows)


def test_each_text_is_read_once_and_ended_texts_leave_the_batch(toy):
    """43 texts of very different lengths in chunks of 10: five chunks, and the model runs on about as many rows
    as there are characters to score (ended rows are dropped once an eighth of a chunk has ended)."""
    rng = np.random.default_rng(2)
    texts = ["".join(rng.choice(list("abc"), n)) for n in rng.integers(0, 80, 42)] + ["a" * 200]
    counting = CountingStep(toy)
    np.testing.assert_allclose(log_likelihood(counting, TOY_VOCAB, texts, batch_size=10),
                               log_likelihood(toy, TOY_VOCAB, texts), rtol=1e-9)
    scored = sum(len(t) + 1 for t in texts)
    assert counting.chunks == 5 and counting.rows <= 8 / 7 * scored + 10 * 5
