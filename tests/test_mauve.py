"""eval.mauve checked against mauve-text's own functions (the divergence curve, its area, and compute_mauve end to
end on the same features), against a plain brute-force k-NN for precision/recall, and on the bundled AG News titles
(real halves against each other, against one title repeated and against random strings)."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest

from eval.mauve import Embedding, divergence_curve, mauve, mauve_area, precision_recall, quantise, wilson
from toolkit.data import load_corpus

LETTERS = "abcdefghijklmnopqrstuvwxyz "
SEEDS = range(5)
REFERENCE_TOLERANCE = 0.05  # |mean over SEEDS of ours - of mauve-text's|: measured gaps 0.002-0.025 (see below)


@pytest.fixture(scope="module")
def titles():
    """The bundled AG News titles: (training titles, held-out titles)."""
    corpus = load_corpus("ag_news:test", "title", 0.1, None)
    return corpus.train_titles, corpus.val_titles


@pytest.fixture(scope="module")
def embed(titles) -> Embedding:
    return Embedding.fit(titles[0], seed=0)


@pytest.fixture(scope="module")
def halves(titles) -> tuple[list[str], list[str]]:
    """Two disjoint random halves of the held-out titles (~370 each)."""
    held = titles[1]
    order = np.random.default_rng(0).permutation(len(held))
    half = len(held) // 2
    return [held[i] for i in order[:half]], [held[i] for i in order[half:2 * half]]


def shuffled(texts: list[str], seed: int) -> list[str]:
    """Each text's characters shuffled: the right characters, no words."""
    rng = random.Random(seed)
    return ["".join(rng.sample(t, len(t))) for t in texts]


def random_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(LETTERS) for _ in range(45)) for _ in range(n)]


def perturbed(texts: list[str], rate: float, seed: int) -> list[str]:
    """Each character replaced by a random letter with probability `rate`."""
    rng = random.Random(seed)
    return ["".join(rng.choice(LETTERS) if rng.random() < rate else c for c in t) for t in texts]


def reference_area(p_hist: np.ndarray, q_hist: np.ndarray) -> float:
    """mauve-text's area formula, as compute_mauve writes it."""
    from mauve.compute_mauve import get_divergence_curve_for_multinomials
    from sklearn.metrics import auc

    x, y = get_divergence_curve_for_multinomials(p_hist, q_hist, np.linspace(1e-6, 1 - 1e-6, 25), 5).T
    by_x, by_y = np.argsort(x), np.argsort(y)
    return 0.5 * (auc(x[by_x], y[by_x]) + auc(y[by_y], x[by_y]))


# --- the divergence curve and its area, against mauve-text ---------------------------------------------------------

def test_divergence_curve_and_area_equal_mauve_texts_on_random_histograms():
    ref = pytest.importorskip("mauve.compute_mauve")
    rng = np.random.default_rng(0)
    for trial in range(60):
        k = int(rng.integers(2, 120))
        p, q = rng.dirichlet(np.full(k, 0.5)), rng.dirichlet(np.full(k, 2.0))
        if trial % 3 == 0:  # empty buckets on either side (bucket 0 kept in p, bucket 1 in q), as samples leave
            p = np.where((rng.random(k) < 0.3) & (np.arange(k) != 0), 0, p)
            q = np.where((rng.random(k) < 0.3) & (np.arange(k) != 1), 0, q)
            p, q = p / p.sum(), q / q.sum()
        expected = ref.get_divergence_curve_for_multinomials(p, q, np.linspace(1e-6, 1 - 1e-6, 25), 5)
        curve = divergence_curve(p, q)
        assert curve.shape == (27, 2)
        np.testing.assert_allclose(curve, expected, rtol=0, atol=1e-12)
        assert abs(mauve_area(p, q) - reference_area(p, q)) < 1e-12
        assert abs(mauve_area(p, q) - mauve_area(q, p)) < 1e-12  # symmetric


