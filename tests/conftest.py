"""Shared fixtures: the AG News file, a tiny trained run and its ONNX export (built once per session), and one
BLAS thread for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import AG_NEWS

from toolkit.data import open_text

# One BLAS (and OpenMP) thread in this process and in the commands the tests start: on CI's 2 cores, shared with
# onnxruntime's and TensorFlow's own threads and with the processes the tests run, BLAS threads that spin while they
# wait make small matrix products (scikit-learn's, MAUVE's k-means) run many times slower (test_mauve.py took 169 s
# on a busy machine with them and 13 s without). The library runs its own such figures on one thread too
# (eval.usefulness).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session")
def ag_news() -> Path:
    """The AG News test split: the bundled copy, or the file CHARLM_AG_NEWS names (.csv, .csv.gz or .csv.xz)."""
    if not AG_NEWS.is_file():
        pytest.fail(f"CHARLM_AG_NEWS names {AG_NEWS}, which is not a file; fix it, or unset it to use the bundled "
                    "copy", pytrace=False)
    return AG_NEWS


@pytest.fixture(scope="session")
def small_csv(ag_news: Path, tmp_path_factory) -> Path:
    """The first 400 rows of AG News: enough for a tiny model to learn something in seconds."""
    path = tmp_path_factory.mktemp("data") / "small.csv"
    with open_text(ag_news, newline="") as f:
        path.write_text("".join(f.readline() for _ in range(400)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(small_csv: Path, tmp_path_factory) -> Path:
    """A two-epoch run of a small LSTM: the input of the export, sampling and report tests."""
    from toolkit.config import TrainConfig
    from toolkit.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(data=str(small_csv), units=32, embedding_dim=16, epochs=2, batch_size=16, lr=1e-2)
    train(config, out, verbose=0, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run: Path) -> Path:
    from exporters.onnx import export

    return export(tiny_run).path
