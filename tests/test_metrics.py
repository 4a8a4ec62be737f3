"""The metrics against their definitions and against independent computations (NLTK, SciPy, Python sets)."""

import math
import random
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, linregress, wasserstein_distance

from eval.metrics import CURVE, DISTANCES, METRICS, distances, self_bleu, words
from eval.scoring import metrics_table

TRAIN = ["a b c d", " c a", "x y z"]
TEXTS = ["A b a b", "a b c d", "a b c d", "c a ", ""]
FINISHED = [True, True, False, True, False]
VAL = ["Real title one", "another real title", "a third real one", "news at noon", "the end"]


def table(groups: dict[float, list[str]], val=VAL, train=TRAIN, finished=None, **kwargs) -> pd.DataFrame:
    rows = [{"temperature": t, "text": x, "finished": True if finished is None else finished[i]}
            for t, texts in groups.items() for i, x in enumerate(texts)]
    return metrics_table(pd.DataFrame(rows), train, val, **kwargs).set_index("group")


def test_metrics_match_the_definitions():
    m = table({1.0: TEXTS}, finished=FINISHED).loc["T=1"]  # 5 texts, 5 reference titles: no subsampling
    assert (m["samples"], m["size"], m["subsamples"]) == (5, 5, 1)
    # words: [a b a b] [a b c d] [a b c d] [c a] [] -> 14 words
    assert m["distinct_1"] == pytest.approx(4 / 14)  # a b c d
    assert m["distinct_2"] == pytest.approx(5 / 14)  # ab ba bc cd ca
    assert m["distinct_3"] == pytest.approx(4 / 14)  # aba bab abc bcd
    assert m["repetition_rate"] == pytest.approx(1 / 5)  # only "a b a b" repeats a bigram (ab)
    # four texts have bigrams; "a b a b" has 3 bigrams, 2 distinct: 1 - 2/3; the other three 0
    assert m["seq_rep_2"] == pytest.approx((1 / 3) / 4)
    assert m["duplicate_rate"] == pytest.approx(1 - 4 / 5)  # "a b c d" twice
    # "a b c d" (twice) and "c a " (training " c a", both stripped) are copies; "A b a b" and "" are novel
    assert m["novelty"] == pytest.approx(2 / 5) and m["copy_rate"] == pytest.approx(3 / 5)
    # trigrams aba bab abc bcd abc bcd; training has abc bcd xyz: 2 of 6 novel
    assert m["novel_3gram_rate"] == pytest.approx(2 / 6)
    # within 0.1 of a title: the two copies of "a b c d"; "c a " is 1 edit from " c a" in 4 characters
    assert m["near_copy_rate"] == pytest.approx(2 / 5)
    assert m["mean_length"] == pytest.approx((7 + 7 + 7 + 4 + 0) / 5)
    assert m["finished_rate"] == pytest.approx(3 / 5)
    assert m["self_bleu"] == pytest.approx(self_bleu([words(t) for t in TEXTS]))
    assert math.isnan(m["bpc"])  # no logprob column


def test_every_metric_has_an_interval_around_its_estimate():
    rng = random.Random(0)
    t = table({0.5: [" ".join(rng.choices("abcdefgh", k=rng.randint(1, 8))) for _ in range(60)]},
              val=[" ".join(rng.choices("abcdefghij", k=rng.randint(1, 8))) for _ in range(60)])
    for name in [*METRICS, *CURVE.values()]:
        for group in ("T=0.5", "reference"):
            est, lo, hi = t.loc[group, [name, f"{name}_lo", f"{name}_hi"]]
            if name in ("bpc", "regex_match_rate", "banned_rate"):  # no log-probabilities, no constraint
                assert math.isnan(est) and math.isnan(lo)
                continue
            assert lo <= est <= hi, (group, name, lo, est, hi)
            assert lo < hi or est in (0, 1), (group, name)  # only a constant has no spread


