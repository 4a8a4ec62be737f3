import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, assert_usage_error, run_cli

from eval.report import write_comparison, write_report
from toolkit.data import in_validation
from toolkit.files import UsageError

TRAIN = ["Stocks rally on hopes", "Oil prices fall again", "Team wins the final"]
VAL = ["Markets close higher today", "New phone goes on sale", "Rain expected this weekend"]
OTHER = [f"Other title number {i}" for i in range(40)] + ["brand new title"]  # big enough for a hashed split
SAMPLES = {0.3: ["Oil prices fall again", "Oil prices fall agan", "Team wins"],
           1.0: ["Stocks rally on hopes", "brand new title", "brand new title"]}


def write_reference(d: Path, train=TRAIN, val=VAL) -> None:
    with lzma.open(d / "reference.json.xz", "wt", encoding="utf-8") as f:
        json.dump({"train_titles": train, "val_titles": val}, f)


def make_run(root: Path, samples: dict[float, list[str]] = SAMPLES, name: str = "run", run_json: bool = True,
             reference: bool = True, logprob: bool = False, **info: object) -> Path:
    """A sample directory as `cli.py sample-batch` leaves it: samples.csv, run.json, reference.json.xz."""
    d = root / name
    d.mkdir(parents=True)
    pairs = [(t, text) for t, texts in samples.items() for text in texts]
    rows = [{"sample_id": i, "temperature": t, "prompt": "", "text": text, "length": len(text), "finished": True,
             **({"logprob": -2.0 * (len(text) + 1)} if logprob else {}), "seed": 0}
            for i, (t, text) in enumerate(pairs)]
    pd.DataFrame(rows).to_csv(d / "samples.csv", index=False)
    if reference:
        write_reference(d)
    if run_json:
        (d / "run.json").write_text(json.dumps({
            "model": "runs/default/model.onnx", "provider": "CPUExecutionProvider", "rows": len(rows),
            "temperatures": list(samples), "n": 3, "seed": 0, "sampling": {"top_k": 0, "top_p": 1.0},
            "train_config": {"data": "../data/gone.csv", "val_fraction": 0.5}, **info}), encoding="utf-8")
    return d


