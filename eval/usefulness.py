"""What sampled titles are good for, and which temperature makes the most useful ones: class fidelity,
train-on-synthetic/test-on-real (TSTR), augmentation of scarce real data, MAUVE and k-nearest-neighbour precision
and recall on character features, and a recommended temperature.

Everything here reads the groups a report has already streamed (eval.scoring.Read: each group's seeded subset of
texts) and the run's own real titles (reference.json.xz), so it works offline and its cost does not grow with the
number of samples.

- **The judge** (`judge`): an independent classifier, TF-IDF over character 1-5-grams (word-bounded, sublinear) and
  a logistic regression, fitted on the run's real training titles and labels. It never sees the generator.
- **Class fidelity** (samples with classes): per class x temperature, the share of samples the judge assigns to
  the class they were asked for, with a Wilson interval, beside the judge's accuracy on the real held-out titles
  (the ceiling: real titles of a class are not all recognisable either); and per temperature a confusion matrix.
- **TSTR** (samples with classes): per temperature, the same classifier fitted on a class-balanced set of
  generated titles (an equal number per class) and tested on the real held-out titles, beside TRTR: fitted on as
  many real training titles, drawn class-balanced the same way. Accuracy and macro-F1, each with a percentile
  bootstrap interval over the test titles (predictions held fixed: the classifier's own training variance is
  left out). And augmentation where real data is scarce: AUGMENT (10%) of the real training titles, drawn
  class-balanced, alone against the same titles plus the generated set.
- **MAUVE and precision/recall** (every run): eval.mauve on TF-IDF character 1-4-gram features reduced by SVD,
  the embedding fitted once on the real training titles; per class x temperature, and for samples with classes
  also every class at once (`all`: an equal number of each class's samples against every held-out title). Each
  score averages MAUVE_SEEDS k-means quantisations. The held-out titles are split in two random halves A and B;
  each group's texts (as many as a half holds) are compared with half B, and the reference row compares half A
  with half B: what chance alone gives at that size.
- **The recommendation**: the temperature with the highest TSTR accuracy where the samples have classes, else
  the highest MAUVE of every class at once (or of the samples without classes), with its interval, and every
  temperature whose interval overlaps it: not told apart at this size (overlapping 95% intervals is a
  conservative test).

A figure that needs labels is skipped on samples without classes, and one that has too few texts for a figure
(MIN_TEXTS) is skipped rather than printed as noise; `Usefulness.skipped` says which and why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

from eval import mauve as features
from toolkit import titles

CONFIDENCE = 0.95
BOOTSTRAP = 200  # replicates of the TSTR intervals
AUGMENT = 0.10  # the share of the real training titles the augmentation figure starts from
MIN_TEXTS = 20  # fewest texts per class (fidelity, TSTR) or per side (MAUVE) for a figure
MAUVE_CAP = 1000  # most texts per side of a MAUVE comparison (its k-means grows with it)
MAUVE_SEEDS = 5  # k-means quantisations a MAUVE score averages (eval.mauve: one seed's spread is wide mid-range)
COLUMNS = ("section", "class", "temperature", "figure", "value", "lo", "hi", "texts")
SECTIONS = {
    "fidelity": "class fidelity: the share of samples the judge assigns to the class asked for",
    "tstr": "train on synthetic, test on real: a classifier fitted on generated titles, tested on held-out titles",
    "augment": f"augmentation: {AUGMENT:.0%} of the real training titles, alone and with the generated titles",
    "mauve": "MAUVE and k-NN precision/recall against held-out titles, on character 1-4-gram features",
}
ALL = "all"  # the class column of a figure over every class
REAL = "real"  # the temperature column's value for a figure of real titles (ceilings, TRTR, the reference row)


def judge(texts: Sequence[str], labels: Sequence[int], seed: int = 0):
    """The independent classifier, fitted: TF-IDF over word-bounded character 1-5-grams and a logistic
    regression (scikit-learn)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True, min_df=2,
                                          dtype=np.float32),
                          LogisticRegression(C=4.0, max_iter=1000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes on tiny sets; the figures say how good it is
        return model.fit(list(texts), np.asarray(labels))


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a share (eval.mauve's) at a confidence level; (nan, nan) without trials."""
    if n <= 0:
        return math.nan, math.nan
    return features.wilson(successes, n, NormalDist().inv_cdf(0.5 + confidence / 2))


def macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Macro-F1 over `classes` labels, for rows of predictions at once ([..., n] arrays): the unweighted mean of
    each class's F1 (a class neither present nor predicted counts 0, as scikit-learn's zero_division=0)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    f1 = []
    for c in range(classes):
        tp = np.sum((predicted == c) & (truth == c), axis=-1)
        fp = np.sum((predicted == c) & (truth != c), axis=-1)
        fn = np.sum((predicted != c) & (truth == c), axis=-1)
        den = 2 * tp + fp + fn
        f1.append(np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0))
    return np.mean(f1, axis=0)


