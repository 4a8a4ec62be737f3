"""The commands as a user runs them: good runs, and bad input that ends in one line and exit status 2."""

import os
import subprocess
import sys

import onnx
import pytest
from helpers import ROOT, assert_usage_error, run_cli


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "export-onnx", "sample-batch", "report", "pipeline"):
        assert command in result.stdout


def test_train_help_shows_every_default():
    from toolkit.config import TrainConfig

    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--help"], capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "250"}, timeout=60)
    assert result.returncode == 0
    for name, value in TrainConfig().to_dict().items():
        if value is not None:
            assert f"[default: {value}]" in result.stdout, name
    assert "<str>" not in result.stdout and "<int>" not in result.stdout and "<float>" not in result.stdout


def test_sample_batch_help_shows_bracketed_text_whole():
    """typer reads help as rich markup, where `[ray]` would be a tag and vanish."""
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sample-batch", "--help"], capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "250"}, timeout=60)
    assert result.returncode == 0 and 'pip install -e ".[ray]"' in result.stdout
    assert "--shard" in result.stdout and "--must-finish" in result.stdout and "--workers" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--data", "missing.csv"], ["missing.csv", "does not exist"]),
    (["--data", "ftp://x"], ["unknown data source"]),
    (["--units", "0"], ["--units", "from 1 to"]),
    (["--epochs", "-1"], ["--epochs"]),
    (["--lr", "0"], ["--lr"]),
    (["--val-fraction", "1.5"], ["--val-fraction"]),
    (["--batch-size", "many"], ["batch-size"]),
    (["--cell", "rnn"], ["--cell"]),
    (["--resume"], ["no checkpoint"]),
])
def test_train_bad_input(args, words, tmp_path):
    result = run_cli("train", "--out", tmp_path / "run", *args, cwd=tmp_path)
    assert_usage_error(result, *words)
    assert not (tmp_path / "run").exists()