def test_groups_are_scored_at_one_size_on_disjoint_subsamples():
    rng = random.Random(1)
    source = [" ".join(rng.choices([f"w{i}" for i in range(300)], k=6)) for _ in range(4000)]
    t = table({0.5: source[:200], 1.0: source[200:2200]}, val=source[2200:2400])
    assert t["size"].tolist() == [200] * 3 and t["subsamples"].tolist() == [1, 10, 1]
    assert t["samples"].tolist() == [200, 2000, 200]
    # same source, ten times the texts: distinct-1 is the same at equal size (scored on the whole 2,000 texts
    # it would be far lower), within the intervals
    whole = len({w for text in source[200:2200] for w in text.split()}) / (6 * 2000)
    assert whole < 0.5 * t.loc["T=0.5", "distinct_1"]
    assert abs(t.loc["T=1", "distinct_1"] - t.loc["T=0.5", "distinct_1"]) < (
        t.loc["T=0.5", "distinct_1_hi"] - t.loc["T=0.5", "distinct_1_lo"])
    assert table({0.5: source[:200], 1.0: source[200:2200]}, val=source[2200:2400], size=50)["subsamples"].tolist() \
        == [4, 40, 4]


def test_a_size_larger_than_a_group_is_refused():
    from toolkit.files import UsageError

    with pytest.raises(UsageError, match=r"^size 6 .*T=1 holds 5"):
        table({1.0: TEXTS}, size=6)
    for nothing in (0, -1):  # not "the default": a size of no text is a mistake to name
        with pytest.raises(UsageError, match=f"^size {nothing} must lie between 1"):
            table({1.0: TEXTS}, size=nothing)


def test_bootstrap_intervals_cover_the_true_value():
    """Groups drawn from one known source: the 95% interval of a per-text rate and of distinct-2 (whose true
    value at this size is the mean over many independent groups) covers it in about 95% of groups."""
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(60)])
    weights = 1 / np.arange(1, 61)
    weights /= weights.sum()

    def group(n):
        return [" ".join(rng.choice(vocab, size=rng.integers(1, 7), p=weights)) for _ in range(n)], rng.random(n) < .3

    def distinct_2(texts):
        toks = [t.split() for t in texts]
        return len({g for t in toks for g in zip(t, t[1:], strict=False)}) / sum(map(len, toks))

    truth = np.mean([distinct_2(group(80)[0]) for _ in range(400)])
    covered = Counter()
    trials = 60
    for _ in range(trials):
        texts, finished = group(80)
        samples = pd.DataFrame({"temperature": 1.0, "text": texts, "finished": finished})
        row = metrics_table(samples, TRAIN, group(80)[0]).iloc[0]
        covered["finished"] += row["finished_rate_lo"] <= 0.3 <= row["finished_rate_hi"]
        covered["distinct_2"] += row["distinct_2_lo"] <= truth <= row["distinct_2_hi"]
    for name, n in covered.items():
        assert 0.85 <= n / trials <= 1.0, (name, n / trials)


def test_self_bleu_by_hand():
    # "a b" against "a b": p1 = 2/2, p2 = 1/1, no 3- or 4-grams so smoothing gives 0.1/1 each, lengths equal
    assert self_bleu([["a", "b"], ["a", "b"]]) == pytest.approx(math.sqrt(0.1))
    # "a b" vs "a b c": p = 1, 1, .1, .1 and brevity penalty exp(1 - 3/2);
    # "a b c" vs "a b": p1 = 2/3, p2 = 1/2, p3 = 0.1/1 (no match), p4 = 0.1/1 (no 4-gram), longer than the reference
    expected = (math.sqrt(0.1) * math.exp(-0.5) + (2 / 3 * 1 / 2 * 0.1 * 0.1) ** 0.25) / 2
    assert self_bleu([["a", "b"], ["a", "b", "c"]]) == pytest.approx(expected)
    assert self_bleu([["a", "b"], ["c", "d"]]) == 0  # no unigram in common
    assert math.isnan(self_bleu([["a", "b"]]))  # one text has no references
    assert math.isnan(self_bleu([]))  # nor does an empty group


def test_self_bleu_of_a_long_text_takes_the_shorter_reference_length():
    """60 words against 5: the only other length is shorter, so no brevity penalty (NLTK's closest length)."""
    long, short = ["a"] * 60, ["a"] * 5
    # "a" * 60 against "a" * 5: clipped matches 5, 4, 3, 2 of 60, 59, 58, 57; "a" * 5 against "a" * 60: all
    # match, brevity penalty exp(1 - 60 / 5)
    expected = ((5 / 60 * 4 / 59 * 3 / 58 * 2 / 57) ** 0.25 + math.exp(1 - 60 / 5)) / 2
    assert self_bleu([long, short]) == pytest.approx(expected)


