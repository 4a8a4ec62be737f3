"""How each text relates to the training titles: exact copies, novel word trigrams, novel character n-grams,
and near-copies by edit distance.

A training set has ~10^5 titles (5 M characters), so nothing here compares texts pair by pair: character n-grams
are matched by sorting (exact, no hashing), and near-copies are searched among candidates that a lossless
filter picks, with rapidfuzz's edit distance. The titles' side of the sort is built once per TrainingTitles, on
first use, and kept; each call sorts only its texts' side and binary-searches it in the titles'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

CHAR_ORDERS = range(4, 21)  # the novelty curve: character n-grams of these lengths
NEAR_COPY_THRESHOLD = 0.1  # normalised edit distance at or below which a text is a near-copy of a title
NEAR_COPY_CAP = 2000  # texts per group searched for near-copies (each costs ~0.1-1 ms)
FILTER_Q = 6  # q-gram length of the near-copy candidate filter
_CHUNK = 1 << 18  # text positions matched at a time: bounds the memory of a call (~200 bytes a position)


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


@dataclass
class TrainingTitles:
    """The training titles and what is built from them once per report."""

    titles: list[str]
    exact: frozenset[str] = field(init=False)  # stripped titles, for exact copies
    trigrams: frozenset[tuple[str, ...]] = field(init=False)  # word trigrams

    def __post_init__(self) -> None:
        self.titles = list(self.titles)
        self.exact = frozenset(t.strip() for t in self.titles)
        self.trigrams = frozenset(g for t in self.titles for g in ngrams(words(t), 3))

    @cached_property
    def windows(self) -> _TitleWindows:
        """The titles' character windows, sorted: built when `novelty` first needs them, then kept (the titles are
        not expected to change after construction)."""
        return _TitleWindows(self.titles)

    def nearest(self, text: str) -> tuple[str, float]:
        """The training title closest to `text` by normalised edit distance, and the distance (a full scan)."""
        if not self.titles:
            return "", math.nan
        title, distance, _ = process.extractOne(text, self.titles, scorer=Levenshtein.normalized_distance)
        return title, distance


@dataclass(frozen=True)
class Novelty:
    """Per text: whether it is a training title, novel word trigrams, character n-grams absent from the
    training titles (one column per length in CHAR_ORDERS), and whether it is a near-copy (NaN: not searched)."""

    copy: np.ndarray  # [texts] bool
    novel_trigrams: np.ndarray  # [texts]
    trigrams: np.ndarray  # [texts]
    novel_chars: np.ndarray  # [texts, orders]
    chars: np.ndarray  # [texts, orders]: character n-grams of each length
    near_copy: np.ndarray  # [texts] float: 1, 0, or NaN where not searched


def novelty(texts: Sequence[str], train: TrainingTitles, searched: np.ndarray,
            threshold: float = NEAR_COPY_THRESHOLD) -> Novelty:
    """Compare `texts` with the training titles; near-copies are searched only where `searched` is True."""
    chosen = np.flatnonzero(searched)
    matches = _CharMatches(train, texts, chosen)
    near = np.full(len(texts), np.nan)
    for i in chosen:
        near[i] = matches.near_copy(i, threshold)
    known, total, seen = train.trigrams.__contains__, [], []
    for tokens in map(words, matches.distinct):
        total.append(max(len(tokens) - 2, 0))  # len(ngrams(tokens, 3))
        seen.append(sum(map(known, zip(tokens, tokens[1:], tokens[2:], strict=False))))  # in the training titles
    trigrams = np.array(total, np.float64)
    return Novelty(
        copy=np.array([t.strip() in train.exact for t in matches.distinct], bool)[matches.inverse],
        novel_trigrams=(trigrams - np.array(seen, np.float64))[matches.inverse], trigrams=trigrams[matches.inverse],
        novel_chars=matches.novel, chars=matches.total, near_copy=near)


def _codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' code points end to end, and each text's length."""
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), "<u4")
    return codes, np.fromiter(map(len, texts), np.int64, len(texts))


