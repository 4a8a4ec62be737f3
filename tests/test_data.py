import pytest

from toolkit.data import Row, in_validation, load_corpus, read_csv, read_rows, texts_of
from toolkit.files import UsageError
from toolkit.vocab import BREAK


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_keeps_quoted_commas_doubled_quotes_and_escapes(tmp_path):
    path = write(tmp_path / "a.csv", '"1","Stocks, bonds rally","a ""quoted"" word"\n'
                                     '"2","Woods #39;s back \\ &lt;b&gt;","line\\two"\n')
    assert read_csv(path) == [Row("Stocks, bonds rally", 'a "quoted" word'),
                              Row("Woods #39;s back \\ &lt;b&gt;", "line\\two")]


def test_csv_header_line_is_skipped(tmp_path):
    path = write(tmp_path / "a.csv", "Class Index,Title,Description\n3,Title one,Desc\n")
    assert read_csv(path) == [Row("Title one", "Desc")]


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


@pytest.mark.parametrize("source, message", [
    ("nope.csv", "does not exist"), ("s3://bucket/x.csv", "unknown data source"), ("hf:ag_news", "unknown"),
])
def test_bad_sources(source, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
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
