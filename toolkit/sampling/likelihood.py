"""How likely texts are under a model: a teacher-forced pass through any single-step model (`toolkit.sampling.Step`).

Numpy only, so `sample-batch` can score the reference titles on onnxruntime: bits per character of real titles
under the model, beside the samples' own. Texts run all at once in chunks of rows, like sampling: a chunk is
padded to its longest text, and rows are dropped from the batch as their texts end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.sampling.draw import log_prob
from toolkit.sampling.tensors import SHRINK, Step
from toolkit.vocab import BOS, EOS, Vocab


def log_likelihood(step: Step, vocab: Vocab, texts: Sequence[str], finished: Sequence[bool] | None = None, *,
                   batch_size: int = 1024, classes: np.ndarray | None = None) -> np.ndarray:
    """Natural-log probability of each text under the model's raw distribution (no temperature), float64.

    The model reads `<bos> text` and is scored on each character of the text and then on `<eos>`; a text whose
    `finished` is False (a sample cut at the length limit) is scored on its characters only. Characters outside
    the vocabulary are scored as `<unk>`, as in training. Texts are sorted by length before chunking, so a chunk's
    rows end at about the same step; the result is in the order of `texts`. A class-conditional step is given each
    text's class id in `classes` (default: "no class").
    """
    ids = [vocab.encode(t) for t in texts]
    ends = np.ones(len(ids), bool) if finished is None else np.asarray(finished, bool)
    if ends.shape != (len(ids),):
        raise ValueError(f"finished has {ends.size} values for {len(ids)} texts")
    targets = np.array([len(x) for x in ids]) + ends  # scored positions per text
    order = np.argsort(-targets, kind="stable")
    out = np.zeros(len(ids), np.float64)
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        out[rows] = _chunk(step, [ids[r] for r in rows], targets[rows], None if classes is None else classes[rows])
    return out


def _chunk(step: Step, ids: list[list[int]], targets: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """One chunk of rows: step t feeds input t (`<bos>` then the characters) and scores target t."""
    rows, width = len(ids), int(targets.max(initial=0))
    target = np.full((rows, width), EOS, np.int64)  # a finished text's last target is <eos>
    for r, x in enumerate(ids):
        target[r, :len(x)] = x
    inputs = np.concatenate([np.full((rows, 1), BOS, np.int64), target[:, :-1]], axis=1)
    total = np.zeros(rows, np.float64)
    active = np.flatnonzero(targets > 0)  # rows still being read, as indices into the chunk
    state = step.initial_state(active.size) if classes is None else \
        step.initial_state(active.size, np.asarray(classes, np.int64)[active])
    for t in range(width):  # the longest text is read to its end: some row is active at every step
        logits, state = step(inputs[active, t], state)
        scored = log_prob(np.asarray(logits, np.float64), target[active, t])  # float64: a title's sum keeps its digits
        total[active] += np.where(targets[active] > t, scored, 0.0)  # rows past their end wait to be dropped
        going = targets[active] > t + 1
        if going.sum() <= SHRINK * going.size:  # as in sampling: drop ended rows once an eighth has ended
            active, state = active[going], step.select(state, np.flatnonzero(going))
    return total


def bits_per_character(step: Step, vocab: Vocab, texts: Sequence[str], classes: np.ndarray | None = None) -> float:
    """Bits per character of finished texts under the model, counting each text's <eos> as a character: the
    figure training reports as val_bpc, so samples and real titles can be set beside it (given each text's class
    id in `classes`, for a class-conditional model)."""
    if not texts:
        return float("nan")
    total = log_likelihood(step, vocab, texts, classes=None if classes is None else np.asarray(classes, np.int64))
    return -float(total.sum()) / np.log(2) / sum(len(t) + 1 for t in texts)
