"""The logits processors and the batched loop, driven by a small numpy RNN (no TensorFlow needed)."""

import numpy as np
import pytest

from toolkit.sampling import (
    NEVER_SAMPLED,
    draw,
    generate,
    sample,
    softmax,
    temperature,
    top_k,
    top_p,
    uniforms,
)
from toolkit.vocab import BOS, EOS, PAD

VOCAB = 12


class ToyStep:
    """h' = tanh(E[token] + h U), logits = h' V: a recurrent step whose output depends on the whole past."""

    def __init__(self, seed: int = 0, eos_bias: float = 0.0, units: int = 16):
        rng = np.random.default_rng(seed)
        self.E = rng.normal(0, 1, (VOCAB, units)).astype(np.float32)
        self.U = rng.normal(0, 0.5, (units, units)).astype(np.float32)
        self.V = rng.normal(0, 2, (units, VOCAB)).astype(np.float32)
        self.bias = np.zeros(VOCAB, np.float32)
        self.bias[EOS] = eos_bias
        self.units = units

    def initial_state(self, rows):
        return (np.zeros((1, rows, self.units), np.float32),)

    def __call__(self, tokens, state):
        h = np.tanh(self.E[tokens] + state[0][0] @ self.U)
        return h @ self.V + self.bias, (h[None],)

    @staticmethod
    def select(state, rows):
        return tuple(s[:, rows] for s in state)


def random_logits(rows=64, seed=0):
    return np.random.default_rng(seed).normal(0, 3, (rows, VOCAB)).astype(np.float32)


def test_greedy_equals_argmax_of_the_allowed_ids():
    logits = random_logits()
    logits[:5, PAD] = 100  # a padding id that would win is never chosen
    ids = sample(logits, np.zeros(len(logits)), uniforms(0, np.arange(len(logits)), 0))
    allowed = logits.copy()
    allowed[:, NEVER_SAMPLED] = -np.inf
    assert (ids == allowed.argmax(axis=1)).all()


