"""MAUVE and k-nearest-neighbour precision/recall of generated titles against real ones, on character features.

- **Features** (`Embedding`): TF-IDF over character 1-4-grams (case kept, sublinear term frequency), reduced by a
  truncated SVD (latent semantic analysis) and l2-normalised. It is fitted once per report on real training titles
  and applied to every group, so that all groups share one feature space. No neural model: no GPU, no network.
- **MAUVE** (Pillutla et al., "MAUVE: Measuring the Gap Between Neural Text and Human Text using Divergence
  Frontiers", NeurIPS 2021; the reference implementation `mauve-text` 0.4, `compute_mauve`, followed step by step):
  the features of both sides, stacked [q; p], are l2-normalised, reduced by PCA to the first components that
  reach 90% of the variance, and quantised jointly by k-means (`quantise`) into max(2, round(min(n_p, n_q) / 10))
  buckets; the two bucket histograms give the divergence curve (`divergence_curve`): for 25 mixtures
  r = w p + (1 - w) q, the points (exp(-c KL(q || r)), exp(-c KL(p || r))) with c = 5, plus the extreme points; and
  MAUVE is the area under it (`mauve_area`), 1 for the same distribution, towards 0 for disjoint ones. The
  k-means is scikit-learn's, set as faiss's is in mauve-text (initial centres drawn among the points, the best of 5
  runs, up to 500 iterations, seeded), but not the same code, so a score differs from `mauve-text`'s on the same
  features by about as much as either differs between its own seeds.
  `mauve` adds a bootstrap interval over texts with the quantisation held fixed (percentile, re-centred on the
  estimate: see `mauve`).
- **Precision and recall** (Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing Generative
  Models", NeurIPS 2019): the real manifold is the union of the balls around each real point with as radius the
  distance to its k-th nearest other real point; precision is the share of generated points inside it, recall the
  share of real points inside the generated manifold (built the same way from the generated points); Euclidean
  distance; each share with a Wilson score interval (`wilson`). On these features precision is weak: at a few
  hundred titles a side, random letter strings score ~0.99 (they fall near the centre of the real cloud, inside
  many of its wide k = 3 balls) while recall and MAUVE put them near 0; read precision with recall.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

NGRAMS = (1, 4)  # character n-gram lengths of the features
EXPLAINED_VARIANCE = 0.9  # PCA before k-means keeps the first components that reach this share of the variance
KMEANS_RESTARTS = 5  # mauve-text's kmeans_num_redo: the best of this many k-means runs is kept
KMEANS_MAX_ITER = 500  # mauve-text's kmeans_max_iter
WEIGHTS = 25  # mixture weights of the divergence curve (mauve-text's divergence_curve_discretization_size)
SCALE = 5.0  # the constant c of the divergence curve (mauve-text's mauve_scaling_factor)
_BLOCK = 1024  # rows of a distance matrix computed at a time: bounds precision_recall's memory (~8 kB per column)


class Embedding:
    """Character 1-4-gram TF-IDF features reduced by truncated SVD and l2-normalised: rows of [n, dims] float64.

    Case is kept (lowercase=False): how a generator capitalises a title is part of what tells it from a real one.
    """

    def __init__(self, vectorizer: TfidfVectorizer, svd: TruncatedSVD) -> None:
        self.vectorizer = vectorizer
        self.svd = svd

    @property
    def dims(self) -> int:
        """The number of features per text (the requested dims, capped for tiny fitting sets)."""
        return int(self.svd.n_components)

    @classmethod
    def fit(cls, texts: Sequence[str], *, dims: int = 100, seed: int = 0) -> Embedding:
        """Fit the n-gram vocabulary, its IDF weights and the SVD on `texts` (the real training titles). `dims` is
        capped below the vocabulary size and the number of texts when they are tiny."""
        texts = list(texts)
        if len(texts) < 2:
            raise ValueError(f"Embedding.fit needs at least 2 texts, got {len(texts)}")
        if dims < 1:
            raise ValueError(f"dims must be at least 1, got {dims}")
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, sublinear_tf=True, lowercase=False,
                                     dtype=np.float64)
        try:
            tfidf = vectorizer.fit_transform(texts)
        except ValueError as e:  # only empty texts: an empty vocabulary
            raise ValueError(f"Embedding.fit found no character n-grams in its {len(texts)} texts") from e
        cap = min(dims, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
        if cap < 1:
            raise ValueError(f"Embedding.fit needs at least 2 distinct character n-grams, got {tfidf.shape[1]}")
        svd = TruncatedSVD(n_components=cap, random_state=seed).fit(tfidf)
        return cls(vectorizer, svd)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The [len(texts), dims] features of `texts`; a text with no known n-gram is a row of zeros."""
        reduced = self.svd.transform(self.vectorizer.transform(list(texts)))
        return normalize(reduced, norm="l2").astype(np.float64, copy=False)


