"""The sampling loop in numpy over any `Step`: the reference the ONNX engine must reproduce, and the sampler of
the per-epoch samples in training (where the model is Keras).

It keeps every row to the end (no dropping), so it is simple enough to trust; the engine's in-graph head and its
row dropping must give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from toolkit.sampling.config import SampleConfig
from toolkit.sampling.draw import counters, draw, log_prob, squares_key, uniforms
from toolkit.sampling.processors import Ban, Rows
from toolkit.vocab import BOS, EOS, PAD

State = tuple[np.ndarray, ...]


class Step(Protocol):
    """One step of a recurrent model: (tokens [rows], state) -> (logits [rows, vocab], state)."""

    def initial_state(self, rows: int) -> State: ...
    def __call__(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...
    def select(self, state: State, rows: np.ndarray) -> State: ...


@dataclass
class Batch:
    ids: np.ndarray  # [rows, max_len] character ids, prompt included; padding from the end on
    finished: np.ndarray  # [rows] ended with <eos> within max_len
    logprob: np.ndarray  # [rows] float32: the model's log-probability of the text (and of its <eos>, if finished)


def forced_ids(config: SampleConfig, prompt_ids: list[list[int]], rows: np.ndarray) -> np.ndarray:
    """[P + 1, rows]: each row's prompt id at each step, -1 where it draws (the last row is all -1)."""
    width = max(map(len, prompt_ids))
    table = np.full((len(prompt_ids), width + 1), -1, np.int64)
    for i, ids in enumerate(prompt_ids):
        table[i, :len(ids)] = ids
    return np.ascontiguousarray(table[config.row_prompts(rows)].T)


def finish(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut each row at its first <eos> (padding from there on) and say which rows had one."""
    ended = np.cumsum(ids == EOS, axis=1) > 0
    return np.where(ended, PAD, ids), ended[:, -1]


def generate(step: Step, config: SampleConfig, rows: np.ndarray, prompt_ids: list[list[int]]) -> Batch:
    """Sample the given global rows of `config` (row i: temperature config.row_temperatures, prompt cycling)."""
    rows = np.asarray(rows, np.int64)
    temperature = config.row_temperatures(rows).astype(np.float32)
    forced = forced_ids(config, prompt_ids, rows)
    key, counter = squares_key(config.seed), counters(rows)
    tokens, state = np.full(rows.size, BOS, np.int64), step.initial_state(rows.size)
    ids = np.zeros((rows.size, config.max_len), np.int64)
    done, total = np.zeros(rows.size, bool), np.zeros(rows.size, np.float32)
    counts = None
    for t in range(config.max_len):
        logits, state = step(tokens, state)
        logits = np.asarray(logits, np.float32)
        if counts is None:
            counts = np.zeros_like(logits)
        rows_in = Rows(temperature, counts)
        x = Ban().numpy(logits, rows_in)
        for processor in config.processors:
            x = processor.numpy(x, rows_in)
        force = forced[min(t, forced.shape[0] - 1)]
        tokens = np.where(force >= 0, force, draw(x, uniforms(key, counter, t)))
        total = total + np.where(done, np.float32(0), log_prob(logits, tokens))
        counts[np.flatnonzero(force < 0), tokens[force < 0]] += 1
        ids[:, t] = tokens
        done |= tokens == EOS
        if done.all():
            break
    ids, finished = finish(ids)
    return Batch(ids, finished, total)