def test_train_bad_csv_row_and_empty_data(tmp_path):
    (tmp_path / "bad.csv").write_text('"1","a","b"\n"1","a","b"\n"2","only two"\n')
    assert_usage_error(run_cli("train", "--data", tmp_path / "bad.csv", "--out", tmp_path / "r"), "line 3")
    (tmp_path / "empty.txt").write_text("\n")
    assert_usage_error(run_cli("train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "r"), "no training")
    assert not (tmp_path / "r").exists()


def test_train_refuses_to_overwrite_or_contradict_a_run(tiny_run):
    before = {p.name: p.stat().st_mtime for p in tiny_run.iterdir()}
    assert_usage_error(run_cli("train", "--out", tiny_run), "already holds a run", "--overwrite")
    assert_usage_error(run_cli("train", "--out", tiny_run, "--resume", "--units", "64"), "--units 64", "contradicts")
    assert {p.name: p.stat().st_mtime for p in tiny_run.iterdir()} == before


def test_export_bad_input(tiny_run, tmp_path):
    assert_usage_error(run_cli("export-onnx", tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_usage_error(run_cli("export-onnx", tmp_path / "empty"), "not a training run")
    assert_usage_error(run_cli("export-onnx", tiny_run, "--opset", "9"), "--opset")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_usage_error(run_cli("export-onnx", tiny_run, "--out", blocker / "m.onnx"), "--out", "is a file")


def test_export_then_sample_then_the_summary(tiny_run, tmp_path):
    result = run_cli("export-onnx", tiny_run, "--out", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr
    assert "max |logit difference|" in result.stdout
    result = run_cli("sample-batch", "--model", tmp_path / "m.onnx", "--n", "50", "--temps", "0.3,1.0",
                     "--out", tmp_path / "s", "--no-report")
    assert result.returncode == 0, result.stderr
    assert "CPUExecutionProvider: 100 samples" in result.stdout and "characters/s" in result.stdout
    assert (tmp_path / "s" / "samples.csv").is_file()


def test_sample_batch_and_its_report_import_no_tensorflow_and_say_only_what_they_did(tiny_onnx, tmp_path):
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "cli.py"), "sample-batch", "--model",
                             str(tiny_onnx), "--n", "5", "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported and "tensorflow" not in imported and "keras" not in imported
    assert [line for line in result.stderr.splitlines() if "import time:" not in line] == []  # no chatter
    said = result.stdout.splitlines()
    assert len(said) == 2 and "characters/s" in said[0] and said[1].startswith("wrote ")
    assert (tmp_path / "report.html").is_file()


@pytest.mark.parametrize("args, words", [
    (["--temps", ""], ["--temps", "empty"]),
    (["--temps", "hot,cold"], ["--temps", "numbers"]),
    (["--temps", "-0.5"], ["--temps", "greedy", "-0.5"]),
    (["--temps", "0:2:0"], ["--temps", "step > 0"]),
    (["--min-p", "1.5"], ["--min-p"]),
    (["--presence-penalty", "3"], ["--presence-penalty", "[-2, 2]"]),
    (["--seed", "-1"], ["--seed"]),
    (["--format", "xls"], ["--format"]),
    (["--n", "0"], ["--n"]),
    (["--max-len", "-3"], ["--max-len"]),
    (["--top-p", "0"], ["--top-p"]),
    (["--top-p", "1.01"], ["--top-p"]),
    (["--device", "tpu"], ["--device"]),
    (["--prompt", "∑"], ["prompt", "'∑'"]),
])
def test_sample_batch_bad_arguments(tiny_onnx, tmp_path, args, words):
    assert_usage_error(run_cli("sample-batch", "--model", tiny_onnx, "--out", tmp_path / "s", *args), *words)
    assert not (tmp_path / "s").exists()


def test_sample_batch_bad_models_and_outputs(tiny_onnx, tmp_path):
    out = ["--out", tmp_path / "s"]
    assert_usage_error(run_cli("sample-batch", "--model", tmp_path / "none.onnx", *out), "does not exist")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert_usage_error(run_cli("sample-batch", "--model", tmp_path / "junk.onnx", *out), "not a readable ONNX")
    foreign = onnx.load(tiny_onnx)
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    assert_usage_error(run_cli("sample-batch", "--model", tmp_path / "foreign.onnx", *out), "not a charlm model")
    assert not (tmp_path / "s").exists()
    (tmp_path / "file").write_text("")
    assert_usage_error(run_cli("sample-batch", "--model", tiny_onnx, "--out", tmp_path / "file" / "s"),
                       "--out", "is a file")


@pytest.mark.parametrize("args, words", [(["--temps", "x"], ["--temps"]), (["--n", "0"], ["--n"]),
                                         (["--device", "gpu"], ["--device"])])
def test_pipeline_refuses_bad_sampling_input_before_training(small_csv, tmp_path, args, words):
    result = run_cli("pipeline", "--data", small_csv, "--name", "x", *args, cwd=tmp_path)
    assert_usage_error(result, *words)
    assert not (tmp_path / "runs").exists()


# --- pipeline: every stage checked before training, a job that stopped continues (trust, round two) ---------------

def _cuda_works() -> bool:
    from toolkit.files import UsageError
    from toolkit.sampling.runtime import check_device

    try:
        check_device("cuda", start=True)
    except UsageError:
        return False
    return True


@pytest.mark.skipif(_cuda_works(), reason="CUDA starts here: nothing to refuse")
def test_pipeline_refuses_a_device_that_cannot_start_before_training(small_csv, tmp_path):
    """onnxruntime lists CUDA even where it cannot start it: the pipeline starts it before the first stage."""
    result = run_cli("pipeline", "--data", small_csv, "--name", "x", "--device", "cuda", "--epochs", "1",
                     cwd=tmp_path)
    assert_usage_error(result, "--device cuda", "could not start")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b", "-x", "runs/.."])
def test_pipeline_names_never_reach_outside_runs_and_reports(small_csv, tmp_path, name):
    (tmp_path / "project").mkdir()
    result = run_cli("pipeline", "--data", small_csv, "--name", name, "--epochs", "1", cwd=tmp_path / "project")
    assert_usage_error(result, "--name", "plain name")
    assert [p.name for p in tmp_path.rglob("*")] == ["project"]


def test_pipeline_refuses_a_report_folder_it_would_not_replace_before_training(small_csv, tmp_path):
    (tmp_path / "reports" / "x").mkdir(parents=True)
    (tmp_path / "reports" / "x" / "notes.txt").write_text("mine")
    result = run_cli("pipeline", "--data", small_csv, "--name", "x", "--epochs", "1", cwd=tmp_path)
    assert_usage_error(result, "--name", "holds no charlm samples")
    assert not (tmp_path / "runs").exists() and (tmp_path / "reports" / "x" / "notes.txt").read_text() == "mine"


def test_pipeline_refuses_missing_data_before_training(tmp_path):
    result = run_cli("pipeline", "--data", tmp_path / "gone.csv", "--name", "x", cwd=tmp_path)
    assert_usage_error(result, "does not exist")
    assert not (tmp_path / "runs").exists()


def test_pipeline_resume_continues_a_job_that_stopped_after_training(tiny_run, tiny_onnx, tmp_path):
    """A job whose training completed (and whose model is exported) goes straight on to sampling and the report;
    a new export only where the model is older than the best checkpoint."""
    import shutil

    shutil.copytree(tiny_run, tmp_path / "runs" / "x")
    os.utime(tmp_path / "runs" / "x" / "model.onnx")  # newer than best.keras
    result = run_cli("pipeline", "--name", "x", "--resume", "--n", "4", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[1/4] train: " in result.stdout and "has completed its 2 epochs" in result.stdout
    assert "[2/4] export-onnx: " in result.stdout and "newer than the best checkpoint" in result.stdout
    assert (tmp_path / "reports" / "x" / "report.html").is_file()
    os.utime(tmp_path / "runs" / "x" / "model.onnx", (0, 0))  # older than best.keras: exported again
    result = run_cli("pipeline", "--name", "x", "--resume", "--n", "4", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[2/4] export-onnx -> " in result.stdout
    assert_usage_error(run_cli("pipeline", "--name", "y", "--resume", cwd=tmp_path), "--resume")