def test_top_k_never_leaves_the_k_best():
    logits = random_logits(rows=200)
    kept = top_k(logits, 3)
    best3 = np.argsort(-logits, axis=1)[:, :3]
    assert (np.isfinite(kept).sum(axis=1) == 3).all()
    for step in range(20):
        ids = draw(kept, uniforms(1, np.arange(200), step))
        assert all(i in row for i, row in zip(ids, best3, strict=True))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    assert np.isfinite(top_p(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert np.isfinite(top_p(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert np.isfinite(top_p(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert np.isfinite(top_p(logits, 1.0)).all()


def test_low_temperature_approaches_greedy():
    logits = random_logits(rows=500)
    greedy = sample(logits, np.zeros(500), uniforms(0, np.arange(500), 0))

    def agreement(temp):
        return np.mean([sample(logits, np.full(500, temp), uniforms(s, np.arange(500), 0)) == greedy
                        for s in range(10)], axis=0)

    by_temp = [agreement(t) for t in (5.0, 1.0, 0.3, 0.1, 0.01)]
    means = [a.mean() for a in by_temp]
    assert means == sorted(means) and means[0] < 0.6 and means[-1] > 0.98
    allowed = np.sort(np.delete(logits, NEVER_SAMPLED, axis=1), axis=1)
    clear = allowed[:, -1] - allowed[:, -2] > 0.2  # at T=0.01 the runner-up has odds below e^-20
    assert (by_temp[-1][clear] == 1).all()


def test_draw_follows_the_distribution():
    probs = np.array([0.0, 0.1, 0.2, 0.7], np.float32)
    logits = np.tile(np.log(probs + 1e-30), (20000, 1))
    ids = draw(logits, uniforms(3, np.arange(20000), 0))
    freq = np.bincount(ids, minlength=4) / 20000
    assert freq[0] == 0 and np.allclose(freq, probs, atol=0.015)


def test_temperature_divides_logits_and_leaves_greedy_rows():
    logits = random_logits(rows=3)
    out = temperature(logits, np.array([2.0, 0.0, 0.5]))
    assert np.allclose(out[0], logits[0] / 2) and np.allclose(out[1], logits[1]) and np.allclose(out[2], logits[2] * 2)
    assert np.allclose(softmax(out).sum(axis=1), 1)


def test_uniforms_are_in_the_open_interval_and_a_function_of_seed_row_step():
    u = uniforms(7, np.arange(100_000), 3)
    assert u.min() > 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert np.array_equal(uniforms(7, np.array([5, 99]), 3), u[[5, 99]])
    assert not np.array_equal(uniforms(8, np.arange(10), 3), u[:10])
    assert not np.array_equal(uniforms(7, np.arange(10), 4), u[:10])


def reference(step, temp, prompt, row, *, max_len, seed, k=0, p=1.0):
    """One row at a time, no batching and no dropping of rows: what generate must reproduce exactly."""
    state, token, out = step.initial_state(1), BOS, []
    for t in range(max_len):
        logits, state = step(np.array([token]), state)
        token = int(sample(logits, np.array([temp]), uniforms(seed, np.array([row]), t), k=k, p=p)[0])
        if t < len(prompt):
            token = prompt[t]
        if token == EOS:
            return out, True
        out.append(token)
    return out, False


@pytest.mark.parametrize("k, p", [(0, 1.0), (4, 1.0), (0, 0.9)])
def test_batched_equals_single_row_reference(k, p):
    step = ToyStep(eos_bias=1.5)
    temps = np.array([0.0, 0.3, 1.0, 1.8] * 10)
    prompts = [[], [5, 6], [7], [8, 9, 10, 11]] * 10
    batch = generate(step, temps, prompts, max_len=30, seed=11, first_row=100, k=k, p=p)
    lengths = []
    for r in range(len(temps)):
        ids, finished = reference(step, temps[r], prompts[r], 100 + r, max_len=30, seed=11, k=k, p=p)
        assert batch.ids[r, :len(ids)].tolist() == ids and (batch.ids[r, len(ids):] == 0).all()
        assert batch.finished[r] == finished
        lengths.append(len(ids))
    assert len(set(lengths)) > 5 and batch.finished.any() and not batch.finished.all()  # rows really diverged


def test_prompts_start_every_row_and_reserved_ids_never_appear():
    step = ToyStep(eos_bias=-100.0)  # never ends: every row runs to max_len
    step.bias[[PAD, BOS]] = 50  # a model that loves padding and <bos> (the notebook crashed on this)
    batch = generate(step, np.full(50, 1.8), [[4, 5, 6]] * 50, max_len=40, seed=0)
    assert (batch.ids[:, :3] == [4, 5, 6]).all() and not batch.finished.any()
    assert not np.isin(batch.ids, NEVER_SAMPLED).any()


def test_finished_rows_stay_finished():
    batch = generate(ToyStep(eos_bias=2.0), np.full(300, 1.0), [[]] * 300, max_len=60, seed=1)
    lengths = (batch.ids != 0).sum(axis=1)
    for row, n in zip(batch.ids, lengths, strict=True):
        assert (row[:n] != 0).all() and (row[n:] == 0).all()  # nothing after the end
    assert batch.finished.sum() > 250 and (lengths[batch.finished] < 60).all()


def test_same_seed_same_samples_and_other_seed_other_samples():
    step, temps = ToyStep(eos_bias=1.0), np.full(40, 1.0)
    a = generate(step, temps, [[]] * 40, max_len=30, seed=5)
    b = generate(step, temps, [[]] * 40, max_len=30, seed=5)
    c = generate(step, temps, [[]] * 40, max_len=30, seed=6)
    assert np.array_equal(a.ids, b.ids) and not np.array_equal(a.ids, c.ids)


def test_chunks_give_the_same_rows_as_one_batch():
    step, temps = ToyStep(eos_bias=1.0), np.repeat([0.3, 1.0, 1.8], 30)
    whole = generate(step, temps, [[]] * 90, max_len=40, seed=2)
    for first in range(0, 90, 25):
        part = generate(step, temps[first:first + 25], [[]] * len(temps[first:first + 25]), max_len=40, seed=2,
                        first_row=first)
        assert np.array_equal(part.ids, whole.ids[first:first + 25])