def test_self_bleu_equals_nltk_on_random_groups():
    rng = random.Random(0)
    smoothing = SmoothingFunction().method1
    for _ in range(150):
        vocab = "abcde"[: rng.randint(1, 5)]
        lengths = [rng.choice([0, 1, 2, 3, 4, 6, 9]) for _ in range(rng.randint(2, 8))]
        group = [[rng.choice(vocab) for _ in range(n)] for n in lengths]
        group += [list(t) for t in group[: rng.randint(0, 2)]]  # duplicates
        expected = sum(sentence_bleu(group[:i] + group[i + 1:], hyp, smoothing_function=smoothing)
                       for i, hyp in enumerate(group)) / len(group)
        assert abs(self_bleu(group) - expected) < 1e-9, group


def test_self_bleu_scales_to_ten_thousand_samples():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(2000)]
    group = [[rng.choice(vocab[: rng.randint(10, 2000)]) for _ in range(rng.randint(1, 12))] for _ in range(10_000)]
    assert 0 < self_bleu(group) < 1


def test_distances_to_the_reference_equal_scipy():
    rng = random.Random(2)
    texts = [" ".join(rng.choices(["alpha", "beta", "gamma", "Delta", "é"], k=rng.randint(1, 9))) for _ in range(40)]
    val = [" ".join(rng.choices(["alpha", "beta", "zeta", "eta"], k=rng.randint(2, 6))) for _ in range(40)]
    m = distances(texts, val)
    lengths, val_lengths = [len(t) for t in texts], [len(t) for t in val]
    assert m["length_ks"] == pytest.approx(ks_2samp(lengths, val_lengths).statistic)
    assert m["length_wasserstein"] == pytest.approx(wasserstein_distance(lengths, val_lengths))

    def js(a: Counter, b: Counter) -> float:
        keys = sorted(set(a) | set(b))
        return jensenshannon([a[k] for k in keys], [b[k] for k in keys], base=2) ** 2

    def bigrams(group):
        return Counter(t[i:i + 2] for t in group for i in range(len(t) - 1))

    assert m["js_char_bigrams"] == pytest.approx(js(bigrams(texts), bigrams(val)))
    assert m["js_words"] == pytest.approx(js(Counter(w for t in texts for w in words(t)),
                                             Counter(w for t in val for w in words(t))))


def test_the_reference_row_holds_the_distance_chance_gives():
    """A temperature whose texts come from the reference's source is as far from it as its own halves are; one
    from another source is far beyond."""
    rng = random.Random(3)

    def titles(vocab, n):
        return [" ".join(rng.choices(vocab, k=rng.randint(2, 6))) for _ in range(n)]

    real = ["alpha", "beta", "gamma", "delta", "epsilon"] * 3 + [f"w{i}" for i in range(40)]
    other = ["zzzzzzzzzz", "qqqqqqqqqqqq", "alpha"]
    t = table({0.5: titles(real, 300), 1.0: titles(other, 300)}, val=titles(real, 300))
    for name in DISTANCES:
        floor = t.loc["reference", [name, f"{name}_lo", f"{name}_hi"]]
        assert floor.iloc[1] < t.loc["T=0.5", name] < floor.iloc[2] + (floor.iloc[2] - floor.iloc[1]), name
        assert t.loc["T=1", name] > 3 * floor.iloc[2], name


def test_zipf_coefficient_equals_a_least_squares_fit():
    rng = np.random.default_rng(4)
    texts = [" ".join(f"w{int(x)}" for x in rng.zipf(1.6, size=rng.integers(3, 9)) if x < 500) or "w1"
             for _ in range(120)]
    frequencies = sorted(Counter(w for t in texts for w in words(t)).values(), reverse=True)
    fit = linregress(np.log(np.arange(1, len(frequencies) + 1)), np.log(frequencies))
    assert table({1.0: texts}, val=texts).loc["T=1", "zipf"] == pytest.approx(-fit.slope)


def test_bits_per_character_come_from_the_logprob_column():
    samples = pd.DataFrame({"temperature": [1.0, 1.0, 2.0], "text": ["abc", "de", "f"],
                            "finished": [True, False, True], "logprob": [-4.0, -2.0, -1.0]})
    t = metrics_table(samples, TRAIN, ["x", "y"], reference_bpc=2.5).set_index("group")
    # T=1: (4 + 2) nats over (3 + 1) + (2 + 0) characters; the unfinished text has no end-of-title
    assert t.loc["T=1", "bpc"] == pytest.approx(6 / math.log(2) / 6)
    assert t.loc["T=2", "bpc"] == pytest.approx(1 / math.log(2) / 2)
    assert t.loc["reference", "bpc"] == 2.5 and math.isnan(t.loc["reference", "bpc_lo"])


