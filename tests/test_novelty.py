"""Novelty against the training titles, checked against brute force: Python sets for character n-grams and word
trigrams, a plain dynamic-programming edit distance (or every title's edit distance) for near-copies."""

import math
import random

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

import eval.novelty
from eval.novelty import CHAR_ORDERS, FILTER_Q, TrainingTitles, novelty


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
        assert Levenshtein.normalized_distance(a, b) == pytest.approx(edit_distance(a, b) / max(len(a), len(b), 1))


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


def reference(texts: list[str], titles: list[str], searched: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Everything `novelty` returns, by brute force: sets of every title's substrings and word trigrams, and every
    title's edit distance (normalised as rapidfuzz does: distance / longer length, compared with the threshold)."""
    exact = {t.strip() for t in titles}
    split = [t.lower().split() for t in titles]
    known = {tuple(w[i:i + 3]) for w in split for i in range(len(w) - 2)}
    seen = {n: {t[i:i + n] for t in titles for i in range(len(t) - n + 1)} for n in CHAR_ORDERS}
    out = {"copy": [], "novel_trigrams": [], "trigrams": [], "novel_chars": [], "chars": [], "near_copy": []}
    for text, search in zip(texts, searched, strict=True):
        w = text.lower().split()
        grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
        out["copy"].append(text.strip() in exact)
        out["trigrams"].append(len(grams))
        out["novel_trigrams"].append(sum(g not in known for g in grams))
        chars = [[text[i:i + n] for i in range(len(text) - n + 1)] for n in CHAR_ORDERS]
        out["chars"].append([len(c) for c in chars])
        out["novel_chars"].append([sum(g not in seen[n] for g in c) for n, c in zip(CHAR_ORDERS, chars, strict=True)])
        near = any(Levenshtein.distance(text, u) / max(len(text), len(u), 1) <= threshold for u in titles)
        out["near_copy"].append(float(near) if search else math.nan)
    arrays = {k: np.array(v, bool if k == "copy" else np.float64) for k, v in out.items()}
    for k in ("chars", "novel_chars"):
        arrays[k] = arrays[k].reshape(len(texts), len(CHAR_ORDERS))
    return arrays


def assert_same(found, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = getattr(found, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        same = (got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == "f" else got == want
        differ = np.flatnonzero(~(same if same.ndim == 2 else same[:, None]).all(axis=1))  # the texts that differ
        assert differ.size == 0, (name, differ[:5], got[differ[:5]], want[differ[:5]])


ODD = "ÉüжΩ€😀漢\x00\t"  # beyond ASCII, beyond the BMP, NUL, a tab


def random_texts(rng: random.Random, titles: list[str], n: int, alphabet: str) -> list[str]:
    """Texts of every kind: titles edited a little or a lot, pieces of two titles joined, copies with spaces around,
    short random strings (shorter than every order), characters no title holds, empty texts, repeats."""
    def edit(text: str, edits: int) -> str:
        chars = list(text)
        for _ in range(edits):
            at = rng.randrange(len(chars) + 1)
            if rng.random() < 0.5 or not chars:
                chars.insert(at, rng.choice(alphabet))
            elif at < len(chars):
                chars[at] = rng.choice(alphabet) if rng.random() < 0.7 else ""
        return "".join(chars)

    texts = []
    for _ in range(n):
        kind, a, b = rng.randrange(7), rng.choice(titles), rng.choice(titles)
        if kind == 0:
            texts.append(edit(a, rng.choice([0, 1, 2, 3, 5, 8])))
        elif kind == 1:
            texts.append(a[:rng.randint(0, len(a))] + b[rng.randint(0, len(b)):])
        elif kind == 2:
            texts.append(rng.choice(["", " ", "  "]) + a + rng.choice(["", " ", "\n"]))
        elif kind == 3:
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5))))
        elif kind == 4:
            texts.append(edit(a + " " + b, rng.randint(0, 3)))
        elif kind == 5:
            texts.append(rng.choice(texts) if texts else "")
        else:
            texts.append(a[rng.randint(0, len(a)):] * rng.randint(1, 3))
    return texts + ["", "x", ODD, ODD[::-1] * 5]


def many_character_titles(rng: random.Random, distinct: int) -> list[str]:
    """Titles holding `distinct` characters between them (two or three bytes a character), in runs that texts can
    share: ranks that differ by a multiple of 256 (or 65536) differ in only one byte."""
    chars = [chr(0x100 + r) for r in range(distinct)]
    chars = [c for c in chars if not 0xD800 <= ord(c) < 0xE000]  # no lone surrogates
    rng.shuffle(chars)
    runs = ["".join(chars[i:i + 97]) for i in range(0, len(chars), 97)]
    return runs + random_titles(rng, 60)