def test_divergence_curve_with_explicit_weights_and_scale_equals_mauve_texts():
    ref = pytest.importorskip("mauve.compute_mauve")
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(7)), np.r_[rng.dirichlet(np.ones(5)), 0, 0]  # q lacks two of p's buckets
    weights = [0.7, 0.0, 0.3, 1.0, 0.5]  # unsorted, with the ends: KL is infinite there
    for scale in (1.0, 5.0, 2.5):
        expected = ref.get_divergence_curve_for_multinomials(p, q, weights, scale)
        np.testing.assert_allclose(divergence_curve(p, q, weights, scale), expected, rtol=0, atol=1e-12)


def test_area_is_one_for_equal_histograms_and_near_zero_for_disjoint_ones():
    for k in (1, 2, 5, 40):
        h = np.random.default_rng(k).dirichlet(np.ones(k))
        assert mauve_area(h, h) == pytest.approx(1.0, abs=1e-12)  # mauve-text's argsort gives 0.75 or 1 here
    disjoint = mauve_area(np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 0.25, 0.75]))
    assert 0 < disjoint < 0.01


# --- compute_mauve end to end ---------------------------------------------------------------------------------------

def test_mauve_agrees_with_mauve_text_on_the_same_features(embed, halves):
    """k-means differs (scikit-learn's, not faiss's), so single seeds differ: measured on these ~370-text sets over
    40 seeds, the seed sd is 0.01 (halves) and 0.03-0.04 (shuffled characters) for both, one seed's gap reaches
    0.15 mid-range, and the gap of 5-seed means stays within 0.025 (mean gaps 0.002-0.015 over 40 seeds)."""
    ref = pytest.importorskip("mauve")
    pytest.importorskip("faiss")
    a, b = halves
    real = embed(b)
    cases = [("halves", a, REFERENCE_TOLERANCE), ("shuffled", shuffled(a, 1), REFERENCE_TOLERANCE),
             ("one title", [a[0]] * len(a), 0.005)]
    for name, texts, tolerance in cases:
        generated = embed(texts)
        theirs = [ref.compute_mauve(p_features=generated, q_features=real, seed=s) for s in SEEDS]
        ours = [mauve(generated, real, seed=s, boot=0) for s in SEEDS]
        assert all(o.buckets == t.num_buckets == round(len(a) / 10) for o, t in zip(ours, theirs, strict=True)), name
        gap = np.mean([o.mauve for o in ours]) - np.mean([t.mauve for t in theirs])
        assert abs(gap) <= tolerance, (name, gap)


def test_quantise_keeps_the_pca_components_that_reach_90_percent_of_the_variance():
    """Four tight clusters in the plane at angles ±θ and π±θ, q's above the x axis and p's below: the first principal
    axis (x) holds 80% of the variance, so both axes are kept and 4 buckets split p from q (MAUVE ~0); keeping one
    axis too few would merge p with q (MAUVE ~1)."""
    rng = np.random.default_rng(0)
    theta = math.acos(math.sqrt(0.8))

    def cluster(angle: float, n: int) -> np.ndarray:
        return np.c_[np.cos(angle), np.sin(angle)] + rng.normal(0, 0.01, (n, 2))

    q = np.r_[cluster(theta, 50), cluster(math.pi - theta, 50)]
    p = np.r_[cluster(-theta, 40), cluster(math.pi + theta, 40)]
    p_ids, q_ids = quantise(p, q, buckets=4)
    assert len(p_ids) == 80 and len(q_ids) == 100
    assert not set(p_ids) & set(q_ids)
    assert len(set(p_ids[:40])) == len(set(p_ids[40:])) == 1 and p_ids[0] != p_ids[-1]
    assert mauve(p, q, buckets=4, boot=0).mauve < 0.01


def test_buckets_auto_is_a_tenth_of_the_smaller_side_and_at_least_two():
    rng = np.random.default_rng(0)
    assert mauve(rng.normal(size=(120, 4)), rng.normal(size=(300, 4)), boot=0).buckets == 12
    assert mauve(rng.normal(size=(125, 4)), rng.normal(size=(300, 4)), boot=0).buckets == 12  # round(12.5): even
    assert mauve(rng.normal(size=(8, 4)), rng.normal(size=(9, 4)), boot=0).buckets == 2
    assert mauve(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)), buckets=7, boot=0).buckets == 7
    m = mauve(rng.normal(size=(50, 4)), rng.normal(size=(30, 4)), buckets=3, boot=0)
    assert m.p_hist.shape == m.q_hist.shape == (3,)
    assert m.p_hist.sum() == pytest.approx(1) and m.q_hist.sum() == pytest.approx(1)


