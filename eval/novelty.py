"""How each text relates to the training titles: exact copies, novel word trigrams, novel character n-grams,
and near-copies by edit distance.

A training set has ~10^5 titles (5 M characters), so nothing here compares texts pair by pair: character n-grams
are matched by sorting (exact, no hashing), and near-copies are searched among candidates that a lossless
filter picks, with rapidfuzz's edit distance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

CHAR_ORDERS = range(4, 21)  # the novelty curve: character n-grams of these lengths
NEAR_COPY_THRESHOLD = 0.1  # normalised edit distance at or below which a text is a near-copy of a title
NEAR_COPY_CAP = 2000  # texts per group searched for near-copies (each costs ~0.1-1 ms)
FILTER_Q = 6  # q-gram length of the near-copy candidate filter


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


def normalised_distance(a: str, b: str) -> float:
    """Levenshtein distance / the longer length: 0 for equal texts, 1 for nothing in common."""
    return Levenshtein.normalized_distance(a, b)


@dataclass
class TrainingTitles:
    """The training titles and what is built from them once per report."""

    titles: list[str]
    exact: frozenset[str] = field(init=False)  # stripped titles, for exact copies
    trigrams: frozenset[tuple[str, ...]] = field(init=False)  # word trigrams

    def __post_init__(self) -> None:
        self.titles = list(self.titles)
        self.exact = frozenset(t.strip() for t in self.titles)
        self.trigrams = frozenset(g for t in self.titles for g in ngrams(words(t), 3))

    def nearest(self, text: str) -> tuple[str, float]:
        """The training title closest to `text` by normalised edit distance, and the distance (a full scan)."""
        if not self.titles:
            return "", math.nan
        title, distance, _ = process.extractOne(text, self.titles, scorer=Levenshtein.normalized_distance)
        return title, distance


@dataclass(frozen=True)
class Novelty:
    """Per text: whether it is a training title, novel word trigrams, character n-grams absent from the
    training titles (one column per length in CHAR_ORDERS), and whether it is a near-copy (NaN: not searched)."""

    copy: np.ndarray  # [texts] bool
    novel_trigrams: np.ndarray  # [texts]
    trigrams: np.ndarray  # [texts]
    novel_chars: np.ndarray  # [texts, orders]
    chars: np.ndarray  # [texts, orders]: character n-grams of each length
    near_copy: np.ndarray  # [texts] float: 1, 0, or NaN where not searched


def novelty(texts: Sequence[str], train: TrainingTitles, searched: np.ndarray,
            threshold: float = NEAR_COPY_THRESHOLD) -> Novelty:
    """Compare `texts` with the training titles; near-copies are searched only where `searched` is True."""
    tokens = [ngrams(words(t), 3) for t in texts]
    matches = _CharMatches(train.titles, texts)
    near = np.full(len(texts), np.nan)
    for i in np.flatnonzero(searched):
        near[i] = matches.near_copy(i, threshold)
    return Novelty(
        copy=np.array([t.strip() in train.exact for t in texts], bool),
        novel_trigrams=np.array([sum(g not in train.trigrams for g in t) for t in tokens], np.float64),
        trigrams=np.array([len(t) for t in tokens], np.float64),
        novel_chars=matches.novel, chars=matches.total, near_copy=near)


def _codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' code points end to end, and each text's length."""
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), "<u4")
    return codes, np.fromiter(map(len, texts), np.int64, len(texts))