def _row_bytes(width: int) -> int:
    """Bytes a window takes: its characters, then zeros and a 4-byte tail, to a multiple of 8."""
    return -(-(CHAR_ORDERS[-1] * width + 4) // 8) * 8


def _windows(ids: np.ndarray, lengths: np.ndarray, width: int, by_text: bool) -> np.ndarray:
    """[positions, _row_bytes(width)] bytes: each position's window of its next `span` character ids (padded with 0
    at its text's end, so a window never runs into the next text; `width` bytes a character, big-endian, so that
    byte order is the order of ids), then in the last 4 bytes (big-endian) its text's number if `by_text`, else
    the position's."""
    span = CHAR_ORDERS[-1]
    out = np.zeros((ids.size, _row_bytes(width)), np.uint8)
    owner = np.repeat(np.arange(lengths.size), lengths)
    out[:, -4:] = (owner if by_text else np.arange(ids.size)).astype(">u4").view(np.uint8).reshape(ids.size, 4)
    at = owner
    at *= span
    at += np.arange(ids.size)  # each text followed by `span` zeros
    padded = np.zeros(ids.size + span * (lengths.size + 1), np.uint32)
    padded[at] = ids
    for byte in range(width):
        plane = (padded >> (8 * (width - 1 - byte)) & 0xFF).astype(np.uint8)
        for j in range(span):  # a column at a time: no [positions, span] temporary
            np.take(plane[j:], at, out=out[:, j * width + byte])
    return out


def _as_keys(rows: np.ndarray) -> np.ndarray:
    """The rows of a C-contiguous byte matrix as one byte string each (a view: sorting it sorts the rows)."""
    return rows.view(f"S{rows.shape[1]}").reshape(rows.shape[0])


def _tails(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows[:, -4:]).view(">u4").reshape(rows.shape[0]).astype(np.int64)


def _shared_chars(a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
    """Characters each row of `a` shares with the same row of `b` from the start (windows of `width` bytes a
    character), at most a window's: the first differing byte, found 8 bytes at a time."""
    x = a.view("<u8") ^ b.view("<u8")  # little-endian: a word's first byte is its lowest
    differ = x != 0
    word = differ.argmax(axis=1)
    v = np.take_along_axis(x, word[:, None], axis=1)[:, 0]
    same_bytes = word * 8 + np.bitwise_count(~v & (v - 1)) // 8  # trailing zero bits of the first nonzero word
    same_bytes[~differ.any(axis=1)] = a.shape[1]
    return np.minimum(same_bytes, CHAR_ORDERS[-1] * width) // width


def _pieces(length: int, k: int) -> list[int]:
    """np.linspace(0, length, k + 2).astype(int), as a list (the same floating-point steps)."""
    if k < 0:
        return np.linspace(0, length, k + 2).astype(int).tolist()
    step = length / (k + 1)
    return [int(j * step) for j in range(k + 1)] + [length]


class _TitleWindows:
    """Every position of every training title as a window of its next 20 characters (padded with 0 at its title's
    end; one to three bytes a character: 1 + the character's rank among the titles' characters) followed by the
    title's number, all sorted as byte strings: 28 bytes a training character at one byte a character (52, 68 at two,
    three)."""

    def __init__(self, titles: Sequence[str]):
        codes, self.lengths = _codes(titles)
        self.lut = np.zeros(0x110000, np.uint32)  # code point -> 1 + its rank among the titles' characters
        seen = np.flatnonzero(np.bincount(codes, minlength=0x110000))
        self.lut[seen] = np.arange(1, seen.size + 1)
        self.width = 1 if seen.size < 255 else 2 if seen.size < 65535 else 3  # bytes a character
        self.unseen = 256**self.width - 1  # characters no title holds: never equal to a title's
        self.rows = _windows(self.lut[codes], self.lengths, self.width, by_text=True)
        del codes
        self.keys = _as_keys(self.rows)
        self.keys.sort()  # in place: the rows are sorted with it
        self.holders = _tails(self.rows).astype(np.int32)  # the title of each window, in sorted order
        self.by_length = np.argsort(self.lengths, kind="stable")  # titles by length, for short texts' near-copies
        self.sorted_lengths = self.lengths[self.by_length]
        self.titles = np.array(titles, object)


class _CharMatches:
    """For every position of the texts, the longest substring starting there that some training title holds
    (up to the longest order of CHAR_ORDERS), and the near-copy search built on the same sort.

    Each position of the texts becomes a window of its next 20 characters like the titles' (_TitleWindows; a
    character no title holds becomes the largest value, equal to none of theirs). A text's window shares its
    longest prefix with a title's window next to it in sorted order (the one before its insertion point or the
    one at it): the longest match, exactly, with no hashing. Title windows sharing their first FILTER_Q characters
    form one run of that order: the titles in a text position's run are those holding its q-gram.

    Each distinct text is matched once (`distinct`; text i is distinct[inverse[i]]), _CHUNK positions at a time;
    runs are found for the texts in `searched` (for others when asked).
    """

    def __init__(self, train: TrainingTitles, texts: Sequence[str], searched: Sequence[int] = ()):
        self.index = index = train.windows
        self.title_lengths = index.lengths
        number: dict[str, int] = {}
        self.inverse = np.fromiter((number.setdefault(t, len(number)) for t in texts), np.int64, len(texts))
        self.distinct = texts = list(number)
        codes, self.lengths = _codes(texts)
        ids = index.lut[codes]
        ids[ids == 0] = index.unseen
        span = CHAR_ORDERS[-1]
        starts = np.concatenate([[0], np.cumsum(self.lengths)])
        self.wanted, self.more, self.found = np.zeros(len(texts), bool), {}, {}
        self.wanted[self.inverse[np.asarray(searched, np.int64)]] = True
        # the runs of the searched texts' positions, end to end: text i's from run_at[i]
        self.run_at = np.concatenate([[0], np.cumsum(np.where(self.wanted, self.lengths, 0))])
        self.run_lo, self.run_hi = np.zeros(self.run_at[-1], np.int64), np.zeros(self.run_at[-1], np.int64)
        self.longest = np.zeros(codes.size, np.int64)
        first = 0
        while first < len(texts):
            last = max(first + 1, int(np.searchsorted(starts, starts[first] + _CHUNK, "right")) - 1)
            self._match(ids, starts, first, last)
            first = last
        text_of = np.repeat(np.arange(len(texts)), self.lengths)
        per_length = np.bincount(text_of * (span + 1) + self.longest, minlength=len(texts) * (span + 1))
        at_least = np.cumsum(per_length.reshape(len(texts), span + 1)[:, ::-1], axis=1)[:, ::-1]
        orders = np.asarray(CHAR_ORDERS)
        total = np.maximum(self.lengths[:, None] - orders[None, :] + 1, 0).astype(np.float64)
        self.total, self.novel = total[self.inverse], (total - at_least[:, orders])[self.inverse]

    def _match(self, ids: np.ndarray, starts: np.ndarray, first: int, last: int) -> None:
        """The longest matches of texts first..last-1, and their runs where wanted."""
        index = self.index
        lo, hi = starts[first], starts[last]
        lengths = self.lengths[first:last]
        rows = _windows(ids[lo:hi], lengths, index.width, by_text=False)
        _as_keys(rows).sort()  # sorted, the binary search is several times faster
        position = _tails(rows)  # within the chunk, in sorted order
        owner = np.repeat(np.arange(first, last), lengths)[position]
        longest = np.zeros(position.size, np.int64)
        if n := index.keys.size:
            after = np.searchsorted(index.keys, _as_keys(rows))
            for neighbour in (after - 1, after):  # clipped at either end: the other neighbour
                shared = _shared_chars(index.rows[np.clip(neighbour, 0, n - 1)], rows, index.width)
                np.maximum(longest, shared, out=longest)
        left = starts[owner + 1] - lo - position  # characters from each position to its text's end
        self.longest[lo + position] = np.minimum(longest, left)
        mine = self.wanted[owner]
        if mine.any():
            runs = self.run_at[owner[mine]] + lo + position[mine] - starts[owner[mine]]
            self.run_lo[runs], self.run_hi[runs] = self._runs(rows[mine])

    def _runs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The range of sorted title windows sharing each row's first FILTER_Q characters."""
        q = FILTER_Q * self.index.width
        bound = rows.copy()
        bound[:, q:] = 0  # at or before every window of that q-gram
        run_lo = np.searchsorted(self.index.keys, _as_keys(bound), "left")
        bound[:, q:] = 0xFF  # at or after every window of that q-gram
        return run_lo, np.searchsorted(self.index.keys, _as_keys(bound), "right")

    def _text_runs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.wanted[i]:
            at = slice(self.run_at[i], self.run_at[i + 1])
            return self.run_lo[at], self.run_hi[at]
        if i not in self.more:  # a text not announced as searched
            ids = self.index.lut[_codes([self.distinct[i]])[0]]
            ids[ids == 0] = self.index.unseen
            self.more[i] = self._runs(_windows(ids, self.lengths[i:i + 1], self.index.width, by_text=False))
        return self.more[i]

    def near_copy(self, i: int, threshold: float) -> float:
        """1.0 if some title lies within `threshold` normalised edit distance of text `i`, else 0.0.

        Lossless filter: a title within the threshold differs by at most k = floor(threshold * L / (1 - threshold))
        edits (L the text's length), so one of k + 1 disjoint pieces of the text survives in it verbatim
        (pigeonhole), and with it each of that piece's q-grams: the candidates are the titles holding the rarest
        q-gram of some piece. Pieces shorter than q leave no filter: then every title of a fitting length is a
        candidate.
        """
        i = int(self.inverse[i])
        if (i, threshold) not in self.found:
            self.found[i, threshold] = self._near_copy(i, threshold)
        return self.found[i, threshold]

    def _near_copy(self, i: int, threshold: float) -> float:
        index = self.index
        length = int(self.lengths[i])
        k = math.floor(threshold * length / (1 - threshold) + 1e-9)
        lo, hi = math.ceil(length * (1 - threshold) - 1e-9), math.floor(length / (1 - threshold) + 1e-9)
        bounds = _pieces(length, k)
        pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
        if min(b - a for a, b in pieces) < FILTER_Q:
            candidates = index.by_length[np.searchsorted(index.sorted_lengths, lo, "left"):
                                         np.searchsorted(index.sorted_lengths, hi, "right")]
        else:
            first, last = self._text_runs(i)
            sizes = (last - first).tolist()  # title windows holding each position's q-gram (0: none)
            parts = []
            for a, b in pieces:
                piece = sizes[a:b - FILTER_Q + 1]
                fewest = min(piece)
                if fewest == 0:  # a q-gram no title holds: no title holds this piece
                    continue
                rarest = a + piece.index(fewest)
                parts.append(index.holders[first[rarest]:last[rarest]])
            if not parts:
                return 0.0
            candidates = np.concatenate(parts)
            fits = self.title_lengths[candidates]
            candidates = np.sort(candidates[(fits >= lo) & (fits <= hi)])
            if candidates.size > 1:  # each title once
                new = np.ones(candidates.size, bool)
                np.not_equal(candidates[1:], candidates[:-1], out=new[1:])
                candidates = candidates[new]
        if candidates.size == 0:
            return 0.0
        found = process.extractOne(self.distinct[i], index.titles[candidates].tolist(),
                                   scorer=Levenshtein.normalized_distance, score_cutoff=threshold)
        return float(found is not None)