def test_report_writes_metrics_csv_and_a_self_contained_html(tmp_path):
    d = make_run(tmp_path)
    assert write_report(d) == (d / "metrics.csv", d / "report.html")
    metrics = pd.read_csv(d / "metrics.csv")
    assert metrics["group"].tolist() == ["T=0.3", "T=1", "reference"]
    assert metrics["novelty"].tolist() == pytest.approx([2 / 3, 2 / 3, 1])  # copies of training titles
    assert metrics["near_copy_rate"].tolist() == pytest.approx([2 / 3, 1 / 3, 0])  # "...agan" is 1 edit away
    assert metrics["samples"].tolist() == [3, 3, 3] and metrics["size"].tolist() == [3, 3, 3]
    for name in ("distinct_2", "self_bleu", "js_words", "novel_char_4", "novel_char_20"):
        assert {name, f"{name}_lo", f"{name}_hi"} <= set(metrics.columns)
    page = (d / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 4  # frontier, metrics against temperature, lengths, novelty curve
    assert "self_bleu" in page and "CPUExecutionProvider" in page and "within normalised edit distance" in page
    assert "2 × brand new title" in page  # the most repeated output, with its count
    assert "<td>Oil prices fall agan</td><td>Oil prices fall again</td><td class=near>0.05</td>" in page
    assert re.findall(r'<script|<link|@import|(?:src|href)="(?!#)|url\((?!#)', page) == []  # nothing to fetch
    assert sorted(p.name for p in d.iterdir()) == ["metrics.csv", "reference.json.xz", "report.html", "run.json",
                                                   "samples.csv", "usefulness.csv"]


def test_sample_and_title_text_is_escaped_in_the_report(tmp_path):
    d = make_run(tmp_path, {1.0: ["<script>alert(1)</script>"] * 2, 1.5: ["<b>bold</b> & more", "x"]})
    write_reference(d, train=["<i>a training title</i>"], val=["<img src=x>", "ok"])
    write_report(d)
    page = (d / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page and "<b>bold" not in page
    assert "&lt;i&gt;a training title&lt;/i&gt;" in page and "<i>" not in page and "<img" not in page


def test_bits_per_character_beside_the_reference(tmp_path):
    d = make_run(tmp_path, logprob=True, reference_bpc=2.5)
    write_report(d)
    metrics = pd.read_csv(d / "metrics.csv").set_index("group")
    assert metrics.loc["T=1", "bpc"] == pytest.approx(2 / math.log(2))  # 2 nats for each character and the end
    assert metrics.loc["reference", "bpc"] == 2.5
    plain = make_run(tmp_path / "plain")  # neither the column nor the key: a dash, not a failure
    write_report(plain)
    assert pd.read_csv(plain / "metrics.csv")["bpc"].isna().all()
    assert "<td>–</td>" in (plain / "report.html").read_text(encoding="utf-8")


def test_samples_parquet_is_read_like_samples_csv(tmp_path):
    d = make_run(tmp_path)
    write_report(d)
    expected = pd.read_csv(d / "metrics.csv")
    samples = pd.read_csv(d / "samples.csv", keep_default_na=False)
    (d / "samples.csv").unlink()
    samples.to_parquet(d / "samples.parquet")
    write_report(d)
    pd.testing.assert_frame_equal(pd.read_csv(d / "metrics.csv"), expected)


def test_train_data_replaces_the_training_titles(tmp_path):
    (tmp_path / "other.txt").write_text("\n".join(OTHER), encoding="utf-8")
    d = make_run(tmp_path)
    write_report(d, train_data=str(tmp_path / "other.txt"))
    metrics = pd.read_csv(d / "metrics.csv").set_index("group")
    # "brand new title" (twice) falls in other.txt's training half (run.json's val_fraction 0.5); the rest does not
    assert not in_validation("brand new title", 0.5)
    assert metrics.loc["T=1", "novelty"] == pytest.approx(1 / 3) and metrics.loc["T=0.3", "novelty"] == 1
    assert metrics.loc["reference", "samples"] == len(VAL)  # the reference titles stay the run's
    assert "other.txt (" in (d / "report.html").read_text(encoding="utf-8")


def test_train_data_stands_in_for_a_missing_reference_file(tmp_path):
    (tmp_path / "other.txt").write_text("\n".join(OTHER), encoding="utf-8")
    d = make_run(tmp_path, run_json=False, reference=False)
    write_report(d, train_data=str(tmp_path / "other.txt"))
    metrics = pd.read_csv(d / "metrics.csv").set_index("group")
    # without run.json the default val_fraction 0.1 splits other.txt, whose held-out part is the reference
    assert metrics.loc["reference", "samples"] == sum(in_validation(t, 0.1) for t in OTHER)
    assert "No run.json" in (d / "report.html").read_text(encoding="utf-8")


def test_size_sets_the_common_subsample_size(tmp_path):
    d = make_run(tmp_path, {1.0: [f"title {i}" for i in range(7)]})
    write_reference(d, val=[f"real {i}" for i in range(5)])
    write_report(d, size=2)
    metrics = pd.read_csv(d / "metrics.csv")
    assert metrics["size"].tolist() == [2, 2] and metrics["subsamples"].tolist() == [3, 2]
    assert "subsamples of <b>2</b> texts" in (d / "report.html").read_text(encoding="utf-8")


def test_comparison_puts_runs_side_by_side_at_one_size(tmp_path):
    small = make_run(tmp_path, {0.3: SAMPLES[0.3][:2], 1.0: SAMPLES[1.0]}, name="small")
    default = make_run(tmp_path / "x", {0.3: ["Team wins the final"] * 4, 1.0: ["a b c", "d e f", "g", "h"]},
                       name="default")
    out = tmp_path / "cmp"
    assert write_comparison([small, default], out) == (out / "metrics.csv", out / "report.html")
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics.columns[0] == "run"
    assert metrics[["run", "group"]].values.tolist() == [
        ["small", "T=0.3"], ["small", "T=1"], ["small", "reference"],
        ["default", "T=0.3"], ["default", "T=1"], ["default", "reference"]]
    assert metrics["size"].tolist() == [2] * 6  # the smallest group of either run
    assert metrics["subsamples"].tolist() == [1, 1, 1, 2, 2, 1]
    assert {"distinct_2_lo", "distinct_2_hi"} <= set(metrics.columns)
    assert metrics.set_index(["run", "group"]).loc[("default", "T=0.3"), "duplicate_rate"] == 0.5
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3 and page.count("<h3>T=") == 0  # no per-run sample lists
    assert "small" in page[page.index("<svg"):] and "default" in page[page.index("<svg"):]  # legends name runs
    assert not (small / "metrics.csv").exists()


def test_run_names_are_escaped_in_a_comparison(tmp_path):
    odd = make_run(tmp_path, name="<b>$\\frac$ & co")
    write_comparison([odd, make_run(tmp_path / "x", name="plain")], tmp_path / "cmp")
    page = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    assert "<b>$" not in page and page.count("&lt;b&gt;$\\frac$ &amp; co") >= 3  # summary, tables, plot legend


def test_comparison_refuses_to_overwrite_a_compared_directory(tmp_path):
    small, default = make_run(tmp_path, name="small"), make_run(tmp_path / "x", name="default")
    with pytest.raises(UsageError, match="overwrite"):
        write_comparison([small, default], small)
    assert not (small / "metrics.csv").exists()


def _columns(d: Path, header: str, row: str) -> None:
    (d / "samples.csv").write_text(f"{header}\n{row}\n", encoding="utf-8")


HEADER = "sample_id,temperature,prompt,text,length,finished,seed"
BAD_INPUTS = {
    "missing samples.csv": (lambda d: (d / "samples.csv").unlink(), "sample-batch"),
    "empty file": (lambda d: (d / "samples.csv").write_text(""), "empty"),
    "header only": (lambda d: (d / "samples.csv").write_text(HEADER + "\n"), "no samples"),
    "missing columns": (lambda d: _columns(d, "sample_id,temperature", "0,1.0"), "text, finished"),
    "text temperature": (lambda d: _columns(d, HEADER, '0,hot,,A title,7,True,0'), "'hot'"),
    "finished not a bool": (lambda d: _columns(d, HEADER, '0,1.0,,A title,7,maybe,0'), "finished"),
    "logprob not a number": (lambda d: _columns(d, HEADER + ",logprob", '0,1.0,,A title,7,True,0,x'), "logprob"),
    "damaged parquet": (lambda d: (d / "samples.parquet").write_bytes(b"PAR1 not really"), "samples.parquet"),
    "corrupt run.json": (lambda d: (d / "run.json").write_text("{"), "run.json"),
    "reference_bpc not a number": (lambda d: (d / "run.json").write_text('{"reference_bpc": "low"}'), "reference_bpc"),
    "no reference file": (lambda d: (d / "reference.json.xz").unlink(), "pass train_data"),
    "corrupt reference file": (lambda d: (d / "reference.json.xz").write_bytes(b"\xfd7zXZ\x00junk"), "reference"),
    "reference not lists": (lambda d: write_reference(d, train="a title"), "train_titles"),
    "reference without val titles": (lambda d: write_reference(d, val=[]), "val_titles"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_one_line_usage_error_that_writes_nothing(tmp_path, case):
    d = make_run(tmp_path)
    spoil, words = BAD_INPUTS[case]
    spoil(d)
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(UsageError, match=re.escape(words)) as e:
        write_report(d)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in d.iterdir()) == before  # no metrics.csv, report.html or temporary file


def test_report_command_from_another_folder_offline(tmp_path):
    """Only the sample directory is read: the run's data path (relative, long gone) and the corpus are not."""
    d = make_run(tmp_path / "reports")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    result = run_cli("report", os.path.relpath(d, elsewhere), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (d / "report.html").is_file() and pd.read_csv(d / "metrics.csv")["group"].iloc[-1] == "reference"
    assert_usage_error(run_cli("report", d, "--size", "4", cwd=elsewhere), "--size 4")
    assert_usage_error(run_cli("report", d, "--train-data", "missing.csv", cwd=elsewhere), "does not exist")


def test_report_does_not_import_tensorflow(tmp_path):
    d = make_run(tmp_path, logprob=True)
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "cli.py"), "report", str(d)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "rapidfuzz" in imported and "tensorflow" not in imported and "keras" not in imported


def test_a_report_waits_for_no_one_and_mixes_with_no_one(tmp_path):
    """While another command writes a sample directory, its report is refused, not written beside half of it."""
    from toolkit.files import exclusive

    (tmp_path / "s").mkdir()
    with exclusive(tmp_path / "s"), pytest.raises(UsageError, match="another command is writing"):
        write_report(tmp_path / "s")
    with pytest.raises(UsageError, match="not a directory of samples"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


# --- a report that reads what run.json describes, in bounded chunks (trust, round two) -----------------------------

@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A sample directory as sample-batch writes it (3 temperatures of 40), with reference titles in the model."""
    import onnx
    from helpers import step_model

    from toolkit.sampling.batch import sample_batch
    from toolkit.sampling.config import SampleConfig
    from toolkit.sampling.contract import StepSpec
    from toolkit.sampling.runtime import Model
    from toolkit.titles import Titles

    root = tmp_path_factory.mktemp("sampled")
    path = step_model(root / "m.onnx", scale=0.3)
    proto, spec = onnx.load(path), Model.load(path).spec
    del proto.metadata_props[:]
    blob = Titles(["abc def", "ghi jab", "cab dea"] * 5, ["ab cd", "ef gh", "ij ab", "ba dc"] * 3).to_bytes()
    onnx.helper.set_model_props(proto, StepSpec(**{**spec.__dict__, "reference": blob}).metadata("best"))
    onnx.save(proto, path)
    sample_batch(path, root / "s", SampleConfig((0.5, 1.0, 1.5), n=40, max_len=30, prompts=("a", "b")), device="cpu")
    return root / "s"


def spoiled(sampled, tmp_path, spoil):
    d = tmp_path / "s"
    shutil.copytree(sampled, d)
    spoil(d)
    return d


def _edit_rows(d, edit):
    rows = pd.read_csv(d / "samples.csv", keep_default_na=False)
    edit(rows).to_csv(d / "samples.csv", index=False)


MISMATCHED = {
    "a whole temperature missing": (lambda d: _edit_rows(d, lambda r: r[r["temperature"] != 1.5]), "holds 80 rows"),
    "the file cut short": (lambda d: _edit_rows(d, lambda r: r.iloc[:-1]), "holds 119 rows"),
    "a row repeated": (lambda d: _edit_rows(d, lambda r: pd.concat([r.iloc[:1], r])), "row 1 has sample_id 0"),
    "rows out of order": (lambda d: _edit_rows(d, lambda r: r.iloc[::-1]), "row 0 has sample_id 119"),
    "a temperature edited": (lambda d: _edit_rows(d, lambda r: r.assign(temperature=r["temperature"].where(
        r.index != 5, 9.0))), "row 5 has temperature 9"),
    "a prompt moved": (lambda d: _edit_rows(d, lambda r: r.assign(prompt=r["prompt"].where(r.index != 3, "a"))),
                       "row 3 has a prompt"),
    "another run's titles": (lambda d: (d / "reference.json.xz").write_bytes(
        __import__("toolkit.titles", fromlist=["Titles"]).Titles(["x"], ["y"]).to_bytes()), "digest"),
}


@pytest.mark.parametrize("case", MISMATCHED)
def test_samples_that_run_json_does_not_describe_are_refused(sampled, tmp_path, case):
    """A truncated or edited samples.csv, or the titles of another run, would be scored as if complete: every
    reader checks what it reads against run.json, in one line, writing nothing."""
    spoil, words = MISMATCHED[case]
    d = spoiled(sampled, tmp_path, spoil)
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(UsageError, match=re.escape(words)) as e:
        write_report(d)
    assert "\n" not in str(e.value) and ("run.json" in str(e.value) or "digest" in str(e.value))
    assert sorted(p.name for p in d.iterdir()) == before
    assert_usage_error(run_cli("report", d), words)


def test_the_reader_holds_a_chunk_at_a_time_and_scores_the_same(sampled, tmp_path, monkeypatch):
    """Chunks of 7 rows give the same report as one chunk (to the rounding of sums taken in another order): nothing
    depends on the file being in memory."""
    import toolkit.sampledir

    whole = pd.read_csv(write_report(spoiled(sampled, tmp_path / "a", lambda d: None))[0])
    seen = []
    chunks = toolkit.sampledir.Samples.chunks

    def small(self, columns=toolkit.sampledir.COLUMNS):
        for batch in chunks(self, columns):
            seen.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(toolkit.sampledir, "CHUNK_ROWS", 7)
    monkeypatch.setattr(toolkit.sampledir.Samples, "chunks", small)
    chunked = pd.read_csv(write_report(spoiled(sampled, tmp_path / "b", lambda d: None))[0])
    pd.testing.assert_frame_equal(chunked, whole, rtol=1e-12)
    assert max(seen) == 7 and sum(seen) == 120


def test_counts_cover_every_sample_and_the_rest_a_stated_subset(sampled, tmp_path):
    """--subset bounds what the subset metrics read; the counts over every sample do not change with it, and the
    report says which is which."""
    d = spoiled(sampled, tmp_path, lambda d: None)
    write_report(d)
    every = pd.read_csv(d / "metrics.csv").set_index("group")
    write_report(d, subset=10)
    some = pd.read_csv(d / "metrics.csv").set_index("group")
    assert every.loc["T=1", ["samples", "scored"]].tolist() == [40, 40]
    assert some.loc["T=1", ["samples", "scored"]].tolist() == [40, 10] and (some["size"] == 10).all()
    for name in ("mean_length", "finished_rate", "bpc", "novelty", "copy_rate"):  # over every sample, both times
        np.testing.assert_array_equal(some[name].iloc[:3], every[name].iloc[:3], err_msg=name)
        np.testing.assert_array_equal(some[f"{name}_lo"].iloc[:3], every[f"{name}_lo"].iloc[:3], err_msg=name)
    samples = pd.read_csv(d / "samples.csv", keep_default_na=False)
    assert every.loc["T=1", "mean_length"] == pytest.approx(samples[samples.temperature == 1.0].length.mean())
    page = (d / "report.html").read_text()
    assert "subset of at most 10 texts a group" in page and "Counted over <b>every sample</b>: novelty" in page


@pytest.mark.parametrize("name", ["metrics.csv", "usefulness.csv", "report.html"])
def test_a_report_never_overwrites_a_users_report_files(tmp_path, name):
    """In a directory charlm did not make (samples from elsewhere), a metrics.csv, usefulness.csv or report.html of
    the user's stays; one charlm wrote is replaced."""
    d = make_run(tmp_path, run_json=False)
    (d / name).write_text("my,own,figures\n1,2,3\n")
    with pytest.raises(UsageError, match=f"{name} that charlm did not write"):
        write_report(d)
    assert (d / name).read_text() == "my,own,figures\n1,2,3\n"
    assert not any((d / other).exists() for other in ("metrics.csv", "usefulness.csv", "report.html") if other != name)
    (d / name).unlink()
    write_report(d)
    write_report(d)  # its own files: replaced


@pytest.mark.parametrize("make, words", [
    (lambda o: (o.mkdir(), (o / "notes.txt").write_text("mine")), "files other than a comparison's"),
    (lambda o: (o.mkdir(), (o / "report.html").write_text("<html>mine</html>")), "report.html that charlm did not"),
    (lambda o: (o.mkdir(), (o / "usefulness.csv").write_text("a,b\n")), "usefulness.csv that charlm did not"),
    (lambda o: o.write_text("a file"), "is a file")])
def test_a_comparison_goes_only_where_it_loses_nothing(tmp_path, make, words):
    a, b = make_run(tmp_path, name="a"), make_run(tmp_path, name="b")
    make(tmp_path / "out")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match=words):
        write_comparison([a, b], tmp_path / "out")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_many_temperatures_keep_the_page_and_its_figures_bounded(tmp_path):
    """200 temperatures: at most 12 length panels, novelty lines and sample sections,
    the frontier names at most 15 points, and the page says what it left out."""
    samples = {round(0.01 * i + 0.1, 2): [f"title {i} {j}" for j in range(2)] for i in range(200)}
    d = make_run(tmp_path, samples=samples)
    write_report(d, size=2)
    page = (d / "report.html").read_text()
    assert page.count("<h3>T=") == 12 and "Shown for 12 of the 200 temperatures" in page
    assert "(12 of 200 temperatures, evenly spaced)" in page
    assert len(pd.read_csv(d / "metrics.csv")) == 201


def test_the_report_opens_with_a_recommendation_and_a_comparison_ranks_every_runs_temperatures(tmp_path):
    """Without labels the recommendation is MAUVE's, and the labelled sections say why they are missing; across
    runs, the best run's temperature is named."""
    from toolkit.data import load_corpus

    real = load_corpus("ag_news:test", "title", 0.1, None).train_titles
    train, val, fresh = real[:600], real[600:800], real[800:1000]
    runs = []
    for name, samples in (("copies", {1.0: [fresh[0]] * 200}), ("fresh", {0.5: [fresh[0]] * 200, 1.0: fresh})):
        d = make_run(tmp_path, samples, name=name, run_json=False, reference=False)
        write_reference(d, train, val)
        runs.append(d)
    write_report(runs[1])
    page = (runs[1] / "report.html").read_text(encoding="utf-8")
    body = page[page.index("<body>"):]
    assert body.index("Recommended: T=1, the highest MAUVE") < body.index("Counted over")  # the page opens with it
    assert "Skipped: class fidelity, TSTR and augmentation: the titles the model was trained on have no labels" in page
    useful = pd.read_csv(runs[1] / "usefulness.csv")
    assert set(useful["section"]) == {"mauve"} and set(useful["class"]) == {"all"}
    assert useful.columns.tolist() == ["section", "class", "temperature", "figure", "value", "lo", "hi", "texts"]
    write_comparison(runs, tmp_path / "cmp")
    page = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    assert "Recommended: fresh T=1, the highest MAUVE" in page
    useful = pd.read_csv(tmp_path / "cmp" / "usefulness.csv")
    assert useful.columns[0] == "run" and set(useful["run"]) == {"copies", "fresh"}
    write_comparison(runs, tmp_path / "cmp")  # its own files: replaced