class _CharMatches:
    """For every position of the texts, the longest substring starting there that some training title holds
    (up to the longest order of CHAR_ORDERS), and the near-copy search built on the same sort.

    Each position of the titles and of the texts becomes a window of its next 20 characters (padded with 0 at its
    text's end; one to three bytes a character), and all windows are sorted together, once. A text's window
    shares its longest prefix with a title's window next to it in that order (before or after it): the longest
    match, exactly, with no hashing. Windows sharing their first FILTER_Q characters form one run of that order:
    the titles in a text position's run are those holding its q-gram.
    """

    def __init__(self, titles: Sequence[str], texts: Sequence[str]):
        self.titles, self.texts = titles, texts
        train_codes, self.title_lengths = _codes(titles)
        sample_codes, self.lengths = _codes(texts)
        lut = np.zeros(0x110000, np.int64)  # code point -> 1 + its rank among the titles' characters
        seen = np.flatnonzero(np.bincount(train_codes, minlength=0x110000))
        lut[seen] = np.arange(1, seen.size + 1)
        width = 1 if seen.size < 255 else 2 if seen.size < 65535 else 3  # bytes a character
        unseen = 256**width - 1  # characters no title holds: never equal to a title's
        ids = np.concatenate([lut[train_codes], np.where(lut[sample_codes] > 0, lut[sample_codes], unseen)])
        lengths = np.concatenate([self.title_lengths, self.lengths])
        owner = np.repeat(np.arange(lengths.size), lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        left = starts[owner + 1] - np.arange(ids.size)  # characters from each position to its text's end
        span = CHAR_ORDERS[-1]
        # each text followed by `span` zeros, so a window never runs into the next text
        padded = np.zeros(ids.size + span * lengths.size, np.uint32)
        at = np.arange(ids.size) + span * owner
        padded[at] = ids
        windows = np.zeros((ids.size, span * width), np.uint8)
        for byte in range(width):
            plane = (padded >> (8 * (width - 1 - byte)) & 0xFF).astype(np.uint8)
            windows[:, byte::width] = np.lib.stride_tricks.sliding_window_view(plane, span)[at]
        order = np.argsort(windows.view(f"S{span * width}").ravel())
        windows = windows[order]
        n_train = train_codes.size
        is_train = order < n_train
        sorted_index = np.arange(order.size)
        before = np.maximum.accumulate(np.where(is_train, sorted_index, -1))
        after = np.minimum.accumulate(np.where(is_train, sorted_index, order.size)[::-1])[::-1]
        samples = np.flatnonzero(~is_train)
        longest = np.zeros(samples.size, np.int64)
        for neighbour in (before[samples], after[samples]):
            ok = (neighbour >= 0) & (neighbour < order.size)
            same = windows[samples[ok]] == windows[neighbour[ok]]
            shared = np.where(same.all(axis=1), same.shape[1], same.argmin(axis=1)) // width
            longest[ok] = np.maximum(longest[ok], shared)
        position = order[samples] - n_train  # position within the texts
        self.longest = np.zeros(sample_codes.size, np.int64)
        self.longest[position] = np.minimum(longest, left[order[samples]])
        text_of = owner[n_train:] - len(titles)
        per_length = np.bincount(text_of * (span + 1) + self.longest, minlength=len(texts) * (span + 1))
        at_least = np.cumsum(per_length.reshape(len(texts), span + 1)[:, ::-1], axis=1)[:, ::-1]
        orders = np.asarray(CHAR_ORDERS)
        self.total = np.maximum(self.lengths[:, None] - orders[None, :] + 1, 0).astype(np.float64)
        self.novel = self.total - at_least[:, orders]
        # near-copy filter: runs of windows sharing the first FILTER_Q characters, and the titles in each run
        q = FILTER_Q * width
        new_run = np.ones(order.size, bool)
        new_run[1:] = (windows[1:, :q] != windows[:-1, :q]).any(axis=1)
        run = np.cumsum(new_run) - 1
        run_start = np.flatnonzero(new_run)
        trains_before = np.concatenate([[0], np.cumsum(is_train)])  # titles' windows before each sorted index
        run_bounds = trains_before[np.append(run_start, order.size)]
        self.holders = owner[order[is_train]]  # the title of each title window, in sorted order
        rank = np.empty(order.size, np.int64)
        rank[order] = sorted_index
        sample_run = run[rank[n_train:]]
        self.run_lo, self.run_hi = run_bounds[sample_run], run_bounds[sample_run + 1]
        self.sample_starts = starts[len(titles):-1] - n_train

    def near_copy(self, i: int, threshold: float) -> float:
        """1.0 if some title lies within `threshold` normalised edit distance of text `i`, else 0.0.

        Lossless filter: a title within the threshold differs by at most k = floor(threshold * L / (1 - threshold))
        edits (L the text's length), so one of k + 1 disjoint pieces of the text survives in it verbatim
        (pigeonhole), and with it each of that piece's q-grams: the candidates are the titles holding the rarest
        q-gram of some piece. Pieces shorter than q leave no filter: then every title of a fitting length is a
        candidate.
        """
        length = int(self.lengths[i])
        k = math.floor(threshold * length / (1 - threshold) + 1e-9)
        lo, hi = math.ceil(length * (1 - threshold) - 1e-9), math.floor(length / (1 - threshold) + 1e-9)
        bounds = np.linspace(0, length, k + 2).astype(int)
        if np.diff(bounds).min() < FILTER_Q:
            candidates = np.flatnonzero((self.title_lengths >= lo) & (self.title_lengths <= hi))
        else:
            at = slice(self.sample_starts[i], self.sample_starts[i] + length)
            shared = self.longest[at] >= FILTER_Q
            first, last = self.run_lo[at], self.run_hi[at]
            parts = []
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                piece = np.arange(a, b - FILTER_Q + 1)
                if not shared[piece].all():  # a q-gram no title holds: no title holds this piece
                    continue
                rarest = piece[np.argmin(last[piece] - first[piece])]
                parts.append(self.holders[first[rarest]:last[rarest]])
            candidates = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            fits = self.title_lengths[candidates]
            candidates = candidates[(fits >= lo) & (fits <= hi)]
        if candidates.size == 0:
            return 0.0
        found = process.extractOne(self.texts[i], [self.titles[c] for c in candidates],
                                   scorer=Levenshtein.normalized_distance, score_cutoff=threshold)
        return float(found is not None)