@dataclass(frozen=True, eq=False)
class Mauve:
    """A MAUVE score, its bootstrap interval, and the quantisation it was computed on. (eq=False: arrays inside.)"""

    mauve: float
    lo: float  # bootstrap interval over texts, quantisation held fixed (see `mauve`); nan where boot = 0
    hi: float
    buckets: int  # the k-means clusters: the histograms' length
    p_hist: np.ndarray  # share of the p texts (generated) per bucket
    q_hist: np.ndarray  # share of the q texts (real) per bucket


@dataclass(frozen=True)
class PrecisionRecall:
    """Kynkäänniemi et al.'s precision (generated texts inside the real manifold) and recall (real texts inside the
    generated manifold), each with a Wilson score interval."""

    precision: float
    precision_lo: float
    precision_hi: float
    recall: float
    recall_lo: float
    recall_hi: float
    k: int


def _features(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as a finite float64 [n, d] array of at least 2 rows, or a ValueError."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of features [texts, dims], got shape {x.shape}")
    if len(x) < 2:
        raise ValueError(f"{name} has {len(x)} text(s); MAUVE and precision/recall need at least 2 a side")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite features")
    return x


def _pair(p: np.ndarray, q: np.ndarray, names: tuple[str, str] = ("p", "q")) -> tuple[np.ndarray, np.ndarray]:
    p, q = _features(p, names[0]), _features(q, names[1])
    if p.shape[1] != q.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} have different feature dims: {p.shape[1]} and {q.shape[1]}")
    return p, q


def _reduce(p: np.ndarray, q: np.ndarray) -> np.ndarray | None:
    """The stacked [q; p] rows l2-normalised and reduced by PCA to the first components reaching 90% of the
    variance, as float32 (mauve-text clusters in float32, faiss's); None where every row is the same."""
    data = normalize(np.vstack([q, p]), norm="l2")
    if len(np.unique(data, axis=0)) < 2:
        return None
    pca = PCA(n_components=None).fit(data)  # a full SVD: no randomness
    keep = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= EXPLAINED_VARIANCE)) + 1
    return pca.transform(data)[:, :keep].astype(np.float32)


def _cluster(reduced: np.ndarray | None, rows: int, buckets: int, seed: int) -> np.ndarray:
    """Each reduced row's bucket by k-means (all rows equal, or a single bucket: every row in bucket 0)."""
    labels = np.zeros(rows, dtype=np.int64)
    if reduced is None:
        return labels
    k = min(int(buckets), len(np.unique(reduced, axis=0)))
    if k > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # ties among near-duplicate rows
            kmeans = KMeans(n_clusters=k, init="random", n_init=KMEANS_RESTARTS, max_iter=KMEANS_MAX_ITER,
                            random_state=seed)
            labels = kmeans.fit_predict(reduced).astype(np.int64)
    return labels


def _buckets(p: np.ndarray, q: np.ndarray, buckets: int | str) -> int:
    if buckets == "auto":
        return max(2, int(round(min(len(p), len(q)) / 10)))
    if isinstance(buckets, str) or not isinstance(buckets, int | np.integer) or buckets < 1:
        raise ValueError(f'buckets must be "auto" or a positive integer, got {buckets!r}')
    return int(buckets)


