"""One pass over the samples, a chunk at a time, whatever their number: per group (temperature) the figures that are
cheap over every sample, and a seeded random subset of at most `subset` texts for the metrics that are not.

Over every sample: the number of texts, the streamed metrics of eval.metrics (mean length, finished rate, bits per
character, exact copies of training titles), each as the sums its estimate and its interval need; the histogram
of lengths; and a 64-bit hash of each text, for the distinct texts and the most repeated ones. Memory: the subset,
the histogram and eight bytes a sample, never the texts themselves.

The subset is the `subset` rows of the group with the smallest keys, a key being a hash of (seed, the row's position
in the file): a uniform random sample without replacement, the same whatever the chunking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from eval.constraints import Promises
from eval.metrics import STREAMED, Columns, Sums
from eval.novelty import TrainingTitles

SUBSET = 10_000  # texts per group the subset metrics read: see docs/benchmarks.md ("Report cost")
EVERY = 2**62  # a subset that holds every text
REPEATED = 5  # most repeated texts kept per group


def _keys(positions: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 of (seed, position): the subset's random order."""
    with np.errstate(over="ignore"):
        x = positions.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def text_hashes(texts: Iterable[str]) -> np.ndarray:
    return pd.util.hash_array(np.asarray(list(texts) if not isinstance(texts, np.ndarray) else texts, dtype=object))


@dataclass
class GroupStream:
    """One group's running figures (see the module's docstring)."""

    temperature: float
    subset: int
    rows: int = 0
    sums: dict[str, Sums] = field(default_factory=dict)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    hashes: list[np.ndarray] = field(default_factory=list)
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    texts: list[str] = field(default_factory=list)
    finished: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    logprob: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, keys: np.ndarray, texts: list[str], columns: Columns, hashes: np.ndarray) -> None:
        self.rows += keys.size
        for metric in STREAMED:
            found = metric.compute(columns)
            if found is not None:
                self.sums.setdefault(metric.name, Sums()).add(*found)
        counts = np.bincount(columns.length.astype(np.int64))
        if counts.size > self.lengths.size:
            self.lengths = np.pad(self.lengths, (0, counts.size - self.lengths.size))
        self.lengths[:counts.size] += counts
        self.hashes.append(hashes)
        self._keep(keys, texts, columns)

    def _keep(self, keys: np.ndarray, texts: list[str], columns: Columns) -> None:
        """Keep the rows with the `subset` smallest keys seen so far."""
        threshold = np.sort(self.keys)[self.subset - 1] if self.keys.size >= self.subset else None
        chosen = np.flatnonzero(keys < threshold) if threshold is not None else np.arange(keys.size)
        if not chosen.size:
            return
        logprob = columns.logprob if columns.logprob is not None else np.zeros(keys.size)
        self.keys = np.concatenate([self.keys, keys[chosen]])
        self.texts += [texts[i] for i in chosen]
        self.finished = np.concatenate([self.finished, columns.finished[chosen] > 0])
        self.logprob = np.concatenate([self.logprob, logprob[chosen]])
        if self.keys.size > 2 * self.subset:
            self._trim()

    def _trim(self) -> None:
        order = np.argsort(self.keys, kind="stable")[:self.subset]
        self.keys, self.finished, self.logprob = self.keys[order], self.finished[order], self.logprob[order]
        self.texts = [self.texts[i] for i in order]

    def finish(self) -> GroupStream:
        self._trim()
        return self

    def repeated(self) -> list[tuple[int, int]]:
        """The most repeated texts over every sample: (hash, count), most frequent first, count above 1."""
        found, counts = np.unique(np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.uint64),
                                  return_counts=True)
        top = np.argsort(-counts, kind="stable")[:REPEATED]
        return [(int(found[i]), int(counts[i])) for i in top if counts[i] > 1]

    def distinct(self) -> int:
        return int(np.unique(np.concatenate(self.hashes)).size) if self.hashes else 0


class Streams:
    """Feed chunks of samples with `add`; `groups()` gives each temperature's GroupStream in temperature order."""

    def __init__(self, train: TrainingTitles, subset: int = SUBSET, seed: int = 0, logprob: bool = False,
                 promises: Promises | None = None):
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise ValueError(f"subset must be a positive integer, not {subset!r}")
        self.train, self.subset, self.seed, self.logprob = train, subset, seed, logprob
        self.promises = promises
        self._groups: dict[float, GroupStream] = {}
        self._seen = 0

    def add(self, temperature: np.ndarray, texts: list[str], finished: np.ndarray, logprob: np.ndarray | None,
            length: np.ndarray | None = None) -> None:
        """One chunk: rows in file order."""
        temperature = np.asarray(temperature, np.float64)
        positions = self._seen + np.arange(temperature.size)
        self._seen += temperature.size
        keys = _keys(positions, self.seed)
        hashes = text_hashes(texts)
        exact = self.train.exact
        columns = Columns(
            np.asarray(length if length is not None else [len(t) for t in texts], np.float64),
            np.asarray(finished, np.float64), None if logprob is None else np.asarray(logprob, np.float64),
            np.fromiter((t.strip() in exact for t in texts), np.float64, len(texts)),
            *((None, None) if self.promises is None else (self.promises.match(texts), self.promises.banned(texts))))
        values, inverse = np.unique(temperature, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=values.size))])
        for g, t in enumerate(values):
            rows = order[bounds[g]:bounds[g + 1]]
            group = self._groups.setdefault(float(t), GroupStream(float(t), self.subset))
            group.add(keys[rows], [texts[i] for i in rows], columns.take(rows), hashes[rows])

    def groups(self) -> list[GroupStream]:
        return [self._groups[t].finish() for t in sorted(self._groups)]


def reference_stream(val: list[str], train: TrainingTitles, subset: int, seed: int = 0,
                     promises: Promises | None = None) -> GroupStream:
    """The held-out titles as a group: every title finished, no log-probabilities; judged by the run's
    constraint too, if it had one (how many real titles keep it)."""
    streams = Streams(train, subset, seed, promises=promises)
    streams.add(np.zeros(len(val)), list(val), np.ones(len(val), bool), None)
    return streams.groups()[0] if val else GroupStream(math.nan, subset)
