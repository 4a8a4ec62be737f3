import json
import re
from pathlib import Path

import pandas as pd
import pytest

from eval.report import write_comparison, write_report
from toolkit.config import TrainConfig
from toolkit.data import in_validation
from toolkit.files import UsageError

TRAIN = ["Stocks rally on hopes", "Oil prices fall again", "Team wins the final"]
VAL = ["Markets close higher today", "New phone goes on sale", "Rain expected this weekend"]
OTHER = [f"Other title number {i}" for i in range(40)] + ["brand new title"]  # big enough for a hashed split
SAMPLES = {0.3: ["Oil prices fall again"], 1.0: ["Stocks rally on hopes", "brand new title", "brand new title"]}


def make_run(root: Path, samples: dict[float, list[str]] = SAMPLES, name: str = "run", run_json: bool = True,
             **config: object) -> Path:
    """A sample directory as `cli.py sample-batch` leaves it, trained on TRAIN and validated on VAL."""
    d = root / name
    d.mkdir(parents=True)
    (root / "train.txt").write_text("\n".join(TRAIN), encoding="utf-8")
    (root / "val.txt").write_text("\n".join(VAL), encoding="utf-8")
    pairs = [(t, text) for t, texts in samples.items() for text in texts]
    rows = [{"sample_id": i, "temperature": t, "prompt": "", "text": text, "length": len(text), "finished": True,
             "seed": 0} for i, (t, text) in enumerate(pairs)]
    pd.DataFrame(rows).to_csv(d / "samples.csv", index=False)
    if run_json:
        train_config = TrainConfig(data=str(root / "train.txt"), val_data=str(root / "val.txt")).replace(**config)
        (d / "run.json").write_text(json.dumps({
            "model": "runs/default/model.onnx", "provider": "CPUExecutionProvider", "rows": len(rows),
            "characters": 1234, "seconds": 0.5, "chars_per_second": 2468.0, "temperatures": list(samples), "n": 3,
            "top_k": 0, "top_p": 1.0, "max_len": 128, "seed": 0, "prompts": [""],
            "train_config": train_config.to_dict(), "data_fingerprint": "abc123"}), encoding="utf-8")
    return d


def test_report_writes_metrics_csv_and_a_self_contained_html(tmp_path):
    d = make_run(tmp_path)
    assert write_report(d) == (d / "metrics.csv", d / "report.html")
    metrics = pd.read_csv(d / "metrics.csv")
    assert metrics["group"].tolist() == ["T=0.3", "T=1", "reference"]
    assert metrics["novelty"].tolist() == pytest.approx([0, 2 / 3, 1])  # copies of training titles are not novel
    assert metrics["samples"].tolist() == [1, 3, len(VAL)]
    page = (d / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 1 and "self_bleu" in page and "CPUExecutionProvider" in page
    assert "2 × brand new title" in page  # the most repeated output, with its count
    assert re.findall(r'<script|<link|@import|(?:src|href)="(?!#)|url\((?!#)', page) == []  # nothing to fetch
    assert sorted(p.name for p in d.iterdir()) == ["metrics.csv", "report.html", "run.json", "samples.csv"]


def test_sample_text_is_escaped_in_the_report(tmp_path):
    d = make_run(tmp_path, {1.0: ["<script>alert(1)</script>"] * 2, 1.5: ["<b>bold</b> & more"]})
    write_report(d)
    page = (d / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page and "<b>" not in page


def test_train_data_replaces_the_runs_training_titles(tmp_path):
    (tmp_path / "other.txt").write_text("\n".join(OTHER), encoding="utf-8")
    d = make_run(tmp_path, val_fraction=0.5)
    write_report(d, train_data=str(tmp_path / "other.txt"))
    metrics = pd.read_csv(d / "metrics.csv").set_index("group")
    # "brand new title" (twice) falls in other.txt's training half, "Stocks rally on hopes" is not in other.txt
    assert not in_validation("brand new title", 0.5)
    assert metrics.loc["T=1", "novelty"] == pytest.approx(1 / 3)
    # the run's val_fraction is kept and its val_data dropped: the reference is half of other.txt by hash
    assert metrics.loc["reference", "samples"] == sum(in_validation(t, 0.5) for t in OTHER)


def test_train_data_stands_in_for_a_missing_run_json(tmp_path):
    (tmp_path / "other.txt").write_text("\n".join(OTHER), encoding="utf-8")
    d = make_run(tmp_path, run_json=False)
    write_report(d, train_data=str(tmp_path / "other.txt"))
    metrics = pd.read_csv(d / "metrics.csv").set_index("group")
    # without run.json the default val_fraction 0.1 splits other.txt; "brand new title" stays in training
    assert not in_validation("brand new title", 0.1)
    assert metrics.loc["T=1", "novelty"] == pytest.approx(1 / 3)
    assert "No run.json" in (d / "report.html").read_text(encoding="utf-8")


def test_comparison_puts_runs_side_by_side(tmp_path):
    small = make_run(tmp_path, name="small")
    default = make_run(tmp_path / "x", {0.3: ["Team wins the final"] * 2, 1.0: ["a b c", "d e f"]}, name="default")
    out = tmp_path / "cmp"
    assert write_comparison([small, default], out) == (out / "metrics.csv", out / "report.html")
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics.columns[0] == "run"
    assert metrics[["run", "group"]].values.tolist() == [
        ["small", "T=0.3"], ["small", "T=1"], ["small", "reference"],
        ["default", "T=0.3"], ["default", "T=1"], ["default", "reference"]]
    assert metrics.set_index(["run", "group"]).loc[("default", "T=0.3"), "duplicate_rate"] == 0.5
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 1 and page.count("<h3>") == 0  # one overlaid plot, no per-run sample lists
    svg = page[page.index("<svg"):]
    assert "small" in svg and "default" in svg  # the line-style legend names the runs
    assert not (small / "metrics.csv").exists()


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
    "no run.json": (lambda d: (d / "run.json").unlink(), "--train-data"),
    "corrupt run.json": (lambda d: (d / "run.json").write_text("{"), "run.json"),
    "missing training data": (lambda d: (d.parent / "train.txt").unlink(), "does not exist"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_one_line_usage_error_that_writes_nothing(tmp_path, case):
    d = make_run(tmp_path)
    spoil, words = BAD_INPUTS[case]
    spoil(d)
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(UsageError, match=words) as e:
        write_report(d)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in d.iterdir()) == before  # no metrics.csv, report.html or temporary file