def quantise(p: np.ndarray, q: np.ndarray, *, buckets: int | str = "auto",
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The bucket id of each text of p and of q, from one k-means over both (mauve-text's cluster_feats): the
    stacked [q; p] rows l2-normalised, PCA to the first components reaching 90% of the variance, k-means.

    `buckets` "auto" is max(2, round(min(n_p, n_q) / 10)); any number is capped at the distinct rows, so that
    repeated texts never ask k-means for more clusters than points (all rows equal: every text in bucket 0).
    """
    p, q = _pair(p, q)
    labels = _cluster(_reduce(p, q), len(p) + len(q), _buckets(p, q, buckets), seed)
    return labels[len(q):], labels[:len(q)]


def _kl_rows(a: np.ndarray, r: np.ndarray) -> np.ndarray:
    """KL(a || r) over the last axis, a broadcast against r (mauve-text's kl_multinomial, vectorised): inf where a
    has mass that r lacks."""
    a = np.broadcast_to(a, r.shape)
    mass = a != 0
    both = mass & (r != 0)
    ratio = np.divide(a, r, out=np.ones_like(r), where=both)
    kl = np.where(both, a * np.log(ratio), 0.0).sum(axis=-1)
    return np.where((mass & (r == 0)).any(axis=-1), np.inf, kl)


def _curves(p_hist: np.ndarray, q_hist: np.ndarray, weights: int | Sequence[float], scale: float) -> np.ndarray:
    """Divergence curves of rows of histograms [..., k]: [..., len(weights) + 2, 2]."""
    w = np.linspace(1e-6, 1 - 1e-6, weights) if isinstance(weights, int | np.integer) else np.asarray(weights)
    w = np.sort(w.astype(np.float64))[:, None]
    p = np.asarray(p_hist, dtype=np.float64)[..., None, :]
    q = np.asarray(q_hist, dtype=np.float64)[..., None, :]
    r = w * p + (1 - w) * q  # [..., m, k]
    inner = np.stack([_kl_rows(q, r), _kl_rows(p, r)], axis=-1)  # [..., m, 2]
    first = np.broadcast_to(np.array([0.0, np.inf]), inner.shape[:-2] + (1, 2))
    last = np.broadcast_to(np.array([np.inf, 0.0]), inner.shape[:-2] + (1, 2))
    return np.exp(-scale * np.concatenate([first, inner, last], axis=-2))


def divergence_curve(p_hist: np.ndarray, q_hist: np.ndarray, weights: int | Sequence[float] = WEIGHTS,
                     scale: float = SCALE) -> np.ndarray:
    """The divergence curve of two histograms, as mauve-text's get_divergence_curve_for_multinomials: [m + 2, 2]
    points (exp(-scale KL(q || r)), exp(-scale KL(p || r))) for r = w p + (1 - w) q over the sorted mixture weights
    (an int: that many, linspace(1e-6, 1 - 1e-6)), between the extreme points (1, 0) first and (0, 1) last."""
    p, q = np.asarray(p_hist, dtype=np.float64), np.asarray(q_hist, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"p_hist and q_hist must be 1-D of one length, got shapes {p.shape} and {q.shape}")
    return _curves(p, q, weights, scale)


def _areas(curves: np.ndarray) -> np.ndarray:
    """MAUVE of divergence curves [..., m, 2]: the mean of the area under y(x) and under x(y), each by the trapezoid
    rule over the points sorted by that axis. Ties on the axis are ordered along the frontier (the other coordinate
    descending), where mauve-text's argsort leaves them to chance: with p = q its area is 0.75 or 1; here 1."""
    x, y = curves[..., 0], curves[..., 1]
    by_x = np.lexsort((-y, x), axis=-1)
    by_y = np.lexsort((-x, y), axis=-1)
    under_y = np.trapezoid(np.take_along_axis(y, by_x, -1), np.take_along_axis(x, by_x, -1), axis=-1)
    under_x = np.trapezoid(np.take_along_axis(x, by_y, -1), np.take_along_axis(y, by_y, -1), axis=-1)
    return 0.5 * (under_y + under_x)


def mauve_area(p_hist: np.ndarray, q_hist: np.ndarray, weights: int | Sequence[float] = WEIGHTS,
               scale: float = SCALE) -> float:
    """MAUVE of two histograms: the area under their divergence curve, 0.5 (auc(x sorted) + auc(y sorted)) as
    mauve-text computes it."""
    return float(_areas(divergence_curve(p_hist, q_hist, weights, scale)))


def _resampled(ids: np.ndarray, k: int, drawn: np.ndarray) -> np.ndarray:
    """[boot, k] histograms of the bucket ids at the rows `drawn` ([boot, n] indices, drawn with replacement)."""
    boot, n = drawn.shape
    flat = ids[drawn] + k * np.arange(boot)[:, None]
    return np.bincount(flat.ravel(), minlength=boot * k).reshape(boot, k) / n


def mauve(p: np.ndarray, q: np.ndarray, *, buckets: int | str = "auto", seed: int = 0, boot: int = 200,
          confidence: float = 0.95, seeds: int = 1) -> Mauve:
    """MAUVE of generated features `p` [n_p, d] against real features `q` [n_q, d] (mauve-text's convention: P the
    model's texts, Q the human ones; the score is symmetric in them anyway), with a `confidence` bootstrap interval.
    `seeds` > 1 averages the score over that many quantisations (k-means seeds seed, seed + 1, ...): at ~370 texts a
    side a single seed moves a score by sd ~0.01 near 1 and ~0.04-0.11 mid-range, and the mean of 5 by a little
    over 2x less.

    The interval: each side's texts are resampled with replacement `boot` times (seeded), with the quantisations
    (`quantise`) held fixed, and each replicate averages the seeds' scores on the same resampled texts; so it covers
    the sampling of the texts, not the clustering's own run-to-run spread. The resampled scores lie below the
    estimate (a resampled histogram carries the sampling noise twice, and noise only lowers MAUVE): near 1 their
    whole percentile interval misses the estimate. So the percentile interval is shifted by that bias (the estimate
    minus the resamples' median) and clipped to [0, 1]: it holds the estimate, with the resamples' spread. Near 1
    that spread overstates the score's sampling spread (the bootstrap is not consistent where p = q); the interval
    is conservative there. `p_hist`, `q_hist` and `buckets` are the first seed's."""
    p, q = _pair(p, q)
    if boot < 0:
        raise ValueError(f"boot must be 0 or more, got {boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if seeds < 1:
        raise ValueError(f"seeds must be 1 or more, got {seeds}")
    rng = np.random.default_rng(seed)
    p_rows = rng.integers(0, len(p), size=(boot, len(p)))  # the same resampled texts for every seed
    q_rows = rng.integers(0, len(q), size=(boot, len(q)))
    scores, replicates, first = [], [], None
    reduced, wanted = _reduce(p, q), _buckets(p, q, buckets)  # the same for every seed: once
    for s in range(seed, seed + seeds):
        labels = _cluster(reduced, len(p) + len(q), wanted, s)
        p_ids, q_ids = labels[len(q):], labels[:len(q)]
        k = int(max(p_ids.max(), q_ids.max())) + 1
        p_hist = np.bincount(p_ids, minlength=k) / len(p_ids)
        q_hist = np.bincount(q_ids, minlength=k) / len(q_ids)
        first = first or (k, p_hist, q_hist)
        scores.append(mauve_area(p_hist, q_hist))
        if boot:
            replicates.append(_areas(_curves(_resampled(p_ids, k, p_rows), _resampled(q_ids, k, q_rows), WEIGHTS,
                                             SCALE)))
    score = float(np.mean(scores))
    lo = hi = math.nan
    if boot:
        areas = np.mean(replicates, axis=0)
        low, median, high = np.quantile(areas, [(1 - confidence) / 2, 0.5, (1 + confidence) / 2])
        shift = score - median  # the resamples' bias: their histograms carry the sampling noise twice
        lo, hi = max(float(low + shift), 0.0), min(float(high + shift), 1.0)
    k, p_hist, q_hist = first
    return Mauve(score, lo, hi, k, p_hist, q_hist)


def wilson(successes: float, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of the share successes / n at `z` standard errors (1.96: 95%)."""
    if n <= 0:
        raise ValueError(f"a share needs at least one trial, got n = {n}")
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes <= 0 else max(centre - half, 0.0)), (1.0 if successes >= n else min(centre + half, 1.0))


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] by the expansion |a|^2 - 2 a.b + |b|^2 (one matrix product).
    Its rounding leaves ~1e-16 |a|^2 where a = b: values below 1e-10 (|a|^2 + |b|^2) are set to 0, so that repeated
    points are exactly at distance 0 (inside each other's balls of radius 0)."""
    a_norms = np.einsum("ij,ij->i", a, a)
    d = a_norms[:, None] - 2.0 * (a @ b.T) + b_norms[None, :]
    d[d < 1e-10 * (a_norms[:, None] + b_norms[None, :])] = 0.0
    return d


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row of x to its k-th nearest other row."""
    norms = np.einsum("ij,ij->i", x, x)
    radii = np.empty(len(x))
    for start in range(0, len(x), _BLOCK):
        d = _squared_distances(x[start:start + _BLOCK], x, norms)
        d[np.arange(len(d)), start + np.arange(len(d))] = 0.0  # itself: exactly 0, the nearest, left out by index k
        radii[start:start + _BLOCK] = np.partition(d, k, axis=1)[:, k]
    return radii


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each point lies in some ball (centre, squared radius), boundary included."""
    norms = np.einsum("ij,ij->i", centres, centres)
    return np.concatenate([(_squared_distances(points[s:s + _BLOCK], centres, norms) <= radii[None, :]).any(axis=1)
                           for s in range(0, len(points), _BLOCK)])


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3, confidence: float = 0.95) -> PrecisionRecall:
    """Kynkäänniemi et al.'s k-NN precision and recall of `fake` (generated features) against `real`, with Wilson
    intervals (precision over the fake points, recall over the real points). Each side needs more than k points."""
    real, fake = _pair(real, fake, ("real", "fake"))
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} points a side, got {len(real)} real "
                         f"and {len(fake)} fake")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    hits_p = int(_inside(fake, real, _radii(real, k)).sum())
    hits_r = int(_inside(real, fake, _radii(fake, k)).sum())
    return PrecisionRecall(hits_p / len(fake), *wilson(hits_p, len(fake), z), hits_r / len(real),
                           *wilson(hits_r, len(real), z), k)
