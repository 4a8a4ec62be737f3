"""Diversity, repetition, novelty, distance to real titles and model likelihood of sampled titles, per
temperature, beside the same figures for real titles, each with a confidence interval.

Fair comparison: distinct-n, self-BLEU, duplicates, Zipf and the distances depend on how many texts a group holds,
so every group (each temperature and the reference) is scored on subsamples of one common size: k disjoint random
subsamples where a group holds k times that size, averaged.

Distances to the reference are measured between halves (half the common size on each side), averaged over the
bootstrap's halves, and the reference row holds the distance between two disjoint halves of the reference: what
chance alone gives at that size, the floor a temperature can reach.

Intervals: a bootstrap over texts that draws half of each subsample without replacement (B times, seeded), then
scales the spread by sqrt(h / (m - h)) for h of m texts drawn, which makes its variance that of the usual
bootstrap for a mean. Drawing with replacement would put the same text twice in a group, which distinct-n,
self-BLEU and the duplicate rate count as repetition. The interval is the estimate plus the centred 2.5% and
97.5% quantiles of the scaled replicates.

Words are `text.lower().split()`; n-grams are consecutive words within one text. Everything is numpy arrays over
all replicates at once: 10,000 texts a group cost seconds, not minutes.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eval.novelty import (
    CHAR_ORDERS,
    NEAR_COPY_CAP,
    NEAR_COPY_THRESHOLD,
    Novelty,
    TrainingTitles,
    ngrams,
    novelty,
    words,
)
from toolkit.files import UsageError

# Column order of the metrics table, with the definitions the report prints as its legend.
METRICS = {
    "distinct_1": "distinct words / words (Li et al. 2016)",
    "distinct_2": "distinct word bigrams / words",
    "distinct_3": "distinct word trigrams / words",
    "self_bleu": "mean BLEU-4 of each text against all the others (Zhu et al. 2018; NLTK smoothing method 1); "
                 "lower is more diverse",
    "duplicate_rate": "1 - distinct texts / texts",
    "zipf": "Zipf coefficient: minus the least-squares slope of log word frequency on log rank, over all words",
    "repetition_rate": "share of texts in which some word bigram occurs more than once",
    "seq_rep_2": "mean over texts with a bigram of 1 - distinct bigrams / bigrams (Welleck et al. 2019)",
    "novelty": "share of texts that are not exactly a training title (surrounding whitespace ignored)",
    "copy_rate": "1 - novelty: share of texts copied whole from the training titles",
    "near_copy_rate": f"share of texts within normalised edit distance {NEAR_COPY_THRESHOLD:g} (Levenshtein "
                      f"distance / longer length) of some training title; searched in up to {NEAR_COPY_CAP:,} "
                      "texts a group",
    "novel_3gram_rate": "share of word trigrams (with multiplicity) found in no training title (McCoy et al. 2021)",
    "length_ks": "Kolmogorov-Smirnov statistic between the group's and the reference's lengths in characters",
    "length_wasserstein": "Wasserstein distance between the group's and the reference's lengths, in characters",
    "js_char_bigrams": "Jensen-Shannon divergence (bits, 0 to 1) between the group's and the reference's "
                       "character-bigram distributions",
    "js_words": "Jensen-Shannon divergence (bits) between the group's and the reference's word distributions. "
                "Distances are measured between halves (half the common size each side), averaged over the "
                "bootstrap's halves; the reference row is the distance between two disjoint halves of the "
                "reference: what chance alone gives at that size",
    "mean_length": "mean characters per text",
    "finished_rate": "share of texts that ended with end-of-title rather than at the length limit",
    "bpc": "bits per character under the model (its raw distribution, end-of-title included); the reference "
           "row is run.json's reference_bpc",
}
CURVE = {n: f"novel_char_{n}" for n in CHAR_ORDERS}  # the novelty curve: one column per n-gram length
DISTANCES = ("length_ks", "length_wasserstein", "js_char_bigrams", "js_words")
UNBOUNDED = {"zipf", "length_wasserstein", "mean_length", "bpc"}  # the other metrics lie in [0, 1]
BOOTSTRAP = 200  # replicates
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
class Texts:
    """What the metrics read of a list of texts, as arrays with one row per text."""

    grams: tuple[Sparse, ...]  # word n-grams of orders 1-4 (ids shared by all the texts of a report)
    char_bigrams: Sparse
    text_id: np.ndarray  # equal ids, equal texts
    n_words: np.ndarray
    length: np.ndarray
    rates: dict[str, tuple[np.ndarray, np.ndarray]]  # per text, numerator and denominator of each rate

    @classmethod
    def build(cls, texts: Sequence[str], finished: np.ndarray, found: Novelty | None = None,
              logprob: np.ndarray | None = None) -> Texts:
        """Without `found` (the comparison with the training titles), the novelty rates are left out."""
        tokens = [words(t) for t in texts]
        grams = _word_grams(tokens)
        bigrams = [ngrams(t, 2) for t in tokens]
        length = np.fromiter(map(len, texts), np.float64, len(texts))
        repeated = np.array([len(set(b)) < len(b) for b in bigrams], np.float64)
        seq_rep = np.array([1 - len(set(b)) / len(b) if b else 0.0 for b in bigrams])
        ones = np.ones(len(texts))
        rates = {
            "repetition_rate": (repeated, ones),
            "seq_rep_2": (seq_rep, np.array([bool(b) for b in bigrams], np.float64)),
            "mean_length": (length, ones),
            "finished_rate": (np.asarray(finished, np.float64), ones),
        }
        if found is not None:
            rates |= {
                "novelty": (1.0 - found.copy, ones),
                "near_copy_rate": (np.nan_to_num(found.near_copy), (~np.isnan(found.near_copy)).astype(np.float64)),
                "novel_3gram_rate": (found.novel_trigrams, found.trigrams),
                **{name: (found.novel_chars[:, j], found.chars[:, j]) for j, name in enumerate(CURVE.values())},
            }
        if logprob is not None:
            rates["bpc"] = (-np.asarray(logprob, np.float64) / math.log(2), length + finished)
        return cls(grams, _char_bigrams(texts), pd.factorize(pd.Series(texts, dtype=object))[0],
                   np.array([len(t) for t in tokens], np.int64), length, rates)

    def take(self, rows: np.ndarray) -> Texts:
        return Texts(tuple(g.take(rows) for g in self.grams), self.char_bigrams.take(rows), self.text_id[rows],
                     self.n_words[rows], self.length[rows],
                     {k: (num[rows], den[rows]) for k, (num, den) in self.rates.items()})


def _word_grams(tokens: list[list[str]]) -> tuple[Sparse, ...]:
    ids: dict[tuple[str, ...], int] = {}
    out = []
    for n in range(1, 5):
        owner, found = [], []
        for i, t in enumerate(tokens):
            for g in ngrams(t, n):
                owner.append(i)
                found.append(ids.setdefault(g, len(ids)))
        out.append(Sparse.build(np.array(owner, np.int64), np.array(found, np.int64), len(tokens)))
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
    """Every metric but the distances, for each replicate (row of `sel`) of one subsample."""
    chosen = sel.astype(np.float64)
    out = {f"distinct_{n}": _distinct(texts.grams[n - 1], texts.n_words, chosen) for n in (1, 2, 3)}
    out["self_bleu"] = _self_bleu(texts.grams, texts.n_words, chosen)
    distinct_texts = _counts(np.arange(texts.text_id.size), texts.text_id, None, chosen)
    out["duplicate_rate"] = 1 - _ratio((distinct_texts > 0).sum(axis=1), chosen.sum(axis=1), 1.0)
    out["zipf"] = _zipf(texts.grams[0], chosen)
    for name, (num, den) in texts.rates.items():
        out[name] = _ratio(chosen @ num, chosen @ den, math.nan if name in ("near_copy_rate", "bpc") else 0.0)
    return out


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


def _distances(a: Texts, b: Texts, sel_a: np.ndarray, sel_b: np.ndarray) -> dict[str, np.ndarray]:
    """Distances between group a and group b, replicate by replicate (row r of sel_a against row r of sel_b)."""
    sel_a, sel_b = sel_a.astype(np.float64), sel_b.astype(np.float64)
    support, ids = np.unique(np.concatenate([a.length, b.length]), return_inverse=True)
    n = a.length.size
    cdf = [np.cumsum(_counts(np.arange(n), ids[:n], None, sel_a, support.size), axis=1),
           np.cumsum(_counts(np.arange(b.length.size), ids[n:], None, sel_b, support.size), axis=1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(cdf[0] / cdf[0][:, -1:] - cdf[1] / cdf[1][:, -1:])
    return {"length_ks": gap.max(axis=1),
            "length_wasserstein": (gap[:, :-1] * np.diff(support)).sum(axis=1),
            "js_char_bigrams": js_divergence(*_distribution(a.char_bigrams, b.char_bigrams, sel_a, sel_b)),
            "js_words": js_divergence(*_distribution(a.grams[0], b.grams[0], sel_a, sel_b))}


def distances(a: Sequence[str], b: Sequence[str]) -> dict[str, float]:
    """The distances of DISTANCES between two whole groups of texts (no subsampling)."""
    texts = Texts.build([*a, *b], np.ones(len(a) + len(b), bool))
    found = _distances(texts.take(np.arange(len(a))), texts.take(np.arange(len(a), len(a) + len(b))),
                       np.ones((1, len(a)), bool), np.ones((1, len(b)), bool))
    return {k: float(v[0]) for k, v in found.items()}


@dataclass(frozen=True)
class Group:
    label: str
    temperature: float
    texts: list[str]
    finished: np.ndarray
    logprob: np.ndarray | None = None


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


def metrics_table(samples: pd.DataFrame, train: TrainingTitles | Sequence[str], val_titles: Sequence[str], *,
                  size: int | None = None, reference_bpc: float | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per temperature (columns `temperature`, `text`, `finished`, optionally `logprob`, of samples.csv),
    sorted, then a `reference` row for the held-out titles, so a reader sees which temperature looks like real
    text. Each metric has `_lo` and `_hi` columns: its confidence interval. `size` is the common subsample size
    (default: the smallest group).
    """
    train = train if isinstance(train, TrainingTitles) else TrainingTitles(train)
    logprob = "logprob" in samples
    groups = [Group(f"T={t:g}", float(t), g["text"].tolist(), g["finished"].to_numpy(bool),
                    g["logprob"].to_numpy(np.float64) if logprob else None)
              for t, g in samples.groupby("temperature", sort=True)]
    groups.append(Group("reference", math.nan, list(val_titles), np.ones(len(val_titles), bool),
                        np.zeros(len(val_titles)) if logprob else None))  # its bpc is reference_bpc instead
    smallest = min(groups, key=lambda g: len(g.texts))
    if size is not None and not 1 <= size <= len(smallest.texts):
        raise UsageError(f"--size {size} must lie between 1 and the smallest group ({smallest.label} holds "
                         f"{len(smallest.texts)} texts); pass --size {len(smallest.texts)} or less")
    size = len(smallest.texts) if size is None else size
    pools = [_pools(g, size, seed) for g in groups]
    # one Texts for every scored text of every group, so n-gram ids are shared; near-copies only in the first
    # NEAR_COPY_CAP texts of each group, spread over its subsamples
    texts, finished, lp, searched, offsets = [], [], [], [], [0]
    for g, p in zip(groups, pools, strict=True):
        rows = p.rows.ravel()
        texts += [g.texts[i] for i in rows]
        finished.append(g.finished[rows])
        lp.append(g.logprob[rows] if g.logprob is not None else np.zeros(rows.size))
        k = len(p.rows)  # the cap's texts spread over the subsamples as evenly as they go
        quota = NEAR_COPY_CAP // k + (np.arange(k) < NEAR_COPY_CAP % k)
        searched.append((np.arange(size)[None, :] < quota[:, None]).ravel())
        offsets.append(offsets[-1] + rows.size)
    everything = Texts.build(texts, np.concatenate(finished), novelty(texts, train, np.concatenate(searched)),
                             np.concatenate(lp) if logprob else None)
    subsamples = [[everything.take(np.arange(offsets[i] + j * size, offsets[i] + (j + 1) * size))
                   for j in range(len(p.rows))] for i, p in enumerate(pools)]
    reference, ref_pools = subsamples[-1], pools[-1]
    rows = []
    for g, p, subs in zip(groups, pools, subsamples, strict=True):
        values = _mean([_pool(s, p.sel) for s in subs])
        if g.label == "reference":  # distances between two disjoint halves of the reference: chance's share
            values |= _mean([_distances(s, s, p.sel[1:], ~p.sel[1:]) for s in subs])
        else:
            values |= _mean([_distances(s, reference[j % len(reference)], p.sel[1:], ref_pools.sel[1:])
                             for j, s in enumerate(subs)])
        row = {"group": g.label, "temperature": g.temperature, "samples": len(g.texts), "size": size,
               "subsamples": len(p.rows)}
        for name in [*METRICS, *CURVE.values()]:
            if name == "copy_rate":
                est, lo, hi = 1 - row["novelty"], 1 - row["novelty_hi"], 1 - row["novelty_lo"]
            elif name == "bpc" and g.label == "reference":  # a figure of the sampler's, without an interval
                est, lo, hi = math.nan if reference_bpc is None else float(reference_bpc), math.nan, math.nan
            elif name not in values:
                est = lo = hi = math.nan
            else:
                est, lo, hi = _interval(name, values[name], size)
            row |= {name: est, f"{name}_lo": lo, f"{name}_hi": hi}
        rows.append(row)
    return pd.DataFrame(rows)


def _mean(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Average each metric's replicates over a group's subsamples."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        return {k: np.nanmean([p[k] for p in parts], axis=0) for k in parts[0]}


def _interval(name: str, values: np.ndarray, size: int) -> tuple[float, float, float]:
    """(estimate, low, high): values[0] is the estimate and values[1:] the half-sample replicates; a distance has
    only replicates (between halves), and its estimate is their mean."""
    distance = name in DISTANCES
    reps = values[int(not distance):]
    reps = reps[~np.isnan(reps)]
    est = (float(reps.mean()) if reps.size else math.nan) if distance else float(values[0])
    if math.isnan(est) or reps.size < 2 or size < 2:  # one text a subsample: no half to draw
        return est, math.nan, math.nan
    half = size // 2
    tails = [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]
    lo, hi = est + math.sqrt(half / (size - half)) * (np.quantile(reps, tails) - reps.mean())
    top = math.inf if name in UNBOUNDED else 1.0
    return est, float(min(max(lo, 0.0), est)), float(max(min(hi, top), est))