def test_novelty_curve_is_the_share_of_novel_character_ngrams():
    m = table({1.0: ["a b c dzzz", "x y z"]}, val=["p", "q"]).loc["T=1"]
    # 4-grams "a b " " b c" "b c " " c d" (all in "a b c d"), "c dz" " dzz" "dzzz", and "x y " " y z" (a title)
    assert m[CURVE[4]] == pytest.approx(3 / 9)
    assert m[CURVE[20]] == 0  # no 20-grams at all: nothing to count


def test_words_are_lowercased_and_split_on_whitespace():
    assert words("  Stocks\tRally, stocks ") == ["stocks", "rally,", "stocks"]


def test_near_copies_are_searched_in_at_most_the_cap_per_group(monkeypatch):
    import eval.metrics
    import eval.novelty

    searched = []
    near_copy = eval.novelty._CharMatches.near_copy
    monkeypatch.setattr(eval.novelty._CharMatches, "near_copy", lambda self, i, t: searched.append(i) or
                        near_copy(self, i, t))
    monkeypatch.setattr(eval.metrics, "NEAR_COPY_CAP", 3)
    t = table({1.0: ["a b c d"] * 10, 2.0: ["x y z"] * 2}, val=["a b c d", "q"])  # size 2: 5, 1 and 1 subsamples
    assert len(searched) == 3 + 2 + 2  # one text in each of T=1's subsamples (3 of 10), both texts elsewhere
    assert t.loc["T=1", "near_copy_rate"] == 1 and t.loc["T=2", "near_copy_rate"] == 1


def test_zipf_counts_only_the_words_a_group_holds():
    """Groups share one word numbering; a group's fit runs over its own words, and two distinct words suffice."""
    rng = np.random.default_rng(5)
    texts = [" ".join(f"w{int(x)}" for x in rng.zipf(1.6, size=6) if x < 300) or "w1" for _ in range(100)]
    val = [" ".join(f"v{int(x)}" for x in rng.zipf(1.3, size=6) if x < 300) or "v1" for _ in range(100)]
    frequencies = sorted(Counter(w for t in texts for w in words(t)).values(), reverse=True)
    fit = linregress(np.log(np.arange(1, len(frequencies) + 1)), np.log(frequencies))
    assert table({1.0: texts}, val=val).loc["T=1", "zipf"] == pytest.approx(-fit.slope)
    two = table({1.0: ["a b a", "a a", "b a"]}, val=["x y z"] * 3).loc["T=1", "zipf"]  # a 5 times, b twice
    assert two == pytest.approx(-(math.log(2) - math.log(5)) / math.log(2))


@pytest.mark.parametrize("name, values, size, expected", [
    ("finished_rate", [0.6, *np.linspace(0.4, 0.8, 101)], 4, (0.6, 0.41, 0.79)),  # half of 4: no rescaling
    ("finished_rate", [0.6, *np.linspace(0.4, 0.8, 101)], 5,  # 2 of 5 drawn: spread times sqrt(2 / 3)
     (0.6, 0.6 - 0.19 * math.sqrt(2 / 3), 0.6 + 0.19 * math.sqrt(2 / 3))),
    ("zipf", [1.5, *np.linspace(0.5, 2.5, 101)], 4, (1.5, 0.55, 2.45)),  # unbounded above 1
    ("finished_rate", [0.9, *np.linspace(0.7, 1.1, 101)], 4, (0.9, 0.71, 1.0)),  # a rate stops at 1
    ("js_words", [0.2, 0.3, 0.4], 4, (0.3, 0.205, 0.395)),  # a distance: all replicates, their mean
    ("finished_rate", [0.5, 0.4, 0.6], 2, (0.5, 0.405, 0.595)),  # two replicates of one text each
    ("finished_rate", [0.5, 0.4, 0.6], 1, (0.5, math.nan, math.nan))])  # one text: no half to draw
