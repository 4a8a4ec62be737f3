import csv
import json

import numpy as np
import pytest

from toolkit.batch import COLUMNS, parse_temperatures, sample_batch
from toolkit.files import UsageError


def read(path):
    with open(path / "samples.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_rows_columns_and_run_summary(tiny_onnx, tmp_path):
    run = sample_batch(tiny_onnx, tmp_path, n=20, temps=[0.0, 1.0, 1.8], max_len=64, seed=3)
    rows = read(tmp_path)
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 60 == run.rows
    assert [float(r["temperature"]) for r in rows] == [0.0] * 20 + [1.0] * 20 + [1.8] * 20
    assert all(int(r["length"]) == len(r["text"]) <= 64 for r in rows)
    assert sum(int(r["length"]) for r in rows) == run.characters
    assert any(r["finished"] == "True" for r in rows) and all(r["seed"] == "3" for r in rows)
    assert len({r["text"] for r in rows[:20]}) == 1  # greedy: every row the same
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["provider"] == "CPUExecutionProvider" and summary["train_config"]["units"] == 32


def test_chunking_gives_the_same_rows_as_one_batch(tiny_onnx, tmp_path):
    sample_batch(tiny_onnx, tmp_path / "one", n=40, temps=[0.3, 1.0, 1.8], seed=1)
    sample_batch(tiny_onnx, tmp_path / "chunks", n=40, temps=[0.3, 1.0, 1.8], seed=1, batch_size=7)
    assert read(tmp_path / "one") == read(tmp_path / "chunks")


def test_seed_reproduces_and_differs(tiny_onnx, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        sample_batch(tiny_onnx, tmp_path / name, n=30, temps=[1.0], seed=seed)
    a, b, c = (read(tmp_path / x) for x in "abc")
    assert a == b and [r["text"] for r in a] != [r["text"] for r in c]


def test_prompts_cycle_and_start_every_text(tiny_onnx, tmp_path):
    sample_batch(tiny_onnx, tmp_path, n=6, temps=[1.0], prompts=["Today ", "Moscow, "])
    rows = read(tmp_path)
    assert [r["prompt"] for r in rows] == ["Today ", "Moscow, "] * 3
    assert all(r["text"].startswith(r["prompt"]) for r in rows)


def test_top_k_1_is_greedy(tiny_onnx, tmp_path):
    sample_batch(tiny_onnx, tmp_path / "k1", n=10, temps=[1.8], top_k=1)
    sample_batch(tiny_onnx, tmp_path / "greedy", n=10, temps=[0.0])
    assert [r["text"] for r in read(tmp_path / "k1")] == [r["text"] for r in read(tmp_path / "greedy")]


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "--n"), ({"max_len": 0}, "--max-len"), ({"batch_size": 0}, "--batch-size"),
 ({"top_p": 0.0}, "--top-p"), ({"top_p": 1.5}, "--top-p"),
    ({"top_k": -1}, "--top-k"), ({"prompts": ["Ωmega"]}, "'Ω'"), ({"prompts": ["x" * 20], "max_len": 20}, "--max-len"),
])
def test_bad_arguments_write_nothing(tiny_onnx, tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        sample_batch(tiny_onnx, tmp_path / "out", **{"n": 5, "temps": [1.0], **kwargs})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [("", "empty"), ("a,b", "numbers"), ("0.3,-1", "negative"),
                                           (" , ", "empty"), ("nan", "negative or infinite")])
def test_temperature_lists(text, message):
    with pytest.raises(UsageError, match=message):
        parse_temperatures(text)
    assert parse_temperatures("0.3, 1,1.8") == [0.3, 1.0, 1.8]


def test_a_large_n_runs_in_bounded_chunks(tiny_onnx, tmp_path):
    run = sample_batch(tiny_onnx, tmp_path, n=5000, temps=[1.0], max_len=16, batch_size=1024)
    assert run.rows == 5000 and len(read(tmp_path)) == 5000
    assert np.mean([r["text"] != "" for r in read(tmp_path)]) > 0.9