def scores(truth: np.ndarray, predicted: np.ndarray, classes: int, seed: int = 0) -> dict[str, tuple]:
    """Accuracy and macro-F1 of predictions on a test set, each (value, lo, hi): a percentile bootstrap over the
    test titles, BOOTSTRAP times, seeded."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    rows = np.random.default_rng(seed).integers(0, truth.size, (BOOTSTRAP, truth.size))
    tail = (1 - CONFIDENCE) / 2
    out = {}
    for name, value, reps in (("accuracy", np.mean(truth == predicted), np.mean(truth[rows] == predicted[rows], 1)),
                              ("macro_f1", macro_f1(truth, predicted, classes),
                               macro_f1(truth[rows], predicted[rows], classes))):
        lo, hi = np.quantile(reps, [tail, 1 - tail])
        out[name] = (float(value), float(lo), float(hi))
    return out


@dataclass(frozen=True)
class Labelled:
    """A run's real titles with their labels (those whose class training never saw are left out)."""

    classes: tuple[str, ...]
    train: list[str]
    train_labels: np.ndarray
    val: list[str]
    val_labels: np.ndarray

    @classmethod
    def of(cls, real: titles.Titles) -> Labelled | None:
        """None for titles without labels."""
        if not real.classes or real.train_labels is None or real.val_labels is None:
            return None
        train = [(t, k) for t, k in zip(real.train, real.train_labels, strict=True) if k >= 0]
        val = [(t, k) for t, k in zip(real.val, real.val_labels, strict=True) if k >= 0]
        return cls(tuple(real.classes), [t for t, _ in train], np.array([k for _, k in train], np.int64),
                   [t for t, _ in val], np.array([k for _, k in val], np.int64))

    def balanced(self, per_class: int, classes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """Indices of `per_class` random training titles of each of `classes`."""
        return np.concatenate([rng.choice(np.flatnonzero(self.train_labels == c), per_class, replace=False)
                               for c in classes])


@dataclass(frozen=True)
class Recommendation:
    """The most useful temperature by one figure, and those not told apart from it."""

    figure: str  # "TSTR accuracy" or "MAUVE"
    best: str  # the group: "T=1" (a run's), or "RUN T=1" in a comparison
    value: float
    lo: float
    hi: float
    close: tuple[str, ...]  # the other groups whose interval overlaps the best's

    def sentence(self) -> str:
        close = (f"; not told apart from it at this size: {', '.join(self.close)}" if self.close else
                 "; every other temperature is told apart from it")
        return (f"Recommended: {self.best}, the highest {self.figure} ({self.value:.3f}, "
                f"{CONFIDENCE:.0%} interval {self.lo:.3f}-{self.hi:.3f}){close}.")


@dataclass(frozen=True)
class Usefulness:
    """A run's usefulness figures."""

    table: pd.DataFrame  # COLUMNS: one figure per row
    confusion: dict[float, pd.DataFrame]  # per temperature: class asked for (rows) x the judge's class, shares
    skipped: tuple[str, ...]  # one sentence per figure left out, and why

    def recommend(self, prefix: str = "") -> list[tuple[str, str, float, float, float]]:
        """The candidates of the recommendation: (figure, group, value, lo, hi) per temperature."""
        t = self.table
        if not t.empty and (t["section"] == "tstr").any():
            rows = t[(t["section"] == "tstr") & (t["figure"] == "accuracy") & (t["temperature"] != REAL)]
            figure = "TSTR accuracy"
        else:
            rows = t[(t["section"] == "mauve") & (t["figure"] == "mauve") & (t["temperature"] != REAL)
                     & t["class"].isin((ALL, "any"))] if not t.empty else t
            figure = "MAUVE"
        return [(figure, f"{prefix}T={float(r.temperature):g}", r.value, r.lo, r.hi) for r in rows.itertuples()]


def recommend(candidates: Sequence[tuple[str, str, float, float, float]]) -> Recommendation | None:
    """The best candidate by its figure (TSTR accuracy wherever a candidate has it), and those whose interval
    overlaps its own."""
    if not candidates:
        return None
    figures = {c[0] for c in candidates}
    figure = "TSTR accuracy" if "TSTR accuracy" in figures else "MAUVE"
    rows = [c for c in candidates if c[0] == figure and not math.isnan(c[2])]
    if not rows:
        return None
    best = max(rows, key=lambda c: c[2])
    close = tuple(c[1] for c in rows if c is not best and c[4] >= best[3])
    return Recommendation(figure, best[1], best[2], best[3], best[4], close)


def usefulness(groups: dict[tuple[str | None, float], list[str]], references: dict[str | None, list[str]],
               real: titles.Titles, seed: int = 0, sections: Collection[str] = tuple(SECTIONS)) -> Usefulness:
    """The usefulness figures of one run. `groups`: per (class, temperature) the texts to judge (class None:
    samples without classes); `references`: per class the held-out titles its samples are compared with;
    `real`: the run's titles with their labels, if any; `sections`: which of SECTIONS to compute (class fidelity
    comes with TSTR and augmentation, whose judge it is)."""
    if set(sections) - set(SECTIONS):
        raise ValueError(f"unknown sections {sorted(set(sections) - set(SECTIONS))}; known: {list(SECTIONS)}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small matrices: threads only contend (3-8x slower on a busy machine) and make
        return _usefulness(groups, references, real, seed, sections)  # float sums depend on the thread count


def _usefulness(groups, references, real: titles.Titles, seed: int, sections: Collection[str]) -> Usefulness:
    rows: list[dict] = []
    skipped: list[str] = []
    confusion: dict[float, pd.DataFrame] = {}
    labelled = Labelled.of(real)
    asked = sorted({c for c, _ in groups if c is not None and c != "any"})
    if labelled is None or not asked:
        why = ("the titles the model was trained on have no labels" if labelled is None else
               "the samples have no classes (an unconditional model, or only `any`)")
        skipped += [f"class fidelity, TSTR and augmentation: {why}"]
    else:
        unknown = [c for c in asked if c not in labelled.classes]
        if unknown:
            skipped += [f"class fidelity, TSTR and augmentation: the samples' classes {unknown} are not among the "
                        f"training titles' {list(labelled.classes)}"]
        elif {"fidelity", "tstr", "augment"} & set(sections):
            skipped += _labelled(groups, labelled, asked, rows, confusion, seed, "augment" in sections)
    if "mauve" not in sections:
        return Usefulness(pd.DataFrame(rows, columns=list(COLUMNS)), confusion, tuple(skipped))
    if asked and None not in references:  # every class at once, against every held-out title
        pooled = {}
        for t in sorted({t for c, t in groups if c in asked}):
            per_class = min(len(groups.get((c, t), [])) for c in asked)
            rng = np.random.default_rng(seed)
            pooled[(None, t)] = [x for c in asked for x in _pick(groups.get((c, t), []), per_class, rng)]
        groups, references = {**pooled, **groups}, {None: real.val, **references}
    skipped += _mauve(groups, references, real, rows, seed)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return Usefulness(table, confusion, tuple(skipped))


def _row(section: str, label: str, temperature, figure: str, value: float, lo: float, hi: float,
         texts: int) -> dict:
    return dict(section=section, **{"class": label}, temperature=temperature, figure=figure, value=value, lo=lo,
                hi=hi, texts=texts)


def _labelled(groups, labelled: Labelled, asked: list[str], rows: list[dict],
              confusion: dict[float, pd.DataFrame], seed: int, augment: bool = True) -> list[str]:
    """Fidelity, TSTR and (`augment`) augmentation; returns what was skipped."""
    skipped = []
    ids = [labelled.classes.index(c) for c in asked]
    val_rows = np.isin(labelled.val_labels, ids)
    val, val_labels = [t for t, k in zip(labelled.val, val_rows, strict=True) if k], labelled.val_labels[val_rows]
    if min(np.sum(labelled.train_labels == i) for i in ids) < MIN_TEXTS or val_labels.size < MIN_TEXTS:
        return [f"class fidelity, TSTR and augmentation: fewer than {MIN_TEXTS} real titles of a class to train or "
                "test a classifier on"]
    clf = judge(labelled.train, labelled.train_labels, seed)
    ceiling = clf.predict(val) == val_labels
    for c, i in zip(asked, ids, strict=True):
        own = ceiling[val_labels == i]
        rows.append(_row("fidelity", c, REAL, "judge_accuracy", float(own.mean()) if own.size else math.nan,
                         *wilson(own.sum(), own.size), int(own.size)))
    rows.append(_row("fidelity", ALL, REAL, "judge_accuracy", float(ceiling.mean()),
                     *wilson(ceiling.sum(), ceiling.size), int(ceiling.size)))
    temperatures = sorted({t for c, t in groups if c in asked})
    generated: dict[float, tuple[list[str], np.ndarray]] = {}
    for t in temperatures:
        texts = [(x, i) for c, i in zip(asked, ids, strict=True) for x in groups.get((c, t), [])]
        if not texts:
            continue
        predicted = clf.predict([x for x, _ in texts])
        wanted = np.array([i for _, i in texts])
        for c, i in zip(asked, ids, strict=True):
            hit = predicted[wanted == i] == i
            if hit.size < MIN_TEXTS:
                skipped.append(f"class fidelity of {c} at T={t:g}: {hit.size} samples, fewer than {MIN_TEXTS}")
                continue
            rows.append(_row("fidelity", c, t, "fidelity", float(hit.mean()), *wilson(hit.sum(), hit.size),
                             int(hit.size)))
        matrix = pd.crosstab(pd.Categorical([labelled.classes[i] for i in wanted], asked),
                             pd.Categorical([labelled.classes[i] for i in predicted], list(labelled.classes)),
                             normalize="index", dropna=False)
        matrix.index.name, matrix.columns.name = "asked", "judged"
        confusion[t] = matrix
        per_class = min(len(groups.get((c, t), [])) for c in asked)
        if per_class >= MIN_TEXTS:
            rng = np.random.default_rng(seed)
            generated[t] = ([x for c in asked for x in _pick(groups[(c, t)], per_class, rng)],
                            np.repeat(ids, per_class))
    if len(asked) < 2:
        return [*skipped, f"TSTR and augmentation: the samples ask for one class ({asked[0]}); a classifier needs two"]
    if not generated:
        return [*skipped, f"TSTR and augmentation: fewer than {MIN_TEXTS} samples of a class at every temperature"]
    real_per_class = min(int(np.sum(labelled.train_labels == i)) for i in ids)
    size = min(min(len(y) for _, y in generated.values()) // len(ids), real_per_class)
    rng = np.random.default_rng(seed)
    trtr = labelled.balanced(size, ids, rng)
    measured = scores(val_labels, judge([labelled.train[j] for j in trtr], labelled.train_labels[trtr], seed)
                      .predict(val), len(labelled.classes), seed)
    for figure, (value, lo, hi) in measured.items():
        rows.append(_row("tstr", ALL, REAL, figure, value, lo, hi, size * len(ids)))
    scarce_size = max(int(real_per_class * AUGMENT), 1)
    scarce = labelled.balanced(scarce_size, ids, np.random.default_rng(seed + 1))
    scarce_texts, scarce_labels = [labelled.train[j] for j in scarce], labelled.train_labels[scarce]
    if augment:
        measured = scores(val_labels, judge(scarce_texts, scarce_labels, seed).predict(val), len(labelled.classes),
                          seed)
        for figure, (value, lo, hi) in measured.items():
            rows.append(_row("augment", ALL, REAL, figure, value, lo, hi, scarce.size))
    for t, (texts, labels) in generated.items():
        keep = np.concatenate([np.flatnonzero(labels == i)[:size] for i in ids])
        texts, labels = [texts[j] for j in keep], labels[keep]
        measured = scores(val_labels, judge(texts, labels, seed).predict(val), len(labelled.classes), seed)
        for figure, (value, lo, hi) in measured.items():
            rows.append(_row("tstr", ALL, t, figure, value, lo, hi, len(texts)))
        if not augment:
            continue
        measured = scores(val_labels, judge([*scarce_texts, *texts], np.concatenate([scarce_labels, labels]), seed)
                          .predict(val), len(labelled.classes), seed)
        for figure, (value, lo, hi) in measured.items():
            rows.append(_row("augment", ALL, t, figure, value, lo, hi, scarce.size + len(texts)))
    return skipped


def _pick(texts: list[str], n: int, rng: np.random.Generator) -> list[str]:
    return [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]


def _mauve(groups, references: dict[str | None, list[str]], real: titles.Titles, rows: list[dict],
           seed: int) -> list[str]:
    """MAUVE and precision/recall per class x temperature against half the class's held-out titles, and the
    halves against each other; returns what was skipped."""
    if len(real.train) < MIN_TEXTS:
        return [f"MAUVE and precision/recall: fewer than {MIN_TEXTS} training titles to fit the features on"]
    embed = features.Embedding.fit(real.train, seed=seed)
    skipped = []
    for label, reference in references.items():
        name = ALL if label is None else label
        half = min(len(reference) // 2, MAUVE_CAP)
        if half < MIN_TEXTS:
            skipped.append(f"MAUVE and precision/recall{'' if label is None else ' of ' + label}: "
                           f"{len(reference)} held-out titles, fewer than {2 * MIN_TEXTS}")
            continue
        order = np.random.default_rng(seed).permutation(len(reference))
        side_a = embed([reference[i] for i in order[:half]])
        side_b = embed([reference[i] for i in order[half:2 * half]])
        _compare(rows, name, REAL, side_a, side_b, seed)
        for (c, t), texts in groups.items():
            if c != label:
                continue
            if len(texts) < MIN_TEXTS:
                skipped.append(f"MAUVE of {name} at T={t:g}: {len(texts)} samples, fewer than {MIN_TEXTS}")
                continue
            size = min(len(texts), half)
            _compare(rows, name, t, embed(_pick(texts, size, np.random.default_rng(seed))), side_b[:size]
                     if size < half else side_b, seed)
    return skipped


def _compare(rows: list[dict], name: str, temperature, generated: np.ndarray, real: np.ndarray, seed: int) -> None:
    m = features.mauve(generated, real, seed=seed, seeds=MAUVE_SEEDS)
    rows.append(_row("mauve", name, temperature, "mauve", m.mauve, m.lo, m.hi, len(generated)))
    pr = features.precision_recall(real, generated)
    rows.append(_row("mauve", name, temperature, "precision", pr.precision, pr.precision_lo, pr.precision_hi,
                     len(generated)))
    rows.append(_row("mauve", name, temperature, "recall", pr.recall, pr.recall_lo, pr.recall_hi, len(generated)))