def test_intervals_by_hand(name, values, size, expected):
    """Estimate, then the 2.5% and 97.5% quantiles of the replicates centred on their mean, scaled by
    sqrt(h / (m - h)) for h = m // 2 of m texts, clipped to the metric's range."""
    from eval.metrics import _interval

    np.testing.assert_allclose(_interval(name, np.array(values), size), expected, rtol=1e-9)


def test_the_interval_of_a_mean_is_the_textbook_one():
    """400 texts: the bootstrap interval of the mean length is about the normal one, 1.96 sd / sqrt(n) each side."""
    rng = np.random.default_rng(6)
    texts = ["x" * int(n) for n in rng.integers(1, 80, 400)]
    m = table({1.0: texts}, val=texts).loc["T=1"]
    half_width = (m["mean_length_hi"] - m["mean_length_lo"]) / 2
    assert half_width == pytest.approx(1.96 * np.std([len(t) for t in texts]) / math.sqrt(400), rel=0.2)


def test_groups_come_in_temperature_order_whatever_the_file_order():
    samples = pd.DataFrame({"temperature": [2.0, 0.5, 1.0, 2.0, 0.5, 1.0], "text": list("abcdef"),
                            "finished": True})
    t = metrics_table(samples, TRAIN, ["x", "y"])
    assert t["group"].tolist() == ["T=0.5", "T=1", "T=2", "reference"]
    assert t["temperature"].dtype == np.float64 and t["temperature"].tolist()[:3] == [0.5, 1.0, 2.0]
    assert math.isnan(t["temperature"].iloc[3])


def test_copy_rate_is_one_minus_novelty_interval_included():
    rng = random.Random(2)
    t = table({1.0: [rng.choice(TRAIN + ["new text", "other"]) for _ in range(40)]}, val=VAL * 8).loc["T=1"]
    assert t["copy_rate"] == pytest.approx(1 - t["novelty"]) and t["novelty_lo"] < t["novelty_hi"]
    assert (t["copy_rate_lo"], t["copy_rate_hi"]) == pytest.approx((1 - t["novelty_hi"], 1 - t["novelty_lo"]))


def test_the_smallest_size_is_one_text_a_subsample():
    t = table({1.0: TEXTS}, size=1)
    assert t["size"].tolist() == [1, 1] and t["subsamples"].tolist() == [5, 5]


def test_each_bootstrap_replicate_scores_only_the_texts_it_chose():
    """An interval's replicates are the metrics of the half-samples alone: row by row against sets, NLTK and a
    least-squares fit over the chosen texts, for more replicates than one numpy pass holds."""
    from eval.metrics import ROWS_AT_ONCE, Texts, _pool

    rng = random.Random(5)
    texts = [" ".join(rng.choices("abcde", k=n)) for n in (100, 60, 5, 3, 3, 1)] + ["", "b a"]
    sel = np.random.default_rng(5).random((2 * ROWS_AT_ONCE + 20, len(texts))) < 0.5
    found = _pool(Texts.build(texts, np.ones(len(texts), bool)), sel)
    smoothing = SmoothingFunction().method1
    expected = {"distinct_1": [], "duplicate_rate": [], "self_bleu": [], "zipf": []}
    for row in sel:
        chosen = [t for t, c in zip(texts, row, strict=True) if c]
        tokens = [words(t) for t in chosen]
        n_words = sum(map(len, tokens))
        frequencies = sorted(Counter(w for t in tokens for w in t).values(), reverse=True)
        expected["distinct_1"].append(len(frequencies) / n_words if n_words else 0)
        expected["duplicate_rate"].append(1 - len(set(chosen)) / len(chosen) if chosen else 0)
        expected["self_bleu"].append(np.mean([
            sentence_bleu(tokens[:i] + tokens[i + 1:], hyp, smoothing_function=smoothing)
            for i, hyp in enumerate(tokens)]) if len(tokens) >= 2 else math.nan)
        expected["zipf"].append(-linregress(np.log(np.arange(1, len(frequencies) + 1)), np.log(frequencies)).slope
                                if len(frequencies) >= 2 else math.nan)
    for name, values in expected.items():
        np.testing.assert_allclose(found[name], values, rtol=1e-9, atol=1e-12, err_msg=name)


def test_a_group_of_empty_titles_has_no_distinct_ngrams():
    """No words at all: distinct-n is 0 (no diversity), not a perfect 1."""
    m = table({1.0: ["", "", ""]}, val=["a b", "c d", "e f"]).loc["T=1"]
    assert (m["distinct_1"], m["distinct_2"], m["distinct_3"]) == (0, 0, 0)


