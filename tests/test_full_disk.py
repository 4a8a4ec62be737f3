"""A disk that fills up under any writer: every command, run as a user runs it with the operating system's file size
limit set low (RLIMIT_FSIZE, so each write past the limit fails with EFBIG, as a full disk's fails with ENOSPC), ends
in one line and exit status 2, leaves no temporary behind and changes nothing of what was there."""

import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, assert_usage_error

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file size limit on this system")


def limited(limit: int, *args, cwd=None) -> subprocess.CompletedProcess:
    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-B", str(ROOT / "cli.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, preexec_fn=cap, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused_whole(result, folder, before):
    assert_usage_error(result, "cannot write")
    after = files(folder)
    assert not [name for name in after if ".tmp" in name or ".new-" in name], sorted(after)
    assert after == before


# limits that fail different writers: run.json and the titles (small), the report (tens of kB), the samples
@pytest.mark.parametrize("limit", [600, 20_000, 150_000])
def test_sample_batch_with_its_report_on_a_full_disk(tiny_onnx, tmp_path, limit):
    out = tmp_path / "s"
    first = limited(10**9, "sample-batch", "--model", tiny_onnx, "--n", "300", "--out", out)
    assert first.returncode == 0, first.stderr
    before = files(tmp_path)
    result = limited(limit, "sample-batch", "--model", tiny_onnx, "--n", "300", "--seed", "1", "--out", out)
    assert_refused_whole(result, tmp_path, before)


@pytest.mark.parametrize("limit", [2_000, 100_000])
def test_report_on_a_full_disk(tiny_onnx, tmp_path, limit):
    out = tmp_path / "s"
    assert limited(10**9, "sample-batch", "--model", tiny_onnx, "--n", "50", "--out", out, "--no-report"
                   ).returncode == 0
    before = files(tmp_path)
    assert_refused_whole(limited(limit, "report", out), tmp_path, before)


@pytest.mark.parametrize("limit", [1_000, 60_000])
def test_export_on_a_full_disk(tiny_run, tmp_path, limit):
    """The model (tens of kB) or its record (under one kB) cannot be written: the earlier export stays."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = files(tmp_path)
    assert_refused_whole(limited(limit, "export-onnx", run), tmp_path, before)


def test_train_on_a_full_disk(small_csv, tmp_path):
    """A new run that cannot write its first files leaves nothing at all."""
    result = limited(3_000, "train", "--data", small_csv, "--out", tmp_path / "run", "--units", "8",
                     "--embedding-dim", "4", "--epochs", "1")
    assert_refused_whole(result, tmp_path, {})
