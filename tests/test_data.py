import gzip
import hashlib
import lzma

import pytest
from helpers import BUNDLED_AG_NEWS, assert_usage_error, run_cli

from toolkit.data import Row, in_validation, load_corpus, read_csv, read_rows, texts_of
from toolkit.files import UsageError
from toolkit.vocab import BREAK

VAL_DIGEST = "73e5b69d221e7608"  # the bundled split's held-out titles, as they were before labels were read
COMPRESS = {"": lambda data: data, ".gz": gzip.compress, ".xz": lzma.compress}


def write(path, text):
    path.write_bytes(COMPRESS.get(path.suffix.lower(), COMPRESS[""])(text.encode("utf-8")))
    return path


def test_csv_keeps_quoted_commas_doubled_quotes_and_escapes(tmp_path):
    path = write(tmp_path / "a.csv", '"1","Stocks, bonds rally","a ""quoted"" word"\n'
                                     '"2","Woods #39;s back \\ &lt;b&gt;","line\\two"\n')
    assert read_csv(path) == [Row("Stocks, bonds rally", 'a "quoted" word', "World"),
                              Row("Woods #39;s back \\ &lt;b&gt;", "line\\two", "Sports")]


def test_csv_header_line_is_skipped(tmp_path):
    path = write(tmp_path / "a.csv", "Class Index,Title,Description\n3,Title one,Desc\n")
    assert read_csv(path) == [Row("Title one", "Desc", "Business")]


def test_csv_row_with_wrong_column_count_names_its_line(tmp_path):
    path = write(tmp_path / "a.csv", '"1","ok","ok"\n"2","missing description"\n')
    with pytest.raises(UsageError, match="line 2.*found 2"):
        read_csv(path)


def test_txt_is_one_title_per_line(tmp_path):
    rows, val = read_rows(str(write(tmp_path / "t.txt", "First title\n\n  \nSecond, title\n")))
    assert [r.title for r in rows] == ["First title", "Second, title"] and val is None


def test_the_real_file_parses_whole(ag_news):
    rows = read_csv(ag_news)
    assert len(rows) == 7600
    assert rows[0].title == "Fears for T N pension after talks"
    assert any("#39;" in r.title for r in rows)


def test_split_is_deterministic_and_near_the_fraction(ag_news):
    a, b = load_corpus(str(ag_news)), load_corpus(str(ag_news))
    assert a.val == b.val and a.train == b.train
    assert 0.08 < len(a.val) / 7600 < 0.12
    assert not set(a.val) & set(a.train_titles)  # the hash decides by title: no title on both sides


def test_split_membership_does_not_depend_on_the_other_rows():
    titles = [f"title {i}" for i in range(2000)]
    held = {t for t in titles if in_validation(t, 0.1)}
    assert held == {t for t in titles[::-1] if in_validation(t, 0.1)}
    assert 150 < len(held) < 250


def test_fields_and_explicit_validation_file(tmp_path):
    data = write(tmp_path / "a.csv", "".join(f'"1","Title {i}","Desc {i}"\n' for i in range(50)))
    val = write(tmp_path / "v.txt", "Held out one\nHeld out two\n")
    corpus = load_corpus(str(data), "both", val_source=str(val))
    assert corpus.val == ["Held out one", "Held out two"]
    assert len(corpus.train) == 100 and corpus.train[14:16] == ["Title 7", f"{BREAK}Desc 7"]
    assert texts_of([Row("t", "d"), Row("u")], "description") == ["d"]
    assert texts_of([Row("t", "d"), Row("u")], "both") == ["t", f"{BREAK}d", "u"]


def test_bundled_source_is_the_original_test_split_byte_for_byte():
    """What toolkit/corpora/README.md promises: Zhang et al.'s test.csv, sha256 as published with the data."""
    raw = lzma.decompress(BUNDLED_AG_NEWS.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699"
    rows, val = read_rows("ag_news:test")
    assert rows == read_csv(BUNDLED_AG_NEWS) and len(rows) == 7600 and val is None


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".GZ"])
def test_compressed_csv_and_txt_read_like_plain_ones(suffix, tmp_path):
    csv_text = '"1","Stocks, bonds rally","a ""quoted"" word"\n"2","Second","line\\two"\n'
    txt_text = "First title\r\n\nSecond, title\n"
    plain_csv, plain_txt = write(tmp_path / "a.csv", csv_text), write(tmp_path / "t.txt", txt_text)
    packed_csv = write(tmp_path / f"a.csv{suffix}", csv_text)
    packed_txt = write(tmp_path / f"t.txt{suffix}", txt_text)
    assert read_rows(str(packed_csv)) == read_rows(str(plain_csv)) and len(read_rows(str(plain_csv))[0]) == 2
    assert read_rows(str(packed_txt)) == read_rows(str(plain_txt)) == ([Row("First title"), Row("Second, title")],
                                                                         None)


def test_compressed_validation_file(tmp_path):
    data = write(tmp_path / "a.csv.xz", "".join(f'"1","Title {i}","Desc {i}"\n' for i in range(50)))
    corpus = load_corpus(str(data), "title", val_source=str(write(tmp_path / "v.txt.gz", "Held out\n")))
    assert corpus.val == ["Held out"] and len(corpus.train) == 50


