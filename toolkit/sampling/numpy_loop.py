"""The sampling loop in numpy over any `Step`: the oracle the ONNX engine must reproduce, and the sampler of the
per-epoch samples in training (where the model is Keras).

It keeps every row to the end (no dropping), so it is simple enough to trust; the engine's in-graph head and its
row dropping must give the same rows. It runs the same chain (processors.apply) and the same processor states
(processors.accept) as the head.
"""

from __future__ import annotations

import numpy as np

from toolkit.sampling import processors
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.draw import counters, draw, log_prob, squares_key, uniforms
from toolkit.sampling.tensors import Batch, Step, finish, forced_ids
from toolkit.vocab import BOS, EOS, Vocab


def generate(step: Step, config: SampleConfig, rows: np.ndarray, prompt_ids: list[list[int]],
             classes: tuple[str, ...] = (), vocab: Vocab | None = None) -> Batch:
    """Sample the given global rows of `config` (row i: temperature config.row_temperatures, prompt cycling);
    a class-conditional step is given each row's class (`classes`: the model's class names). With guidance the
    model also runs each row told "no class", from a second state. A constraint or logit bias not yet built over
    the model's characters is built over `vocab` (default: the step's own, `step.spec.vocab`) and checked."""
    vocab = vocab or getattr(getattr(step, "spec", None), "vocab", None)
    if vocab is not None and processors.unbound(config.processors, vocab):
        config = config.bind(vocab)
    rows = np.asarray(rows, np.int64)
    temperature = config.row_temperatures(rows).astype(np.float32)
    forced = forced_ids(prompt_ids, config.row_prompts(rows))
    key, counter = squares_key(config.seed), counters(rows)
    tokens = np.full(rows.size, BOS, np.int64)
    ids = config.class_ids(classes)  # classes or guidance asked of a model without classes: refused
    state = step.initial_state(rows.size, ids[config.row_classes(rows)]) if classes else step.initial_state(rows.size)
    twin = step.initial_state(rows.size, np.full(rows.size, len(classes))) if processors.guided(
        config.processors) else None
    unconditional = None
    ids = np.zeros((rows.size, config.max_len), np.int64)
    done, total = np.zeros(rows.size, bool), np.zeros(rows.size, np.float32)
    memory = None  # each processor's state, made at the first step (it needs the vocabulary's size)
    for t in range(config.max_len):
        logits, state = step(tokens, state)
        logits = np.asarray(logits, np.float32)
        if twin is not None:
            unconditional, twin = step(tokens, twin)
            unconditional = np.asarray(unconditional, np.float32)
        if memory is None:
            memory = {s.name: np.zeros(s.shape(rows.size, logits.shape[1]), s.dtype)
                      for s in processors.states(config.processors)}
        x = processors.apply(config.processors, logits, processors.Rows(
            temperature, memory, unconditional=unconditional, left=np.int64(config.max_len - t)))
        force = forced[min(t, forced.shape[0] - 1)]
        tokens = np.where(force >= 0, force, draw(x, uniforms(key, counter, t)))
        total = total + np.where(done, np.float32(0), log_prob(logits, tokens))
        memory = processors.accept(config.processors, memory, tokens, force < 0)
        ids[:, t] = tokens
        done |= tokens == EOS
        if done.all():
            break
    ids, finished = finish(ids)
    return Batch(ids, finished, total)
