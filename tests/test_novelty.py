"""Novelty against the training titles, checked against brute force: Python sets for character n-grams, a plain
dynamic-programming edit distance for near-copies."""

import random

import numpy as np
import pytest

from eval.novelty import CHAR_ORDERS, FILTER_Q, TrainingTitles, normalised_distance, novelty


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def mutate(rng: random.Random, text: str, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        op = rng.choice("sid") if chars else "i"
        at = rng.randrange(len(chars) + (op == "i")) if chars or op == "i" else 0
        if op == "s":
            chars[at] = rng.choice("abcxyz É")
        elif op == "i":
            chars.insert(at, rng.choice("abcxyz É"))
        else:
            del chars[at]
    return "".join(chars)


def random_titles(rng: random.Random, n: int) -> list[str]:
    words = ["Stocks", "rally", "on", "hopes", "Oil", "prices", "fall", "again", "Team", "wins", "the", "final",
             "Café", "opens", "in", "Zürich", "(AP)", "—", "Q3"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(n)]


def test_normalised_distance_is_levenshtein_over_the_longer_length():
    rng = random.Random(0)
    titles = random_titles(rng, 60)
    for a, b in zip(titles, [mutate(rng, t, rng.randint(0, 6)) for t in titles[::-1]], strict=True):
        assert normalised_distance(a, b) == pytest.approx(edit_distance(a, b) / max(len(a), len(b), 1))


@pytest.mark.parametrize("seed", range(3))
def test_near_copies_equal_brute_force(seed):
    """The candidate filter loses nothing: the near-copy flags equal a scan of every title by edit distance."""
    rng = random.Random(seed)
    titles = random_titles(rng, 200) + ["", "Q3", "abcdefghijklmnopqrstuvwxyz" * 3]
    texts = [mutate(rng, rng.choice(titles), rng.choice([0, 1, 2, 3, 5, 8])) for _ in range(100)]
    texts += random_titles(rng, 30) + ["", "x", "abcdefghijklmnopqrstuvwxyz" * 3 + "ab"]
    threshold = rng.choice([0.1, 0.2])
    found = novelty(texts, TrainingTitles(titles), np.ones(len(texts), bool), threshold).near_copy
    brute = [any(edit_distance(t, u) <= threshold * max(len(t), len(u)) for u in titles
                 if abs(len(t) - len(u)) <= threshold * max(len(t), len(u))) for t in texts]  # |len diff| <= edits
    assert found.tolist() == [float(b) for b in brute]
    assert 0 < sum(brute) < len(texts)  # both kinds occur
    assert any(len(t) >= 3 * FILTER_Q for t, b in zip(texts, brute, strict=True) if b)  # the filter was used


def test_near_copies_are_searched_only_where_asked():
    train = TrainingTitles(["Stocks rally on hopes"])
    found = novelty(["Stocks rally on hope", "Stocks rally on hope"], train, np.array([True, False])).near_copy
    assert found[0] == 1 and np.isnan(found[1])


def test_novel_character_ngrams_equal_sets_of_substrings():
    rng = random.Random(1)
    titles = random_titles(rng, 200)
    texts = [mutate(rng, rng.choice(titles), rng.randint(0, 4)) for _ in range(80)] + ["", "Q3", "ÿ" * 25]
    found = novelty(texts, TrainingTitles(titles), np.zeros(len(texts), bool))
    for j, n in enumerate(CHAR_ORDERS):
        seen = {t[i:i + n] for t in titles for i in range(len(t) - n + 1)}
        for k, t in enumerate(texts):
            grams = [t[i:i + n] for i in range(len(t) - n + 1)]
            assert found.chars[k, j] == len(grams)
            assert found.novel_chars[k, j] == sum(g not in seen for g in grams), (n, t)


def test_characters_beyond_a_byte_are_matched_exactly():
    """300 distinct characters need two bytes a character: the 257th must not pass for the 1st."""
    char = [chr(0x100 + r) for r in range(300)]  # in code-point order
    title = "".join(char[:44] + char[44:][::-1])  # the first 44 ascending, the rest descending
    texts = [title[:20], "".join(char[256:270])]  # a copied piece; an ascending run that no title holds
    found = novelty(texts, TrainingTitles([title]), np.zeros(2, bool))
    assert found.novel_chars[0].sum() == 0
    assert (found.novel_chars[1] == found.chars[1]).all() and found.chars[1, 0] == 11


def test_exact_copies_and_word_trigrams():
    train = TrainingTitles(["a b c d", " c a", "x y z"])
    found = novelty(["A b a b", "a b c d", "c a ", ""], train, np.zeros(4, bool))
    assert found.copy.tolist() == [False, True, True, False]  # surrounding whitespace ignored
    assert found.novel_trigrams.tolist() == [2, 0, 0, 0] and found.trigrams.tolist() == [2, 2, 0, 0]


def test_nearest_title_is_the_closest_by_edit_distance():
    train = TrainingTitles(["Stocks rally on hopes", "Oil prices fall again", "Team wins the final"])
    assert train.nearest("Oil prices fell again") == ("Oil prices fall again", pytest.approx(1 / 21))