def test_a_full_size_train_split_reads_whole(tmp_path):
    """The 120,000-row ag_news_csv/train.csv is not here; a file of its length and format must read whole."""
    rows = "".join(f'"{i % 4 + 1}","Title number {i}, with a comma","Description {i} of the story."\n'
                   for i in range(120_000))
    read = read_csv(write(tmp_path / "train.csv.gz", rows))
    assert len(read) == 120_000
    assert read[-1] == Row("Title number 119999, with a comma", "Description 119999 of the story.", "Sci/Tech")


def damaged(tmp_path):
    """Compressed files that cannot be read: truncated, corrupt, mislabelled, or not UTF-8 inside."""
    good = lzma.compress(b'"1","a title","a description"\n' * 2000)
    gz = gzip.compress(b'"1","a title","a description"\n' * 2000)
    files = {"truncated.csv.xz": good[: len(good) // 2], "truncated.txt.gz": gz[: len(gz) // 2],
             "corrupt.csv.xz": good[:40] + bytes(40) + good[80:], "plain.csv.gz": b'"1","a","b"\n',
             "latin1.txt.xz": lzma.compress("caf\xe9\n".encode("latin-1"))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in files]


def test_damaged_compressed_files_are_usage_errors(tmp_path):
    for path in damaged(tmp_path):
        with pytest.raises(UsageError, match=f"cannot read {path}") as error:
            read_rows(str(path))
        assert "\n" not in str(error.value)


def test_cli_truncated_compressed_file_is_one_line(tmp_path):
    path = damaged(tmp_path)[0]
    assert_usage_error(run_cli("train", "--data", path, "--out", tmp_path / "r"), "cannot read", "not complete")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("source, message", [
    ("nope.csv", "does not exist"), ("s3://bucket/x.csv", "unknown data source"), ("hf:ag_news", "unknown"),
    ("ag_news:train", "tfds:ag_news_subset"), ("nope.csv.xz", "does not exist"), ("x.json.gz", "neither"),
])
def test_bad_sources(source, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.json.gz").write_bytes(gzip.compress(b"{}"))
    with pytest.raises(UsageError, match=message):
        load_corpus(source)


def test_empty_dataset_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no training texts"):
        load_corpus(str(write(tmp_path / "e.txt", "\n\n")))


def test_tfds_source_reads_both_splits():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        rows, val = read_rows("tfds:ag_news_subset")
    assert len(rows) == 12 and len(val) == 12
    assert all(isinstance(r.title, str) and isinstance(r.description, str) for r in rows)


def test_the_real_tfds_builder_loads_without_downloading(tmp_path):
    """What `tfds.load` does before its download: the builder, its features and its code path (which needs
    importlib_resources, a module TFDS imports but does not install)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = tfds.builder("ag_news_subset", data_dir=str(tmp_path))
    assert {"title", "description"} <= set(builder.info.features)
    assert builder.code_path.name.startswith("ag_news_subset")


# --- labels are read, not dropped (issue: class-conditional titles) -------------------------------------------------

def test_ag_news_class_ids_and_tfds_labels_name_the_same_classes():
    """The CSV's class ids 1-4 and TFDS's label ids 0-3 (read offline from its builder) are World, Sports, Business,
    Sci/Tech in that order: a swapped mapping fails here."""
    from toolkit.data import AG_NEWS_CLASSES, tfds_label_names

    assert AG_NEWS_CLASSES == ("World", "Sports", "Business", "Sci/Tech")
    assert tfds_label_names("ag_news_subset") == list(AG_NEWS_CLASSES)
    rows = read_csv(BUNDLED_AG_NEWS)
    # the first rows of the test split, as ag_news_csv/test.csv labels them (3 = Business, 4 = Sci/Tech)
    assert [r.label for r in rows[:3]] == ["Business", "Sci/Tech", "Sci/Tech"]
    assert {r.label for r in rows} == set(AG_NEWS_CLASSES)


def test_another_csvs_classes_are_read_as_they_are_and_a_txt_has_none(tmp_path):
    path = write(tmp_path / "a.csv", "label,title,description\nsports,A match,\npolitics,A vote,\nsports,A race,\n")
    corpus = load_corpus(str(path), val_source=str(write(tmp_path / "v.csv", "politics,Another vote,\n")))
    assert corpus.classes == ("politics", "sports") and corpus.train_labels == [1, 0, 1]
    assert corpus.val_labels == [0] and corpus.train_title_labels == [1, 0, 1]
    assert load_corpus(str(write(tmp_path / "t.txt", "One\nTwo\nThree\n")), val_fraction=0.4).classes == ()
    many = write(tmp_path / "m.csv", "".join(f'"id{i}","Title {i}",""\n' for i in range(100)))
    assert load_corpus(str(many)).classes == ()  # 100 distinct values are not classes


def test_the_validation_split_keeps_the_same_titles_with_labels(ag_news):
    """Reading labels changes nothing of which titles are held out (pinned: the 737 of the bundled split)."""
    corpus = load_corpus(str(ag_news), "both")
    assert len(corpus.val_titles) == 737 and all(in_validation(t, 0.1) for t in corpus.val_titles)
    digest = hashlib.sha256("\n".join(corpus.val_titles).encode()).hexdigest()[:16]
    assert digest == VAL_DIGEST
    assert len(corpus.val_labels) == len(corpus.val) and len(corpus.train_labels) == len(corpus.train)
    titles = [t for t in corpus.train if not t.startswith(BREAK)]
    assert len(titles) == len(corpus.train_titles)
