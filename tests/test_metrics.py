import math
import random

import pandas as pd
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from eval.metrics import METRICS, TrainingTitles, group_metrics, metrics_table, self_bleu, words

TRAIN = TrainingTitles.build(["a b c d", " c a", "x y z"])
TEXTS = ["A b a b", "a b c d", "a b c d", "c a ", ""]
FINISHED = [True, True, False, True, False]


def test_group_metrics_match_the_definitions():
    m = group_metrics(TEXTS, FINISHED, TRAIN)
    # words: [a b a b] [a b c d] [a b c d] [c a] [] -> 14 words
    assert m["samples"] == 5
    assert m["distinct_1"] == pytest.approx(4 / 14)  # a b c d
    assert m["distinct_2"] == pytest.approx(5 / 14)  # ab ba bc cd ca
    assert m["distinct_3"] == pytest.approx(4 / 14)  # aba bab abc bcd
    assert m["repetition_rate"] == pytest.approx(1 / 5)  # only "a b a b" repeats a bigram (ab)
    # four texts have bigrams; "a b a b" has 3 bigrams, 2 distinct: 1 - 2/3; the other three 0
    assert m["seq_rep_2"] == pytest.approx((1 / 3) / 4)
    assert m["duplicate_rate"] == pytest.approx(1 - 4 / 5)  # "a b c d" twice
    # "a b c d" (twice) and "c a " (training " c a", both stripped) are copies; "A b a b" and "" are novel
    assert m["novelty"] == pytest.approx(2 / 5)
    assert m["copy_rate"] == pytest.approx(3 / 5)
    # trigrams aba bab abc bcd abc bcd; training has abc bcd xyz: 2 of 6 novel
    assert m["novel_3gram_rate"] == pytest.approx(2 / 6)
    assert m["mean_length"] == pytest.approx((7 + 7 + 7 + 4 + 0) / 5)
    assert m["finished_rate"] == pytest.approx(3 / 5)
    assert list(m) == list(METRICS)


def test_a_group_without_words_scores_zero_not_nan():
    m = group_metrics(["", "  "], [False, False], TRAIN)
    assert [m[k] for k in ("distinct_1", "distinct_3", "seq_rep_2", "novel_3gram_rate", "self_bleu")] == [0] * 5
    assert m["duplicate_rate"] == pytest.approx(0.0) and m["novelty"] == 1.0


def test_self_bleu_by_hand():
    # "a b" against "a b": p1 = 2/2, p2 = 1/1, no 3- or 4-grams so smoothing gives 0.1/1 each, lengths equal
    assert self_bleu([["a", "b"], ["a", "b"]]) == pytest.approx(math.sqrt(0.1))
    # "a b" vs "a b c": p = 1, 1, .1, .1 and brevity penalty exp(1 - 3/2);
    # "a b c" vs "a b": p1 = 2/3, p2 = 1/2, p3 = 0.1/1 (no match), p4 = 0.1/1 (no 4-gram), longer than the reference
    expected = (math.sqrt(0.1) * math.exp(-0.5) + (2 / 3 * 1 / 2 * 0.1 * 0.1) ** 0.25) / 2
    assert self_bleu([["a", "b"], ["a", "b", "c"]]) == pytest.approx(expected)
    assert self_bleu([["a", "b"], ["c", "d"]]) == 0  # no unigram in common
    assert math.isnan(self_bleu([["a", "b"]]))  # one text has no references


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


def test_metrics_table_has_one_sorted_row_per_temperature_and_a_reference_row():
    samples = pd.DataFrame({"temperature": [1.0, 1.0, 0.5], "text": ["x y z", "new words here", "c a"],
                            "finished": [True, False, True]})
    val = ["Real title one", "another real title"]
    table = metrics_table(samples, ["a b c d", " c a", "x y z"], val)
    assert list(table.columns[:2]) == ["group", "temperature"] and list(table.columns[2:]) == list(METRICS)
    assert table["group"].tolist() == ["T=0.5", "T=1", "reference"]
    assert table["samples"].tolist() == [1, 2, 2]
    assert table["novelty"].tolist() == [0.0, 0.5, 1.0]  # "c a" and "x y z" are training titles
    assert table["finished_rate"].tolist() == [1.0, 0.5, 1.0]
    reference = table.iloc[-1]
    assert math.isnan(reference["temperature"])
    assert reference["distinct_1"] == pytest.approx(4 / 6)  # real title one another real title: 4 distinct of 6
    assert reference.drop(["group", "temperature"]).to_dict() == pytest.approx(
        group_metrics(val, [True, True], TRAIN), nan_ok=True)


def test_words_are_lowercased_and_split_on_whitespace():
    assert words("  Stocks\tRally, stocks ") == ["stocks", "rally,", "stocks"]