# --- precision and recall against brute force -----------------------------------------------------------------------

def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. written plainly: every distance, every ball."""
    def radii(x):
        return [sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))]

    def share_inside(points, centres, r):
        return sum(any(np.linalg.norm(pt - c) <= rc for c, rc in zip(centres, r, strict=True))
                   for pt in points) / len(points)

    return share_inside(fake, real, radii(real)), share_inside(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_precision_recall_equal_brute_force_on_random_points(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(60, 5))
    fake = rng.normal(0.4, 1.3, size=(45, 5))
    pr = precision_recall(real, fake, k=k)
    assert (pr.precision, pr.recall) == brute_force(real, fake, k)
    assert pr.k == k


def test_precision_recall_equal_brute_force_with_ties_and_duplicates():
    """Integer points on a small grid: many equal distances and repeated points, all exact in floating point, so a
    ball's boundary (inside: distance <= radius) and the k-th *other* point are both tested."""
    rng = np.random.default_rng(7)
    for k in (1, 3):
        real = rng.integers(0, 4, size=(50, 3)).astype(float)
        fake = rng.integers(1, 6, size=(40, 3)).astype(float)
        pr = precision_recall(real, fake, k=k)
        assert (pr.precision, pr.recall) == brute_force(real, fake, k)


def test_precision_recall_blocks_large_sets_like_small_ones(monkeypatch):
    import eval.mauve

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(300, 8)), rng.normal(0.3, 1.1, size=(250, 8))
    whole = precision_recall(real, fake)
    monkeypatch.setattr(eval.mauve, "_BLOCK", 7)
    assert precision_recall(real, fake) == whole


def test_precision_recall_intervals_are_wilson_intervals():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(80, 3)), rng.normal(0.5, 1, size=(60, 3))
    pr = precision_recall(real, fake, confidence=0.95)
    z = 1.959963984540054
    assert (pr.precision_lo, pr.precision_hi) == pytest.approx(wilson(round(pr.precision * 60), 60, z), abs=1e-12)
    assert (pr.recall_lo, pr.recall_hi) == pytest.approx(wilson(round(pr.recall * 80), 80, z), abs=1e-12)
    assert pr.precision_lo < pr.precision < pr.precision_hi and pr.recall_lo < pr.recall < pr.recall_hi
    wide = precision_recall(real, fake, confidence=0.99)
    assert wide.precision_lo < pr.precision_lo and wide.precision_hi > pr.precision_hi


def test_wilson_matches_published_values():
    z = 1.96
    assert wilson(0, 10, z) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10, z) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(5, 10, z) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(81, 263, z) == pytest.approx((0.2553, 0.3662), abs=1e-4)  # Newcombe (1998), example
    with pytest.raises(ValueError):
        wilson(0, 0, z)


# --- the bundled AG News titles ------------------------------------------------------------------------------------

def test_mauve_ranks_real_halves_far_above_one_title_and_random_strings(embed, halves):
    a, b = halves
    real = embed(b)
    same = mauve(embed(a), real, seed=0)
    one = mauve(embed([a[0]] * len(a)), real, seed=0)
    noise = mauve(embed(random_strings(len(a), 0)), real, seed=0)
    assert same.mauve >= 0.9
    assert one.mauve <= 0.1
    assert noise.mauve <= 0.1 and same.mauve - noise.mauve >= 0.8
    assert one.p_hist.max() == 1.0  # the repeated title: one bucket


def test_precision_recall_of_real_halves_are_high_and_one_title_has_no_recall(embed, halves):
    a, b = halves
    real = embed(b)
    same = precision_recall(real, embed(a))
    assert same.precision >= 0.8 and same.recall >= 0.8
    one = precision_recall(real, embed([a[0]] * len(a)))
    assert one.recall <= 0.02  # all its balls have radius 0: it covers at most its own copy
    assert one.recall_hi < same.recall_lo