def test_distances_between_groups_of_different_sizes():
    """Each group's length distribution is normalised by its own size."""
    assert distances(["ab cd"], ["ab cd"] * 3) == {name: 0 for name in DISTANCES}  # same texts, in proportion
    # lengths 1 and 3 half and half against three quarters and one quarter: the CDFs differ by 1/4 over [1, 3)
    m = distances(["x", "xxx"], ["x", "x", "x", "xxx"])
    assert (m["length_ks"], m["length_wasserstein"]) == pytest.approx((1 / 4, 1 / 4 * 2))


def test_the_bootstrap_draws_half_of_each_subsample():
    """Row 0 takes every text (the estimate); then BOOTSTRAP replicates of exactly half, from two texts up."""
    from eval.metrics import BOOTSTRAP, Group, _pools

    for size in (2, 3, 4):
        p = _pools(Group("T=1", 1.0, list("abcdefghi"), np.ones(9, bool)), size, seed=0)
        assert p.rows.shape == (9 // size, size) and len(set(p.rows.ravel())) == p.rows.size  # disjoint
        assert p.sel.shape == (1 + BOOTSTRAP, size) and p.sel[0].all()
        assert (p.sel[1:].sum(axis=1) == size // 2).all()


def test_a_temperature_row_does_not_depend_on_the_other_temperatures():
    """Each group draws its own subsamples and halves, and the reference's halves are always the same."""
    rng = random.Random(6)

    def titles(n):
        return [" ".join(rng.choices(["alpha", "beta", "gamma", "delta"], k=rng.randint(1, 5))) for _ in range(n)]

    x, y, val = titles(30), titles(30), titles(30)
    alone, beside = table({1.0: x}, val=val).loc["T=1"], table({1.0: x, 2.0: y}, val=val).loc["T=1"]
    np.testing.assert_allclose(alone.to_numpy(np.float64), beside.to_numpy(np.float64), rtol=1e-12)


def test_scoring_degenerate_groups_prints_no_numpy_warnings():
    """Empty titles, one-word titles and one text a subsample (empty halves) are scored without RuntimeWarnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table({1.0: ["", "a", "a b", "", "b"]}, val=["", "x", "x y z", "q", "r"], size=1)
        table({1.0: ["", "a", "a b", "", "b"]}, val=["", "x", "x y z", "q", "r"])
        table({1.0: ["", ""], 2.0: ["a", "a"]}, val=["", "b"])
        assert self_bleu([[], []]) == 0 and self_bleu([[], ["a"]]) == 0


def test_bits_per_character_are_undefined_without_a_scored_character():
    """An empty text cut at the length limit scores no character and no end-of-title: NaN, not a perfect 0."""
    samples = pd.DataFrame({"temperature": [1.0, 2.0], "text": ["ab", ""], "finished": [True, False],
                            "logprob": [-3.0, 0.0]})
    t = metrics_table(samples, TRAIN, ["x"]).set_index("group")
    assert t.loc["T=1", "bpc"] == pytest.approx(3 / math.log(2) / 3) and math.isnan(t.loc["T=2", "bpc"])


@pytest.mark.parametrize("a, b", [(["x", "y"], ["x", "y"]), (["x", "y"], ["ab"]), (["ab"], ["x"])])
def test_groups_without_character_pairs_have_no_bigram_divergence(a, b):
    """One-character titles have no bigrams: nothing to compare is NaN ("no figure"), never 0 ("identical")."""
    assert math.isnan(distances(a, b)["js_char_bigrams"])
    assert distances(a, b)["js_words"] == pytest.approx(0 if a == b else 1)


def test_the_divergence_of_each_pair_of_rows_is_its_own():
    """Replicates are rows: an empty pair is NaN in its own row only, and a full row is scored as if alone."""
    from eval.metrics import js_divergence

    p, q = np.array([[1.0, 1, 0], [0, 0, 0], [3, 1, 0]]), np.array([[1.0, 1, 0], [0, 0, 0], [0, 1, 1]])
    found = js_divergence(p, q)
    assert found[0] == 0 and math.isnan(found[1])
    assert found[2] == pytest.approx(jensenshannon([3, 1, 0], [0, 1, 1], base=2) ** 2)
