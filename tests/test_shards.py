"""Shards of a run (`sample-batch --shard I/N`): together they are the whole run, row for row, and `report` scores
them as one run, refusing in one line a set that is not one run's complete, disjoint split."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import assert_usage_error, run_cli, step_model

from toolkit.files import UsageError
from toolkit.sampledir import Run, Shard, runs
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import sampling_config

CONFIG = sampling_config((0.5, 1.2), n=11, prompts=("ab", "c"), seed=4, max_len=24, top_k=8, presence_penalty=0.3,
                         ban=("ba",))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return step_model(tmp_path_factory.mktemp("m") / "model.onnx", scale=0.3)


def read(directory):
    return pd.read_csv(directory / "samples.csv", keep_default_na=False)


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a.drop(columns="logprob").equals(b.drop(columns="logprob"))
    assert np.allclose(a["logprob"], b["logprob"], rtol=1e-5)  # float32 sums over other chunks: last digits


@pytest.mark.parametrize(("count", "sizes"), [(3, [7, 7, 8]), (22, [1] * 22)])  # sizes as `split -n l/K/N` cuts
def test_the_shards_one_after_another_are_the_whole_run(model, tmp_path, count, sizes):
    sample_batch(model, tmp_path / "whole", CONFIG, device="cpu")
    for i in range(1, count + 1):
        sample_batch(model, tmp_path / "shards" / f"{i}", CONFIG, device="cpu", shard=Shard(i, count), batch_size=2)
    parts = [read(tmp_path / "shards" / f"{i}") for i in range(1, count + 1)]
    assert [len(p) for p in parts] == sizes
    same_rows(pd.concat(parts, ignore_index=True), read(tmp_path / "whole"))


def test_run_json_records_the_shard_and_the_whole_run(model, tmp_path):
    run = sample_batch(model, tmp_path, CONFIG, device="cpu", shard=Shard(2, 3))
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["shard"] == {"index": 2, "count": 3, "first": 7, "stop": 14}
    assert info["sampling"] == CONFIG.to_dict() and info["rows"] == run.rows == 7
    assert read(tmp_path)["sample_id"].tolist() == list(range(7, 14))


@pytest.mark.parametrize(("text", "words"), [("0/4", "1 <= I <= N"), ("5/4", "1 <= I <= N"), ("2", "I/N"),
                                              ("a/b", "I/N"), ("1/-2", "I/N")])
def test_a_malformed_shard_is_refused(text, words):
    with pytest.raises(UsageError, match=words):
        Shard.parse(text)


def test_more_shards_than_rows_is_refused_before_anything_is_written(model, tmp_path):
    with pytest.raises(UsageError, match="too few for 23 shards"):
        sample_batch(model, tmp_path / "s", CONFIG, device="cpu", shard=Shard(23, 23))
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def sharded(tiny_onnx, tmp_path_factory):
    """A run with its titles, sampled whole and in three shards (in one directory) by the CLI."""
    root = tmp_path_factory.mktemp("sharded")
    common = ("--model", tiny_onnx, "--n", "12", "--temps", "0.6,1.4", "--max-len", "40", "--seed", "2")
    result = run_cli("sample-batch", *common, "--out", root / "whole")
    assert result.returncode == 0, result.stderr
    result = run_cli("sample-batch", *common, "--out", root / "shards" / "part1", "--shard", "1/3")
    assert result.returncode == 0, result.stderr
    assert "shard 1/3" in result.stdout and not (root / "shards" / "part1" / "report.html").exists()
    config = sampling_config((0.6, 1.4), n=12, max_len=40, seed=2)  # the same options, through the library
    for i in (2, 3):
        sample_batch(tiny_onnx, root / "shards" / f"part{i}", config, device="cpu", shard=Shard(i, 3))
    return root


def test_report_scores_a_directory_of_shards_as_the_whole_run(sharded):
    result = run_cli("report", sharded / "shards")
    assert result.returncode == 0, result.stderr
    whole = pd.read_csv(sharded / "whole" / "metrics.csv")
    joined = pd.read_csv(sharded / "shards" / "metrics.csv")
    numbers = [c for c in whole.columns if whole[c].dtype.kind == "f" and not c.startswith(("mean_logprob", "nll"))]
    assert whole["samples"].tolist() == joined["samples"].tolist() == [12, 12, 48]
    pd.testing.assert_frame_equal(whole[numbers], joined[numbers], rtol=1e-6)


def test_shards_given_one_by_one_are_one_run(sharded):
    parts = [sharded / "shards" / f"part{i}" for i in (3, 1, 2)]  # any order
    (run,) = runs(parts)
    assert run.parts == tuple(sharded / "shards" / f"part{i}" for i in (1, 2, 3)) and run.sharded
    assert run.home.resolve() == (sharded / "shards").resolve()
    assert runs([sharded / "whole", sharded / "shards"]) == [Run((sharded / "whole",), sharded / "whole"),
                                                              Run(tuple(sorted(parts)), sharded / "shards")]


def test_a_missing_shard_is_named(sharded, tmp_path):
    result = run_cli("report", sharded / "shards" / "part1", sharded / "shards" / "part3")
    assert_usage_error(result, "shard 2/3", "missing", "--shard 2/3")
    holder = tmp_path / "holder"
    shutil.copytree(sharded / "shards" / "part2", holder / "part2")
    with pytest.raises(UsageError, match=r"shard 1/3 \(and 1 more\) .* is missing"):
        runs([holder])


def test_a_path_that_is_no_directory_is_refused_in_one_line(sharded, tmp_path):
    """`report` names a missing directory or a file among what it is given, alone or beside shards, and writes
    nothing."""
    (tmp_path / "file").write_text("not samples")
    for given in ([tmp_path / "missing"], [sharded / "shards" / "part1", tmp_path / "file"]):
        result = run_cli("report", *given)
        assert_usage_error(result, f"{given[-1]} is not a directory of samples", "sample-batch --out")
    assert not (tmp_path / "missing").exists() and not (sharded / "shards" / "part1" / "metrics.csv").exists()


def test_a_shard_given_twice_is_refused(sharded, tmp_path):
    shutil.copytree(sharded / "shards" / "part2", tmp_path / "again")
    result = run_cli("report", *(sharded / "shards" / f"part{i}" for i in (1, 2, 3)), tmp_path / "again")
    assert_usage_error(result, "shard 2/3 is given twice", "pass each shard once")


def test_shards_of_other_runs_or_splits_are_not_joined(model, tmp_path):
    sample_batch(model, tmp_path / "a" / "1", CONFIG, device="cpu", shard=Shard(1, 2))
    other = sampling_config((0.5, 1.2), n=11, seed=5)  # another seed: another run
    sample_batch(model, tmp_path / "a" / "2", other, device="cpu", shard=Shard(2, 2))
    with pytest.raises(UsageError, match="shards of 2 different runs"):
        runs([tmp_path / "a"])
    sample_batch(model, tmp_path / "b", CONFIG, device="cpu", shard=Shard(2, 3))
    with pytest.raises(UsageError, match="split one run in 2 and in 3 parts"):
        runs([tmp_path / "a" / "1", tmp_path / "b"])


def test_a_shard_that_lost_rows_is_refused(model, tmp_path):
    sample_batch(model, tmp_path / "1", CONFIG, device="cpu", shard=Shard(1, 2))
    sample_batch(model, tmp_path / "2", CONFIG, device="cpu", shard=Shard(2, 2))
    lines = (tmp_path / "2" / "samples.csv").read_text().splitlines(keepends=True)
    (tmp_path / "2" / "samples.csv").write_text("".join(lines[:1] + lines[2:]))  # its first row gone
    (run,) = runs([tmp_path])
    with pytest.raises(UsageError, match="has sample_id 12 where 11 belongs"):
        list(run.samples().chunks())
