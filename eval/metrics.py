"""Diversity, repetition, novelty, distance to real titles and model likelihood of sampled titles, per
temperature, beside the same figures for real titles, each with a confidence interval; and the registry that says,
for each metric, what it is, how it is computed, where the report shows it and whether it is bounded.

Two kinds of figures (`Metric.kind`):

- Streamed (mean length, finished rate, bits per character, exact copies): a ratio of per-text sums over every
  sample (eval.stream reads them a chunk at a time), with the textbook normal interval of a ratio estimator.
- The others, on a seeded random subset of each group (eval.stream.SUBSET texts at most). distinct-n, self-BLEU,
  duplicates, Zipf and the distances depend on how many texts a group holds, so every group (each temperature and
  the reference) is scored on subsamples of one common size: k disjoint random subsamples of its subset, averaged.
  The per-text rates (repetition, novelty of n-grams, near-copies) are scored the same way.

Distances to the reference are measured between halves (half the common size on each side), and the reference row
holds the distance between two disjoint halves of the reference: what chance alone gives at that size, the floor a
temperature can reach.

Intervals of the subset metrics: a bootstrap over texts that draws half of each subsample without replacement
(B times, seeded), then scales the spread by sqrt(h / (m - h)) for h of m texts drawn, which makes its variance
that of the usual bootstrap for a mean. Drawing with replacement would put the same text twice in a group, which
distinct-n, self-BLEU and the duplicate rate count as repetition. The interval is the estimate plus the centred
2.5% and 97.5% quantiles of the scaled replicates. The estimate averages all k subsamples; the bootstrap runs on the
first J = min(k, BOOT_SUBSAMPLES) of them (each replicate the mean of their half-samples), and as the k subsamples
are independent draws of one distribution, its spread is scaled by sqrt(J / k): the interval of the mean of k. So
the cost grows with k, not with k times B.

Words are `text.lower().split()`; n-grams are consecutive words within one text. Everything is numpy arrays over
all replicates at once.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from eval.novelty import CHAR_ORDERS, NEAR_COPY_CAP, NEAR_COPY_THRESHOLD, Novelty, TrainingTitles, novelty, words
from toolkit.files import UsageError

BOOTSTRAP = 200  # replicates
BOOT_SUBSAMPLES = 2  # subsamples the bootstrap runs on (J above)
DISTANCE_PAIRS = 10  # half-sample pairs a distance averages in each of the other subsamples
CONFIDENCE = 0.95
SMOOTHING_EPSILON = 0.1  # NLTK SmoothingFunction().method1's count for an n-gram order without matches
ROWS_AT_ONCE = 64  # replicates per numpy pass: bounds memory at [64, n-grams of a subsample]


@dataclass(frozen=True)
class Sparse:
    """A multiset of ids per text (CSR): text i holds ids[indptr[i]:indptr[i + 1]], each `counts` times."""

    indptr: np.ndarray
    ids: np.ndarray
    counts: np.ndarray

    @classmethod
    def build(cls, owner: np.ndarray, ids: np.ndarray, texts: int) -> Sparse:
        """From one (text, id) pair per occurrence."""
        width = int(ids.max(initial=0)) + 1
        keys, counts = np.unique(np.asarray(owner, np.int64) * width + ids, return_counts=True)
        return cls(np.searchsorted(keys // width, np.arange(texts + 1)), keys % width, counts)

    @property
    def owner(self) -> np.ndarray:
        return np.repeat(np.arange(self.indptr.size - 1), np.diff(self.indptr))

    def take(self, rows: np.ndarray) -> Sparse:
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.repeat(self.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Sparse(indptr, self.ids[flat], self.counts[flat])


@dataclass(frozen=True)
class Columns:
    """Per text, what the streamed metrics read: length in characters, finished (0/1), the model's
    log-probability (None when the samples have none), whether the text is a training title (0/1), and where the
    run had a constraint (eval.constraints; None otherwise) whether it fullmatches its pattern and whether it holds
    a banned string (0/1)."""

    length: np.ndarray
    finished: np.ndarray
    logprob: np.ndarray | None
    copy: np.ndarray
    match: np.ndarray | None = None
    banned: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> Columns:
        return Columns(self.length[rows], self.finished[rows], None if self.logprob is None else self.logprob[rows],
                       self.copy[rows], None if self.match is None else self.match[rows],
                       None if self.banned is None else self.banned[rows])


@dataclass(frozen=True)
class Features:
    """Per text, what the per-text rates of the subset read."""

    repeated: np.ndarray  # some word bigram occurs twice
    seq_rep: np.ndarray  # 1 - distinct bigrams / bigrams
    has_bigram: np.ndarray
    found: Novelty | None  # the comparison with the training titles
    ones: np.ndarray


@dataclass(frozen=True)
class Texts:
    """What the metrics read of a list of texts, as arrays with one row per text."""

    grams: tuple[Sparse, ...]  # word n-grams of orders 1-4 (ids shared by all the texts of a report)
    char_bigrams: Sparse
    text_id: np.ndarray  # equal ids, equal texts
    n_words: np.ndarray
    length: np.ndarray
    rates: dict[str, tuple[np.ndarray, np.ndarray]]  # per text, numerator and denominator of each rate

    @classmethod
    def build(cls, texts: Sequence[str], finished: np.ndarray | None = None, found: Novelty | None = None) -> Texts:
        """Without `found` (the comparison with the training titles), the novelty rates are left out."""
        tokens = [words(t) for t in texts]
        n_words = np.fromiter(map(len, tokens), np.int64, len(tokens))
        grams = _word_grams(tokens)
        bigrams = grams[1]
        distinct = np.diff(bigrams.indptr)
        total = np.bincount(bigrams.owner, weights=bigrams.counts, minlength=len(texts))
        features = Features(repeated=(total > distinct).astype(np.float64),
                            seq_rep=_ratio(total - distinct, total, 0.0), has_bigram=(total > 0).astype(np.float64),
                            found=found, ones=np.ones(len(texts)))
        rates = {}
        for metric in RATES:
            pair = metric.compute(features)
            if pair is not None:
                rates[metric.name] = tuple(np.asarray(x, np.float64) for x in pair)
        return cls(grams, _char_bigrams(texts), pd.factorize(pd.Series(texts, dtype=object))[0], n_words,
                   np.fromiter(map(len, texts), np.float64, len(texts)), rates)

    def take(self, rows: np.ndarray) -> Texts:
        return Texts(tuple(g.take(rows) for g in self.grams), self.char_bigrams.take(rows), self.text_id[rows],
                     self.n_words[rows], self.length[rows],
                     {k: (num[rows], den[rows]) for k, (num, den) in self.rates.items()})


def _word_grams(tokens: list[list[str]]) -> tuple[Sparse, ...]:
    """Word n-grams of orders 1-4 as Sparse multisets, numbered over all the texts: each order's id is the pair
    (the id of the n-gram one shorter, the next word), renumbered, so no n-gram is ever built as a tuple."""
    lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
    owner = np.repeat(np.arange(len(tokens)), lengths)
    ids = pd.factorize(pd.Series(list(itertools.chain.from_iterable(tokens)), dtype=object))[0].astype(np.int64)
    width = int(ids.max(initial=0)) + 1
    out = [Sparse.build(owner, ids, len(tokens))]
    current, valid = ids, np.ones(ids.size, bool)
    for n in range(2, 5):
        nxt, m = np.zeros(ids.size, bool), max(ids.size - n + 1, 0)  # m: positions an n-gram can start at
        nxt[:m] = valid[:m] & (owner[n - 1:] == owner[:m])
        valid = nxt
        start = np.flatnonzero(valid)
        pair = current[start] * width + ids[start + n - 1]
        current = np.zeros(ids.size, np.int64)
        current[start] = np.unique(pair, return_inverse=True)[1].ravel()
        out.append(Sparse.build(owner[start], current[start], len(tokens)))
    return tuple(out)


def _char_bigrams(texts: Sequence[str]) -> Sparse:
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), "<u4").astype(np.int64)
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    owner = np.repeat(np.arange(len(texts)), lengths)
    pairs = np.flatnonzero(owner[1:] == owner[:-1])  # positions whose next character is in the same text
    _, ids = np.unique(codes[pairs] * 0x110000 + codes[pairs + 1], return_inverse=True)
    return Sparse.build(owner[pairs], ids, len(texts))


def _counts(owner: np.ndarray, ids: np.ndarray, weights: np.ndarray | None, sel: np.ndarray,
            width: int | None = None) -> np.ndarray:
    """[replicates, ids]: for each replicate (a row of `sel`: the texts chosen), the summed weight (default 1) of
    each id over the chosen texts. Columns are the ids 0..width-1, or without `width` the distinct ids held."""
    order = np.argsort(ids, kind="stable")
    ids, owner = ids[order], owner[order]
    weights = None if weights is None else np.asarray(weights, np.float32)[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if ids.size else np.zeros(0, np.int64)
    columns = ids[starts] if width is not None else np.arange(starts.size)
    out = np.zeros((sel.shape[0], starts.size if width is None else width))
    if ids.size:
        for r in range(0, sel.shape[0], ROWS_AT_ONCE):
            chosen = sel[r:r + ROWS_AT_ONCE].astype(np.float32)[:, owner]  # float32: counts stay exact below 2^24
            out[r:r + ROWS_AT_ONCE, columns] = np.add.reduceat(chosen if weights is None else chosen * weights,
                                                               starts, axis=1)
    return out


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def _distinct(grams: Sparse, n_words: np.ndarray, sel: np.ndarray) -> np.ndarray:
    held = _counts(grams.owner, grams.ids, None, sel)
    return _ratio((held > 0).sum(axis=1), sel @ n_words)


def _self_bleu(grams: Sequence[Sparse], n_words: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Mean sentence BLEU-4 of each chosen text against the other chosen texts, for each replicate.

    Equals the mean of NLTK's `sentence_bleu(others, text, smoothing_function=SmoothingFunction().method1)` but
    costs O(n-grams), not O(texts²). The clipped count of an n-gram that a text holds c times is the number of
    levels j <= c at which another chosen text holds it at least j times; so each occurrence becomes a (n-gram,
    level) pair, and a pair matches when at least two chosen texts hold it. The closest reference length likewise
    excludes one occurrence of the text's own length. Fewer than two chosen texts have no references: NaN.
    """
    texts = n_words.size
    matches = np.zeros((4, sel.shape[0], texts))
    for n, g in enumerate(grams):
        level = np.arange(g.counts.sum()) - np.repeat(np.cumsum(g.counts) - g.counts, g.counts)
        _, pair = np.unique(np.repeat(g.ids, g.counts) * int(g.counts.max(initial=1)) + level, return_inverse=True)
        owner = np.repeat(g.owner, g.counts)
        holders = _counts(owner, pair, None, sel, int(pair.max(initial=-1)) + 1)
        ends = np.searchsorted(owner, np.arange(texts + 1))  # each text's pairs (owner is sorted)
        for r in range(0, sel.shape[0], ROWS_AT_ONCE):
            hit = np.zeros((holders[r:r + ROWS_AT_ONCE].shape[0], pair.size + 1))
            np.cumsum(holders[r:r + ROWS_AT_ONCE, pair] >= 2, axis=1, out=hit[:, 1:])
            matches[n, r:r + ROWS_AT_ONCE] = hit[:, ends[1:]] - hit[:, ends[:-1]]
    totals = np.maximum(n_words[None, :] - np.arange(4)[:, None], 0)[:, None, :]  # [order, 1, text]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(matches > 0, matches, SMOOTHING_EPSILON) / np.maximum(1, totals)
        reference = _closest_other_length(n_words, sel)
        penalty = np.where(n_words > reference, 1.0, np.exp(1 - reference / n_words))
        score = np.where(matches[0] > 0, penalty * np.exp((0.25 * np.log(precision)).sum(axis=0)), 0.0)
    chosen = sel.sum(axis=1)
    return np.where(chosen >= 2, (score * sel).sum(axis=1) / np.maximum(chosen, 1), np.nan)


