"""Diversity, repetition and novelty of sampled titles, per temperature, beside the same figures for real titles.

Words are `text.lower().split()`; n-grams are consecutive words within one text. Nothing here needs more than
numpy and pandas: reports run where only onnxruntime is installed.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Column order of the metrics table, with the definitions the report prints as its legend.
METRICS = {
    "samples": "texts in the group, duplicates included",
    "distinct_1": "distinct words in the group / words in the group (Li et al. 2016); falls as groups grow, so "
                  "compare groups of equal size",
    "distinct_2": "distinct word bigrams in the group / words in the group",
    "distinct_3": "distinct word trigrams in the group / words in the group",
    "self_bleu": "mean BLEU-4 of each text against all the others in its group (Zhu et al. 2018; NLTK smoothing "
                 "method 1); lower is more diverse",
    "repetition_rate": "share of texts in which some word bigram occurs more than once",
    "seq_rep_2": "mean over texts with a bigram of 1 - distinct bigrams / bigrams (Welleck et al. 2019)",
    "duplicate_rate": "1 - distinct texts / texts",
    "novelty": "share of texts that are not exactly a training title (surrounding whitespace ignored)",
    "copy_rate": "1 - novelty: share of texts copied whole from the training titles",
    "novel_3gram_rate": "share of word trigrams (with multiplicity) found in no training title (McCoy et al. 2021)",
    "mean_length": "mean characters per text",
    "finished_rate": "share of texts that ended with end-of-title rather than at the length limit",
}
SMOOTHING_EPSILON = 0.1  # NLTK SmoothingFunction().method1's count for an n-gram order without matches


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


@dataclass(frozen=True)
class TrainingTitles:
    """What novelty compares against, built once per table: a training set has ~10^5 titles."""

    titles: frozenset[str]
    trigrams: frozenset[tuple[str, ...]]

    @classmethod
    def build(cls, titles: Iterable[str]) -> TrainingTitles:
        titles = [t.strip() for t in titles]
        return cls(frozenset(titles), frozenset(g for t in titles for g in ngrams(words(t), 3)))


def self_bleu(texts: Sequence[Sequence[str]]) -> float:
    """Mean sentence BLEU-4 of each tokenised text against all the other texts as references.

    Equals the mean of NLTK's `sentence_bleu(others, text, smoothing_function=SmoothingFunction().method1)` but
    costs O(n-grams), not O(texts²): per n-gram the group keeps its largest count, how many texts hold it and the
    second-largest count, so the clipping limit without a text's own counts is a lookup; the closest reference
    length likewise excludes one occurrence of the text's own length. A group of one text has no references: NaN.
    """
    if len(texts) < 2:
        return math.nan
    matches, totals = [], []  # [order][text]
    for order in range(1, 5):
        counts = [Counter(ngrams(t, order)) for t in texts]
        top: dict[tuple[str, ...], list[int]] = {}  # n-gram -> [largest count, texts holding it, second largest]
        for c in counts:
            for gram, k in c.items():
                entry = top.get(gram)
                if entry is None:
                    top[gram] = [k, 1, 0]
                elif k > entry[0]:
                    top[gram] = [k, 1, entry[0]]
                elif k == entry[0]:
                    entry[1] += 1
                elif k > entry[2]:
                    entry[2] = k
        clipped = []
        for c in counts:
            total = 0
            for gram, k in c.items():
                largest, holders, second = top[gram]
                total += min(k, second if k == largest and holders == 1 else largest)
            clipped.append(total)
        matches.append(clipped)
        totals.append([sum(c.values()) for c in counts])
    lengths = Counter(len(t) for t in texts)
    closest = {h: _closest_other_length(h, lengths) for h in lengths}
    scores = [_bleu([m[i] for m in matches], [n[i] for n in totals], len(t), closest[len(t)])
              for i, t in enumerate(texts)]
    return math.fsum(scores) / len(texts)


def _closest_other_length(h: int, lengths: Counter[int]) -> int:
    """NLTK's closest reference length (ties to the shorter) when one text of length `h` is not a reference."""
    if lengths[h] > 1:
        return h
    others = sorted(lengths)
    i = bisect_left(others, h)
    near = others[i - 1:i] + others[i + 1:i + 2]  # the next shorter and the next longer length, where they exist
    return min(near, key=lambda r: (abs(r - h), r))


def _bleu(matches: Sequence[int], totals: Sequence[int], hyp_len: int, ref_len: int) -> float:
    """NLTK's sentence BLEU-4 from clipped matches and n-gram counts per order, with its float operations."""
    if matches[0] == 0:
        return 0.0
    precisions = [(m or SMOOTHING_EPSILON) / max(1, t) for m, t in zip(matches, totals, strict=True)]
    penalty = 1 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return penalty * math.exp(math.fsum(0.25 * math.log(p) for p in precisions))


def group_metrics(texts: Sequence[str], finished: Sequence[bool], train: TrainingTitles) -> dict[str, float]:
    """Every metric of METRICS for one group of texts (all the samples at one temperature, or real titles).

    Ratios with nothing to count are 0: distinct-n without words, seq_rep_2 without bigrams, novel_3gram_rate
    without trigrams. self_bleu is NaN for a group of one text.
    """
    tokens = [words(t) for t in texts]
    n_words = sum(len(t) for t in tokens)
    bigrams = [ngrams(t, 2) for t in tokens]
    trigrams = [g for t in tokens for g in ngrams(t, 3)]
    with_bigrams = [b for b in bigrams if b]
    novelty = float(np.mean([t.strip() not in train.titles for t in texts]))
    distinct = {f"distinct_{n}": len({g for t in tokens for g in ngrams(t, n)}) / n_words if n_words else 0.0
                for n in (1, 2, 3)}
    return {
        "samples": len(texts),
        **distinct,
        "self_bleu": self_bleu(tokens),
        "repetition_rate": float(np.mean([len(set(b)) < len(b) for b in bigrams])),
        "seq_rep_2": float(np.mean([1 - len(set(b)) / len(b) for b in with_bigrams])) if with_bigrams else 0.0,
        "duplicate_rate": 1 - len(set(texts)) / len(texts),
        "novelty": novelty,
        "copy_rate": 1 - novelty,
        "novel_3gram_rate": float(np.mean([g not in train.trigrams for g in trigrams])) if trigrams else 0.0,
        "mean_length": float(np.mean([len(t) for t in texts])),
        "finished_rate": float(np.mean(finished)),
    }


def metrics_table(samples: pd.DataFrame, train_titles: Iterable[str], val_titles: Sequence[str]) -> pd.DataFrame:
    """One row per temperature (columns `temperature`, `text`, `finished` of samples.csv), sorted, then a
    `reference` row for the held-out validation titles, so a reader sees which temperature looks like real text."""
    train = TrainingTitles.build(train_titles)
    rows = [{"group": f"T={t:g}", "temperature": t, **group_metrics(g["text"].tolist(), g["finished"].tolist(), train)}
            for t, g in samples.groupby("temperature", sort=True)]
    rows.append({"group": "reference", "temperature": math.nan,
                 **group_metrics(list(val_titles), [True] * len(val_titles), train)})
    return pd.DataFrame(rows, columns=["group", "temperature", *METRICS])