def test_mauve_falls_as_titles_are_damaged(embed, halves):
    a, b = halves
    real = embed(b)
    scores = [np.mean([mauve(embed(perturbed(a, rate, 0)), real, seed=s, boot=0).mauve for s in range(3)])
              for rate in (0.0, 0.4, 1.0)]
    assert scores[0] > scores[1] > scores[2]


# --- determinism, the interval, degenerate input --------------------------------------------------------------------

def test_everything_is_deterministic_given_the_seed(titles, embed, halves):
    a, b = halves
    again = Embedding.fit(titles[0], seed=0)
    np.testing.assert_array_equal(again(a[:50]), embed(a[:50]))
    features = embed(a[:50])
    assert features.shape == (50, 100)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-12)
    p, q = embed(shuffled(a, 2)), embed(b)
    first, second = mauve(p, q, seed=3), mauve(p, q, seed=3)
    assert (first.mauve, first.lo, first.hi, first.buckets) == (second.mauve, second.lo, second.hi, second.buckets)
    np.testing.assert_array_equal(first.p_hist, second.p_hist)
    np.testing.assert_array_equal(first.q_hist, second.q_hist)
    other = mauve(p, q, seed=4)
    assert (other.mauve, other.lo, other.hi) != (first.mauve, first.lo, first.hi)


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_texts(titles, embed):
    train = titles[0]
    damaged = perturbed(train, 0.3, 5)
    for buckets in ("auto", 20):
        widths = []
        for n in (150, 1200):
            m = mauve(embed(damaged[:n]), embed(train[n:2 * n]), seed=0, buckets=buckets)
            assert 0 < m.lo < m.mauve < m.hi < 1, (n, m)
            widths.append(m.hi - m.lo)
        assert widths[1] < 0.6 * widths[0], widths
    assert math.isnan(mauve(embed(damaged[:40]), embed(train[:40]), boot=0).lo)


def test_identical_texts_on_both_sides_score_one_without_warnings(embed):
    same = embed(["Stocks rally on Wall Street"] * 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mauve(same, same.copy(), buckets=10)
        assert m.mauve == pytest.approx(1.0) and m.buckets == 1 and (m.lo, m.hi) == (pytest.approx(1.0),) * 2
        few = embed(["Stocks rally", "Stocks fall", "Oil up"] * 10)
        m = mauve(few, embed(["Stocks rally", "Oil up"] * 15), buckets=10)  # 3 distinct rows: at most 3 buckets
        assert m.buckets <= 3 and 0.3 < m.mauve < 1
        pr = precision_recall(same, same.copy())
        assert (pr.precision, pr.recall) == (1.0, 1.0)


def test_too_few_texts_or_mismatched_features_are_refused(titles):
    rng = np.random.default_rng(0)
    two, one = rng.normal(size=(2, 3)), rng.normal(size=(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        mauve(one, two)
    with pytest.raises(ValueError, match="at least 2"):
        mauve(two, np.empty((0, 3)))
    with pytest.raises(ValueError, match="dims"):
        mauve(two, rng.normal(size=(2, 4)))
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(rng.normal(size=(10, 3)), rng.normal(size=(3, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        Embedding.fit(["one title"])
    tiny = Embedding.fit(["ab", "cd", "abc"], dims=100)
    assert tiny.dims == 2 and tiny(["abd", "zz"]).shape == (2, 2)
    np.testing.assert_array_equal(tiny(["zz"]), 0)  # no known n-gram: a row of zeros


def test_several_quantisations_average_their_scores_on_the_same_resampled_texts():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(200, 5)), rng.normal(0.4, 1.0, size=(200, 5))
    one = [mauve(p, q, seed=s, boot=0).mauve for s in (3, 4, 5)]
    several = mauve(p, q, seed=3, seeds=3)
    assert several.mauve == pytest.approx(np.mean(one)) and len(set(one)) > 1
    assert several.lo <= several.mauve <= several.hi
    assert several.buckets == mauve(p, q, seed=3, boot=0).buckets
