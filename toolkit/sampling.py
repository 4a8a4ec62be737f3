"""Batched sampling over any single-step model: logits processors and the generation loop.

Numpy only (no TensorFlow): the same loop drives the ONNX model in `sample-batch` and the Keras model
during training. The processors follow Hugging Face `generate`: small functions from a [rows, vocab] logits
array to another. Every random draw is a pure function of (seed, row, step), so a row's text does not depend
on the batch it ran in, on chunking, or on when finished rows were dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from toolkit.vocab import BOS, EOS, PAD, UNK

NEVER_SAMPLED = [PAD, BOS, UNK]  # reserved ids with no character: drawing one is always a bug
State = tuple[np.ndarray, ...]


class Step(Protocol):
    """One step of a recurrent model: (tokens [rows], state) -> (logits [rows, vocab], state)."""

    def initial_state(self, rows: int) -> State: ...
    def __call__(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...
    def select(self, state: State, rows: np.ndarray) -> State: ...


def temperature(logits: np.ndarray, temps: np.ndarray) -> np.ndarray:
    """Divide each row by its temperature (a new array); rows at temperature 0 stay as they are (greedy rows)."""
    temps = np.asarray(temps, np.float32)
    return logits * (1 / np.where(temps > 0, temps, np.float32(1)))[:, None]


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits of each row (ties with the k-th included); 0 turns the filter off."""
    if k <= 0 or k >= logits.shape[1]:
        return logits
    kth = np.partition(logits, -k, axis=1)[:, -k, None]
    return np.where(logits >= kth, logits, -np.inf)


def top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: keep the most likely ids until their probability reaches p; 1 turns it off."""
    if p >= 1:
        return logits
    order = np.argsort(-logits, axis=1)
    probs = softmax(np.take_along_axis(logits, order, axis=1))
    drop_sorted = np.cumsum(probs, axis=1) - probs >= p  # the mass before an id already reaches p
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=1)
    return np.where(drop, -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def draw(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One id per row by inverse CDF: the first id whose cumulative weight reaches u * total (u in (0, 1)).

    (A matmul with a triangular matrix of ones computes the running sums 3.5x faster alone, but its BLAS threads
    then contend with onnxruntime's in the loop, which ends up 20-30% slower: see docs/benchmarks.md.)
    """
    cdf = logits - logits.max(axis=1, keepdims=True)
    np.exp(cdf, out=cdf)
    np.cumsum(cdf, axis=1, out=cdf)
    return np.count_nonzero(cdf < u[:, None] * cdf[:, -1:], axis=1)


def sample(logits: np.ndarray, temps: np.ndarray, u: np.ndarray, *, k: int = 0, p: float = 1.0) -> np.ndarray:
    """Next ids: temperature with the reserved ids banned, top-k, top-p, then a draw; temperature 0 is argmax."""
    scaled = temperature(logits, temps)
    scaled[:, NEVER_SAMPLED] = -np.inf  # in place: `scaled` is already a copy of the model's output
    ids = draw(top_p(top_k(scaled, k), p), u)
    greedy = np.asarray(temps) == 0
    if greedy.any():
        ids[greedy] = scaled[greedy].argmax(axis=1)
    return ids


_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a bijection of uint64 that scatters neighbouring inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, rows: np.ndarray, step: int) -> np.ndarray:
    """Counter-based uniforms in (0, 1), one per row: a pure function of (seed, row, step)."""
    key = _mix(np.asarray([seed], np.uint64) * _GAMMA + np.asarray(rows, np.uint64))  # arrays wrap silently
    bits = _mix(key + np.asarray([step + 1], np.uint64) * _GAMMA) >> np.uint64(41)  # 23 bits: exact in float32
    return ((bits.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-23)).astype(np.float32)


@dataclass
class Batch:
    ids: np.ndarray  # [rows, max_len] character ids, prompt included, padding after the end
    finished: np.ndarray  # [rows] ended with <eos> within max_len


def generate(step: Step, temps: np.ndarray, prompts: list[list[int]], *, max_len: int, seed: int,
             first_row: int = 0, k: int = 0, p: float = 1.0) -> Batch:
    """Sample one title per row, all rows at once, each row at its own temperature after its own prompt.

    Every row starts from <bos>; a prompt's ids are fed instead of samples until it is used up. Rows that
    emit <eos> are finished, and once an eighth of the batch is finished they are dropped from it, so the
    work follows the rows still alive. `first_row` is the global index of row 0 (for the random draws).
    """
    rows = len(temps)
    temps = np.asarray(temps, np.float32)
    width = max((len(x) for x in prompts), default=0)
    forced = np.full((rows, width), -1, np.int64)
    for r, ids in enumerate(prompts):
        forced[r, :len(ids)] = ids
    out = np.zeros((rows, max_len), np.int32)
    finished = np.zeros(rows, bool)
    active = np.arange(rows)  # the rows in the batch, as indices into `out`
    alive = np.ones(rows, bool)  # which of them are still generating
    tokens = np.full(rows, BOS, np.int64)
    state = step.initial_state(rows)
    for t in range(max_len):
        logits, state = step(tokens, state)
        tokens = sample(logits, temps[active], uniforms(seed, first_row + active, t), k=k, p=p)
        if t < width:
            tokens = np.where(forced[active, t] >= 0, forced[active, t], tokens)
        ended = alive & (tokens == EOS)
        finished[active[ended]] = True
        alive &= ~ended
        out[active[alive], t] = tokens[alive]
        if not alive.any():
            break
        if alive.sum() <= 0.875 * alive.size:
            active, tokens, state = active[alive], tokens[alive], step.select(state, np.flatnonzero(alive))
            alive = np.ones(active.size, bool)
    return Batch(out, finished)
