"""Every numeric option of `train`, any value a user can type: accepted within its documented range, else one
line naming the option and the range (property-based: hypothesis draws the values, huge and non-finite ones too)."""

import json
import math

import numpy as np
import pytest
from helpers import as_cli, assert_usage_error, cli_in_process, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.config import FLOAT_LIMITS, INT_LIMITS, TrainConfig
from toolkit.files import UsageError

ANY_NUMBER = st.one_of(st.integers(), st.integers(-(2**80), 2**80), st.floats(), st.booleans())
INT_OPTIONS = sorted(INT_LIMITS)
FLOAT_OPTIONS = sorted(FLOAT_LIMITS)


def in_range(name: str, value) -> bool:
    """The ranges the errors and --help promise, written out again here."""
    if isinstance(value, bool):
        return False
    if name in INT_LIMITS:
        low, high = INT_LIMITS[name]
        return isinstance(value, int) and low <= value <= high
    if not math.isfinite(value):
        return False
    return {"val_fraction": 0 < value < 1, "dropout": 0 <= value < 1, "weight_drop": 0 <= value < 1,
            "lr": 0 < value <= 1, "label_dropout": 0 <= value < 1}[name]


def test_the_bounds_fit_numpy_and_tensorflow():
    """Whatever is accepted fits where it goes: int32 shapes, numpy's seed range, a finite float32 rate."""
    for name, (low, high) in INT_LIMITS.items():
        assert 0 <= low <= high < 2**31 or name == "seed", name
    np.random.seed(INT_LIMITS["seed"][1])  # the largest seed is one numpy takes
    with pytest.raises(ValueError):
        np.random.seed(INT_LIMITS["seed"][1] + 1)  # and the bound is tight
    assert INT_LIMITS["batch_size"][1] * INT_LIMITS["seq_len"][1] < 2**31  # one batch of ids is an int32 shape
    assert np.isfinite(np.float32(FLOAT_LIMITS["lr"][1]))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(INT_OPTIONS + FLOAT_OPTIONS), value=ANY_NUMBER)
def test_a_config_accepts_exactly_its_ranges(name, value):
    try:
        config = TrainConfig(**{name: value})
    except UsageError as e:
        assert not in_range(name, value), (name, value, e)
        flag = "--" + name.replace("_", "-")
        assert str(e).startswith(f"{name} must ") and "\n" not in str(e)
        assert as_cli(e).startswith(f"error: {flag} must ")
        if name in INT_LIMITS:
            assert f"{INT_LIMITS[name][1]:,}" in str(e)  # the error says the range
        return
    assert in_range(name, value), (name, value)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # survives config.json


INTEGERS = st.one_of(st.integers(), st.integers(-(2**80), 2**80))
TYPED = st.one_of(st.tuples(st.sampled_from(INT_OPTIONS), INTEGERS),
                  st.tuples(st.sampled_from(FLOAT_OPTIONS), st.one_of(st.floats(), INTEGERS)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=TYPED)
def test_any_typed_value_is_one_line_and_exit_2(tmp_path, case):
    """Through the CLI's parser: a value in range gets past the flags (and stops at the missing data file)."""
    name, value = case
    flag = "--" + name.replace("_", "-")
    code, stderr = cli_in_process("train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "missing.csv"),
                                  flag, repr(value))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    if in_range(name, value if name in INT_LIMITS else float(value)):
        assert "does not exist" in lines[0]
    else:
        assert flag in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, words", [
    (["--units", "1000000000000"], ["--units", "8,192"]),
    (["--units", "10**12"], ["--units", "valid integer"]),
    (["--seq-len", "1000000000000000000"], ["--seq-len", "16,384"]),
    (["--batch-size", "1000000000"], ["--batch-size", "65,536"]),
    (["--seed", "-1"], ["--seed", "4,294,967,295"]),
    (["--seed", str(2**70)], ["--seed"]),
    (["--lr", "inf"], ["--lr", "(0, 1]"]),
    (["--lr", "nan"], ["--lr"]),
    (["--lr", "2"], ["--lr", "(0, 1]"]),
    (["--dropout", "1"], ["--dropout", "[0, 1)"]),
    (["--dropout", "-0.1"], ["--dropout"]),
    (["--val-fraction", "nan"], ["--val-fraction"]),
    (["--epochs", "1000000000000"], ["--epochs", "100,000"]),
    (["--layers", "0"], ["--layers"]),
    (["--embedding-dim", "-1"], ["--embedding-dim"]),
])
def test_out_of_range_values_through_a_real_process(args, words, tmp_path):
    assert_usage_error(run_cli("train", "--out", tmp_path / "run", *args, cwd=tmp_path), *words)
    assert not (tmp_path / "run").exists()


def test_an_unreachable_tfds_source_fails_within_seconds(tmp_path, monkeypatch):
    """Offline, TFDS would retry its download for minutes; the toolkit says so at once."""
    pytest.importorskip("tensorflow_datasets")
    import socket
    import time

    from tensorflow_datasets.core import constants

    from toolkit.data import load_corpus

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path))  # nothing prepared there (TFDS read its env at import)
    monkeypatch.setattr(socket, "create_connection", offline)
    started = time.perf_counter()
    with pytest.raises(UsageError, match="cannot download tfds:ag_news_subset: no network"):
        load_corpus("tfds:ag_news_subset")
    assert time.perf_counter() - started < 10
    assert not any(tmp_path.rglob("*.tfrecord*"))