@pytest.mark.parametrize("seed", range(4))
def test_everything_equals_brute_force(seed):
    """Every number novelty returns equals a brute-force computation, on texts of every kind (see random_texts)."""
    rng = random.Random(seed)
    titles = random_titles(rng, 150) + ["", "Q3", "Café Zürich — É 😀", "\tNUL\x00 ", "abcdefghijklmnopqrstuvwxyz" * 2]
    alphabet = "abcxyz É" + ODD
    texts = random_texts(rng, titles, 200, alphabet)
    searched = np.array([rng.random() < 0.7 for _ in texts])
    threshold = [0.1, 0.2, 0.05, 0.3][seed]
    expected = reference(texts, titles, searched, threshold)
    assert_same(novelty(texts, TrainingTitles(titles), searched, threshold), expected)


@pytest.mark.parametrize("distinct", [300, 68_000])
def test_everything_equals_brute_force_at_two_and_three_bytes_a_character(distinct):
    rng = random.Random(distinct)
    titles = many_character_titles(rng, distinct)
    alphabet = "".join(rng.choice(titles[:5])) + "".join(chr(0x100 + r) for r in (0, 1, 256, 257, 65536, 65537)) + ODD
    texts = random_texts(rng, titles, 120, alphabet)
    texts += [t[i:i + 30] for t in titles[:3] for i in range(0, 60, 7)]  # pieces of the many-character runs
    train = TrainingTitles(titles)
    searched = np.ones(len(texts), bool)
    found = novelty(texts, train, searched, 0.1)
    assert train.windows.width == (2 if distinct < 65535 else 3)  # surrogates left out: 65,952 characters
    assert_same(found, reference(texts, titles, searched, 0.1))


@pytest.mark.parametrize("distinct", [254, 255, 65534, 65535])
def test_characters_no_title_holds_never_pass_for_the_last_one(distinct):
    """At the edges of one, two and three bytes a character, a character no title holds (the largest value) must not
    equal the titles' last character (in code-point order, the largest rank)."""
    points = [p for p in range(0x100, 0x100 + distinct + 2048) if not 0xD800 <= p < 0xE000][:distinct]
    titles = ["".join(map(chr, points[i:i + 500])) for i in range(0, distinct, 500)]
    last = titles[-1]
    piece = last[-30:]  # ends with the last character
    unseen = chr(points[-1] + 1)
    texts = [piece, piece[:-1] + unseen, piece[:-1] + unseen + unseen, unseen * 25, piece[:-1]]
    searched = np.ones(len(texts), bool)
    train = TrainingTitles(titles)
    assert_same(novelty(texts, train, searched, 0.1), reference(texts, titles, searched, 0.1))
    assert train.windows.width == 1 + (distinct >= 255) + (distinct >= 65535)


def test_everything_equals_brute_force_in_chunks(monkeypatch):
    """The texts matched a few characters at a time (one text at a time at least) give the same numbers."""
    rng = random.Random(7)
    titles = random_titles(rng, 100) + ["Café Zürich — É 😀"]
    texts = random_texts(rng, titles, 80, "abcxyz É" + ODD)
    searched = np.array([rng.random() < 0.5 for _ in texts])
    expected = reference(texts, titles, searched, 0.1)  # 0.1: pieces of 9 characters, the q-gram filter at work
    train = TrainingTitles(titles)
    for chunk in (1, 37, 500):
        monkeypatch.setattr(eval.novelty, "_CHUNK", chunk)
        assert_same(novelty(texts, train, searched, 0.1), expected)


def test_near_copies_of_texts_not_announced_as_searched():
    """A text left out of `searched` when the matching was built is still searched right when asked."""
    rng = random.Random(3)
    titles = random_titles(rng, 100)
    texts = random_texts(rng, titles, 60, "abcxyz É" + ODD)
    matches = eval.novelty._CharMatches(TrainingTitles(titles), texts, [0, 5])
    expected = reference(texts, titles, np.ones(len(texts), bool), 0.1)["near_copy"]
    assert [matches.near_copy(i, 0.1) for i in range(len(texts))] == expected.tolist()
    assert any(len(t) >= 3 * FILTER_Q for t, near in zip(texts[6:], expected[6:], strict=True) if near)  # filtered


def test_empty_inputs():
    nothing = np.zeros(0, bool)
    for texts, titles in [([], []), ([], ["a b c"]), (["", "a b c d"], []), ([""], [""])]:
        searched = np.ones(len(texts), bool) if texts else nothing
        assert_same(novelty(texts, TrainingTitles(titles), searched), reference(texts, titles, searched, 0.1))


def test_the_titles_windows_are_built_on_first_use_and_kept():
    train = TrainingTitles(["Stocks rally on hopes", "Oil prices fall again"])
    assert "windows" not in vars(train)  # constructing stays cheap
    first = novelty(["Stocks fall again", "Oil rally"], train, np.ones(2, bool))
    windows = train.windows
    second = novelty(["Stocks fall again", "Oil rally"], train, np.ones(2, bool))
    assert train.windows is windows
    assert_same(second, {k: getattr(first, k) for k in ("copy", "novel_trigrams", "trigrams", "novel_chars", "chars",
                                                         "near_copy")})


def test_pieces_are_numpys_linspace():
    for length in range(0, 400):
        for k in range(0, 60):
            assert eval.novelty._pieces(length, k) == np.linspace(0, length, k + 2).astype(int).tolist()