def _closest_other_length(n_words: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """[replicates, texts]: NLTK's closest reference length (ties to the shorter) among the other chosen texts."""
    lengths = np.arange(int(n_words.max(initial=0)) + 1)
    held = sel.astype(np.float64) @ (n_words[:, None] == lengths[None, :])  # [replicates, lengths]
    below = np.maximum.accumulate(np.where(held > 0, lengths, -1), axis=1)  # longest held length <= l
    above = np.minimum.accumulate(np.where(held > 0, lengths, 10**9)[:, ::-1], axis=1)[:, ::-1]
    shorter = np.concatenate([np.full((sel.shape[0], 1), -1), below[:, :-1]], axis=1)[:, n_words]  # < l
    longer = np.concatenate([above[:, 1:], np.full((sel.shape[0], 1), 10**9)], axis=1)[:, n_words]  # > l
    nearest = np.where((shorter >= 0) & (n_words - shorter <= longer - n_words), shorter, longer)
    return np.where(held[:, n_words] >= 2, n_words, nearest).astype(np.float64)


def self_bleu(texts: Sequence[Sequence[str]]) -> float:
    """Self-BLEU of one group of tokenised texts (see `_self_bleu`)."""
    grams = _word_grams([list(t) for t in texts])
    return float(_self_bleu(grams, np.array([len(t) for t in texts], np.int64), np.ones((1, len(texts)), bool))[0])


def _zipf(unigrams: Sparse, sel: np.ndarray) -> np.ndarray:
    """Minus the least-squares slope of log frequency on log rank, over the words each replicate holds."""
    counts = -np.sort(-_counts(unigrams.owner, unigrams.ids, unigrams.counts, sel), axis=1)
    held = counts > 0
    x = np.log(np.arange(1, counts.shape[1] + 1))[None, :] * held
    y = np.log(np.where(held, counts, 1))
    n, sx, sy = held.sum(axis=1), x.sum(axis=1), y.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (n * (x * y).sum(axis=1) - sx * sy) / (n * (x * x).sum(axis=1) - sx * sx)
    return np.where(n >= 2, -slope, np.nan)


def _pool(texts: Texts, sel: np.ndarray) -> dict[str, np.ndarray]:
    """Every subset metric but the distances, for each replicate (row of `sel`) of one subsample."""
    chosen = sel.astype(np.float64)
    out = {m.name: m.compute(texts, chosen) for m in SETS}
    for m in RATES:
        if m.name in texts.rates:
            num, den = texts.rates[m.name]
            out[m.name] = _ratio(chosen @ num, chosen @ den, m.empty)
    return out


def _duplicate_rate(texts: Texts, chosen: np.ndarray) -> np.ndarray:
    held = _counts(np.arange(texts.text_id.size), texts.text_id, None, chosen)
    return 1 - _ratio((held > 0).sum(axis=1), chosen.sum(axis=1), 1.0)


def _distribution(a: Sparse, b: Sparse, sel_a: np.ndarray, sel_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each replicate's id counts in two groups, over the ids either holds."""
    _, ids = np.unique(np.concatenate([a.ids, b.ids]), return_inverse=True)
    width = int(ids.max(initial=0)) + 1
    return (_counts(a.owner, ids[:a.ids.size], a.counts, sel_a, width),
            _counts(b.owner, ids[a.ids.size:], b.counts, sel_b, width))


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits between the rows of two count matrices (normalised here); NaN for an
    empty row."""
    p_total, q_total = p.sum(axis=1, keepdims=True), q.sum(axis=1, keepdims=True)
    empty = ((p_total == 0) | (q_total == 0))[:, 0]  # two empty rows are not "identical": nothing to compare
    with np.errstate(invalid="ignore"):  # 0 / 0: an empty row, or a character neither row has
        p, q = p / p_total, q / q_total
        m = (p + q) / 2
        kl = [np.where(x > 0, x * np.log2(np.where(x > 0, x / m, 1)), 0).sum(axis=1) for x in (p, q)]
    return np.where(empty, np.nan, np.maximum((kl[0] + kl[1]) / 2, 0))


def _length_gap(a: Texts, b: Texts, sel_a: np.ndarray, sel_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|CDF_a - CDF_b| of the lengths on their joint support, per replicate, and the support."""
    support, ids = np.unique(np.concatenate([a.length, b.length]), return_inverse=True)
    n = a.length.size
    cdf = [np.cumsum(_counts(np.arange(n), ids[:n], None, sel_a, support.size), axis=1),
           np.cumsum(_counts(np.arange(b.length.size), ids[n:], None, sel_b, support.size), axis=1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(cdf[0] / cdf[0][:, -1:] - cdf[1] / cdf[1][:, -1:]), support


def _ks(a: Texts, b: Texts, sel_a: np.ndarray, sel_b: np.ndarray) -> np.ndarray:
    return _length_gap(a, b, sel_a, sel_b)[0].max(axis=1)


def _wasserstein(a: Texts, b: Texts, sel_a: np.ndarray, sel_b: np.ndarray) -> np.ndarray:
    gap, support = _length_gap(a, b, sel_a, sel_b)
    return (gap[:, :-1] * np.diff(support)).sum(axis=1)


def _distances(a: Texts, b: Texts, sel_a: np.ndarray, sel_b: np.ndarray) -> dict[str, np.ndarray]:
    """Distances between group a and group b, replicate by replicate (row r of sel_a against row r of sel_b)."""
    sel_a, sel_b = sel_a.astype(np.float64), sel_b.astype(np.float64)
    return {m.name: m.compute(a, b, sel_a, sel_b) for m in DISTANCE_METRICS}


def distances(a: Sequence[str], b: Sequence[str]) -> dict[str, float]:
    """The distances of DISTANCES between two whole groups of texts (no subsampling)."""
    texts = Texts.build([*a, *b])
    found = _distances(texts.take(np.arange(len(a))), texts.take(np.arange(len(a), len(a) + len(b))),
                       np.ones((1, len(a)), bool), np.ones((1, len(b)), bool))
    return {k: float(v[0]) for k, v in found.items()}


# --- the registry: a metric is one entry ------------------------------------------------------------------------

DIVERSITY, NOVELTY, DISTANCE, REPETITION = ("Diversity", "Novelty", "Distance to real titles",
                                            "Repetition, length, likelihood")  # the report's tables, in order
PANELS = ("diversity (higher is more diverse; self-BLEU: lower)", "novelty", "repetition",
          "distance to real titles (lower is closer)", "bits per character under the model")  # its trend panels


@dataclass(frozen=True)
class Metric:
    """One column of the metrics table (with `_lo` and `_hi`).

    kind: "streamed" (`compute(Columns)` -> per-text numerator and denominator, over every sample), "rate" (the
    same from `Features`, over the subset), "set" (`compute(Texts, chosen)` -> one value per replicate) or
    "distance" (`compute(a, b, chosen_a, chosen_b)`: a group against the reference, half against half). A
    compute that returns None has nothing to measure (no log-probabilities, no training titles).
    """

    name: str
    legend: str
    kind: str
    compute: Callable
    table: str | None = None  # the HTML table that shows it
    panel: str | None = None  # the panel of metrics against temperature that draws it
    bounded: bool = True  # lies in [0, 1]
    empty: float = 0.0  # a rate's value when its denominator is 0


def _curve(n: int, j: int) -> Metric:
    return Metric(f"novel_char_{n}", f"share of character {n}-grams found in no training title", "rate",
                  lambda f: None if f.found is None else (f.found.novel_chars[:, j], f.found.chars[:, j]))


REGISTRY: tuple[Metric, ...] = (
    Metric("distinct_1", "distinct words / words (Li et al. 2016)", "set",
           lambda t, c: _distinct(t.grams[0], t.n_words, c), DIVERSITY, PANELS[0]),
    Metric("distinct_2", "distinct word bigrams / words", "set",
           lambda t, c: _distinct(t.grams[1], t.n_words, c), DIVERSITY, PANELS[0]),
    Metric("distinct_3", "distinct word trigrams / words", "set",
           lambda t, c: _distinct(t.grams[2], t.n_words, c), DIVERSITY, PANELS[0]),
    Metric("self_bleu", "mean BLEU-4 of each text against all the others (Zhu et al. 2018; NLTK smoothing method 1); "
                        "lower is more diverse", "set",
           lambda t, c: _self_bleu(t.grams, t.n_words, c), DIVERSITY, PANELS[0]),
    Metric("duplicate_rate", "1 - distinct texts / texts", "set", _duplicate_rate, DIVERSITY, PANELS[2]),
    Metric("zipf", "Zipf coefficient: minus the least-squares slope of log word frequency on log rank, over all words",
           "set", lambda t, c: _zipf(t.grams[0], c), DIVERSITY, bounded=False),
    Metric("repetition_rate", "share of texts in which some word bigram occurs more than once", "rate",
           lambda f: (f.repeated, f.ones), REPETITION, PANELS[2]),
    Metric("seq_rep_2", "mean over texts with a bigram of 1 - distinct bigrams / bigrams (Welleck et al. 2019)",
           "rate", lambda f: (f.seq_rep, f.has_bigram), REPETITION, PANELS[2]),
    Metric("novelty", "share of texts that are not exactly a training title (surrounding whitespace ignored)",
           "streamed", lambda c: (1 - c.copy, np.ones_like(c.copy)), NOVELTY, PANELS[1]),
    Metric("copy_rate", "1 - novelty: share of texts copied whole from the training titles", "streamed",
           lambda c: (c.copy, np.ones_like(c.copy)), NOVELTY),
    Metric("near_copy_rate", f"share of texts within normalised edit distance {NEAR_COPY_THRESHOLD:g} (Levenshtein "
                             f"distance / longer length) of some training title; searched in up to {NEAR_COPY_CAP:,} "
                             "texts a group", "rate",
           lambda f: None if f.found is None else (np.nan_to_num(f.found.near_copy),
                                                   (~np.isnan(f.found.near_copy)).astype(np.float64)),
           NOVELTY, PANELS[1], empty=math.nan),
    Metric("novel_3gram_rate", "share of word trigrams (with multiplicity) found in no training title (McCoy et al. "
                               "2021)", "rate",
           lambda f: None if f.found is None else (f.found.novel_trigrams, f.found.trigrams), NOVELTY, PANELS[1]),
    Metric("length_ks", "Kolmogorov-Smirnov statistic between the group's and the reference's lengths in characters",
           "distance", _ks, DISTANCE, PANELS[3]),
    Metric("length_wasserstein", "Wasserstein distance between the group's and the reference's lengths, in "
                                 "characters", "distance", _wasserstein, DISTANCE, bounded=False),
    Metric("js_char_bigrams", "Jensen-Shannon divergence (bits, 0 to 1) between the group's and the reference's "
                              "character-bigram distributions", "distance",
           lambda a, b, sa, sb: js_divergence(*_distribution(a.char_bigrams, b.char_bigrams, sa, sb)), DISTANCE,
           PANELS[3]),
    Metric("js_words", "Jensen-Shannon divergence (bits) between the group's and the reference's word distributions. "
                       "Distances are measured between halves (half the common size each side), averaged over the "
                       "bootstrap's halves; the reference row is the distance between two disjoint halves of the "
                       "reference: what chance alone gives at that size", "distance",
           lambda a, b, sa, sb: js_divergence(*_distribution(a.grams[0], b.grams[0], sa, sb)), DISTANCE, PANELS[3]),
    Metric("mean_length", "mean characters per text", "streamed", lambda c: (c.length, np.ones_like(c.length)),
           REPETITION, bounded=False),
    Metric("finished_rate", "share of texts that ended with end-of-title rather than at the length limit", "streamed",
           lambda c: (c.finished, np.ones_like(c.finished)), REPETITION),
    Metric("regex_match_rate", "share of the finished texts that fullmatch the run's --regex (Python's re as the "
                               "judge; only where the run had one)", "streamed",
           lambda c: None if c.match is None else (c.match * c.finished, c.finished), REPETITION),
    Metric("banned_rate", "share of texts that contain one of the run's --ban strings (substring search as the "
                          "judge; only where the run had them)", "streamed",
           lambda c: None if c.banned is None else (c.banned, np.ones_like(c.banned)), REPETITION),
    Metric("bpc", "bits per character under the model (its raw distribution, end-of-title included); the reference "
                  "row is run.json's reference_bpc", "streamed",
           lambda c: None if c.logprob is None else (-c.logprob / math.log(2), c.length + c.finished), REPETITION,
           PANELS[4], bounded=False),
    *(_curve(n, j) for j, n in enumerate(CHAR_ORDERS)),
)
BY_NAME = {m.name: m for m in REGISTRY}
CURVE = {n: f"novel_char_{n}" for n in CHAR_ORDERS}  # the novelty curve: one column per n-gram length
METRICS = {m.name: m.legend for m in REGISTRY if m.name not in CURVE.values()}  # column order, with legends
STREAMED = tuple(m for m in REGISTRY if m.kind == "streamed")
RATES = tuple(m for m in REGISTRY if m.kind == "rate")
SETS = tuple(m for m in REGISTRY if m.kind == "set")
DISTANCE_METRICS = tuple(m for m in REGISTRY if m.kind == "distance")
DISTANCES = tuple(m.name for m in DISTANCE_METRICS)
UNBOUNDED = {m.name for m in REGISTRY if not m.bounded}
TABLES = {title: tuple(m.name for m in REGISTRY if m.table == title) for title in (DIVERSITY, NOVELTY, DISTANCE,
                                                                                   REPETITION)}
TRENDS = {panel: tuple(m.name for m in REGISTRY if m.panel == panel) for panel in PANELS}


@dataclass
class Sums:
    """What a ratio of per-text sums needs for its estimate and its normal interval (delta method)."""

    num: float = 0.0
    den: float = 0.0
    nn: float = 0.0
    dd: float = 0.0
    nd: float = 0.0
    n: int = 0

    def add(self, num: np.ndarray, den: np.ndarray) -> None:
        self.num += float(num.sum())
        self.den += float(den.sum())
        self.nn += float(num @ num)
        self.dd += float(den @ den)
        self.nd += float(num @ den)
        self.n += num.size

    def interval(self, z: float, top: float) -> tuple[float, float, float]:
        """(estimate, low, high): R = sum num / sum den, its standard error from the linearised residuals
        num - R den (the textbook ratio estimator), clipped to [0, top]."""
        if self.den <= 0:
            return math.nan, math.nan, math.nan
        r = self.num / self.den
        if self.n < 2:
            return r, math.nan, math.nan
        residual = max(self.nn - 2 * r * self.nd + r * r * self.dd, 0.0)  # sum of (num - r den)^2
        se = math.sqrt(residual * self.n / (self.n - 1)) / self.den
        return r, max(r - z * se, 0.0), min(r + z * se, top)


# --- scoring --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """A group to score: its subset of texts, and (from eval.stream) how many samples it holds in all and its
    streamed metrics over all of them (est, low, high); without them, both come from `texts` alone."""

    label: str
    temperature: float
    texts: list[str]
    finished: np.ndarray
    logprob: np.ndarray | None = None
    samples: int | None = None
    streamed: dict[str, tuple[float, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pools:
    """A group's k disjoint subsamples of `size` texts, and the replicates' choices within a subsample."""

    rows: np.ndarray  # [k, size] indices into the group's texts
    sel: np.ndarray  # [1 + BOOTSTRAP, size]: row 0 takes every text (the estimate), then the half-samples


def _pools(group: Group, size: int, seed: int) -> _Pools:
    rng = np.random.default_rng([seed, zlib.crc32(group.label.encode())])  # stable per group
    order = rng.permutation(len(group.texts))
    k = len(group.texts) // size
    half = np.zeros((BOOTSTRAP, size), bool)
    if size >= 2:
        np.put_along_axis(half, rng.random((BOOTSTRAP, size)).argsort(axis=1)[:, :size // 2], True, axis=1)
    return _Pools(order[:k * size].reshape(k, size), np.concatenate([np.ones((1, size), bool), half]))


def streamed_values(columns: Columns) -> dict[str, tuple[float, float, float]]:
    """The streamed metrics of texts held in memory (the reference, a small group)."""
    out = {}
    for m in STREAMED:
        pair = m.compute(columns)
        if pair is not None:
            sums = Sums()
            sums.add(*pair)
            out[m.name] = sums.interval(normal_quantile(), math.inf if not m.bounded else 1.0)
    return out


def normal_quantile() -> float:
    """z of a two-sided CONFIDENCE normal interval (1.96 at 95%)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf((1 + CONFIDENCE) / 2)


def score(groups: Sequence[Group], reference: Group, train: TrainingTitles, *, size: int | None = None,
          reference_bpc: float | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per group, in the order given, then the reference row. `size` is the common subsample size
    (default: the smallest group, the reference included)."""
    everyone = [*groups, reference]
    smallest = min(everyone, key=lambda g: len(g.texts))
    if size is not None and not 1 <= size <= len(smallest.texts):
        raise UsageError(f"{{size}} {size} must lie between 1 and the smallest group ({smallest.label} holds "
                         f"{len(smallest.texts)} texts); pass {{size}} {len(smallest.texts)} or less", "size")
    size = len(smallest.texts) if size is None else size
    pools = [_pools(g, size, seed) for g in everyone]
    logprob = any(g.logprob is not None for g in groups)
    # one Texts for every scored text of every group, so n-gram ids are shared; near-copies only in the first
    # NEAR_COPY_CAP texts of each group, spread over its subsamples
    texts, searched, offsets = [], [], [0]
    for g, p in zip(everyone, pools, strict=True):
        texts += [g.texts[i] for i in p.rows.ravel()]
        k = len(p.rows)  # the cap's texts spread over the subsamples as evenly as they go
        quota = NEAR_COPY_CAP // k + (np.arange(k) < NEAR_COPY_CAP % k)
        searched.append((np.arange(size)[None, :] < quota[:, None]).ravel())
        offsets.append(offsets[-1] + p.rows.size)
    everything = Texts.build(texts, None, novelty(texts, train, np.concatenate(searched)))
    subsamples = [[everything.take(np.arange(offsets[i] + j * size, offsets[i] + (j + 1) * size))
                   for j in range(len(p.rows))] for i, p in enumerate(pools)]
    reference_subs, reference_pools = subsamples[-1], pools[-1]
    rows = []
    for g, p, subs in zip(everyone, pools, subsamples, strict=True):
        is_reference = g is reference
        values = _subset_values(subs, p, reference_subs, reference_pools, is_reference, size)
        streamed = g.streamed or streamed_values(_columns(g, train))
        row = {"group": g.label, "temperature": g.temperature, "samples": g.samples or len(g.texts),
               "scored": len(g.texts), "size": size, "subsamples": len(p.rows)}
        for m in REGISTRY:
            if m.name == "bpc" and is_reference:  # a figure of the sampler's, without an interval
                est, lo, hi = math.nan if reference_bpc is None else float(reference_bpc), math.nan, math.nan
            elif m.name == "bpc" and not logprob:
                est = lo = hi = math.nan
            elif m.kind == "streamed":
                est, lo, hi = streamed.get(m.name, (math.nan,) * 3)
            else:
                est, lo, hi = values.get(m.name, (math.nan,) * 3)
            row |= {m.name: est, f"{m.name}_lo": lo, f"{m.name}_hi": hi}
        rows.append(row)
    return pd.DataFrame(rows)


def _columns(group: Group, train: TrainingTitles) -> Columns:
    return Columns(np.fromiter(map(len, group.texts), np.float64, len(group.texts)),
                   np.asarray(group.finished, np.float64),
                   None if group.logprob is None else np.asarray(group.logprob, np.float64),
                   np.fromiter((t.strip() in train.exact for t in group.texts), np.float64, len(group.texts)))


def _subset_values(subs: list[Texts], p: _Pools, reference: list[Texts], reference_pools: _Pools,
                   is_reference: bool, size: int) -> dict[str, tuple[float, float, float]]:
    """(estimate, low, high) of every subset metric of one group: see the module's docstring."""
    k = len(subs)
    boot = min(k, BOOT_SUBSAMPLES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        pooled = [_pool(s, p.sel if j < boot else p.sel[:1]) for j, s in enumerate(subs)]
        distances = []
        for j, s in enumerate(subs):
            halves = p.sel[1:] if j < boot else p.sel[1:1 + DISTANCE_PAIRS]
            if is_reference:  # two disjoint halves of the reference: chance's share
                rest = ~halves  # at an odd size one text more than the half: leave one out, half against half
                if size % 2:
                    rest[np.arange(rest.shape[0]), rest.argmax(axis=1)] = False
                distances.append(_distances(s, s, halves, rest))
            else:
                other = reference_pools.sel[1:1 + halves.shape[0]]
                distances.append(_distances(s, reference[j % len(reference)], halves, other))
        out = {}
        scale = math.sqrt(boot / k) if k else math.nan
        for name in pooled[0] if pooled else ():
            est = float(np.nanmean([x[name][0] for x in pooled]))
            reps = np.nanmean([x[name][1:] for x in pooled[:boot]], axis=0)
            out[name] = _bounds(name, est, reps, size, scale)
        for name in distances[0] if distances else ():
            est = float(np.nanmean([np.nanmean(x[name]) if np.isfinite(x[name]).any() else np.nan
                                    for x in distances]))
            reps = np.nanmean([x[name] for x in distances[:boot]], axis=0)
            out[name] = _bounds(name, est, reps, size, scale)
    return out


def _interval(name: str, values: np.ndarray, size: int) -> tuple[float, float, float]:
    """(estimate, low, high) of one subsample's replicates: values[0] is the estimate and values[1:] the half-sample
    replicates; a distance has only replicates (between halves), and its estimate is their mean."""
    distance = name in DISTANCES
    reps = values[int(not distance):]
    finite = reps[~np.isnan(reps)]
    est = (float(finite.mean()) if finite.size else math.nan) if distance else float(values[0])
    return _bounds(name, est, reps, size, 1.0)


def _bounds(name: str, est: float, reps: np.ndarray, size: int, scale: float) -> tuple[float, float, float]:
    """The estimate plus the centred 2.5% and 97.5% quantiles of the replicates, scaled by sqrt(h / (m - h)) and by
    `scale`, clipped to the metric's range."""
    reps = reps[~np.isnan(reps)]
    if math.isnan(est) or reps.size < 2 or size < 2:  # one text a subsample: no half to draw
        return est, math.nan, math.nan
    half = size // 2
    tails = [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]
    lo, hi = est + scale * math.sqrt(half / (size - half)) * (np.quantile(reps, tails) - reps.mean())
    top = math.inf if name in UNBOUNDED else 1.0
    return est, float(min(max(lo, 0.0), est)), float(max(min(hi, top), est))
