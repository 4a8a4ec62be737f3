import numpy as np
import pytest
from helpers import decode

from toolkit.files import UsageError
from toolkit.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab


def test_reserved_ids_come_first_and_characters_in_code_point_order():
    vocab = Vocab.build(["ba", "ca b"])
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert vocab.chars == (" ", "a", "b", "c")
    assert vocab.size == len(SPECIALS) + 4
    assert vocab.encode("abc") == [5, 6, 7]


def test_build_is_deterministic_whatever_the_text_order():
    texts = ["Fears for T N pension", "Ky. Company #39;s", "&lt;b&gt;"]
    assert Vocab.build(texts) == Vocab.build(reversed(texts))


def test_round_trip_and_unknown_characters():
    vocab = Vocab.build(["hello world"])
    assert decode(vocab, vocab.encode("hello world")) == "hello world"
    assert vocab.encode("hé") == [vocab.index["h"], UNK]
    assert decode(vocab, [BOS, *vocab.encode("he"), EOS, *vocab.encode("llo")]) == "he"


def test_json_round_trip_keeps_every_character(tmp_path):
    vocab = Vocab.build(['"quoted", \\back\\slash', "ünïcode €"])
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == vocab


def test_json_with_other_reserved_ids_is_refused():
    with pytest.raises(ValueError, match="reserved ids"):
        Vocab.from_json('{"specials": {"<pad>": 1}, "chars": ["a"]}')


def test_decode_rows_matches_decode():
    vocab = Vocab.build(["abc def"])
    rows = [vocab.encode("abc"), vocab.encode("d e f"), []]
    ids = np.zeros((3, 6), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    assert vocab.decode_rows(ids).tolist() == ["abc", "d e f", ""]


def test_encode_known_names_the_unknown_character():
    with pytest.raises(UsageError, match="'é'"):
        Vocab.build(["abc"]).encode_known("abé", "prompt")


@pytest.mark.parametrize("chars", [tuple("ab c"), ("a", "é", "字", "😀", " ")])
def test_utf8_rows_are_the_decoded_texts_as_arrow_lays_them_out(chars):
    vocab = Vocab(chars)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, vocab.size, (300, 20))
    ids[np.arange(20)[None] >= rng.integers(0, 21, 300)[:, None]] = 0  # padding after each end
    offsets, data = vocab.utf8_rows(ids)
    texts = [bytes(data[offsets[i]:offsets[i + 1]]).decode("utf-8") for i in range(300)]
    assert texts == vocab.decode_rows(ids).tolist() and offsets.dtype == np.int32
