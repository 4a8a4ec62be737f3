"""Every sampling option, any value a user can type: a valid config or one line naming the flag, exit status 2
(property-based: hypothesis draws the values, huge and non-finite ones too), and paths that cannot be written."""

import errno
import math
import os

import pytest
from helpers import assert_usage_error, cli_in_process, run_cli, step_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.files import UsageError
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import SampleConfig, parse_temperatures, sampling_config

INTEGERS = st.one_of(st.integers(), st.integers(-(2**80), 2**80))
NUMBERS = st.one_of(INTEGERS, st.floats())
OPTIONS = {"n": INTEGERS, "max_len": INTEGERS, "seed": INTEGERS, "top_k": INTEGERS, "top_p": NUMBERS,
           "min_p": NUMBERS, "presence_penalty": NUMBERS, "frequency_penalty": NUMBERS}


def valid(name: str, value) -> bool:
    """The ranges the errors and --help promise, written out again here."""
    if name in ("n", "max_len"):
        return isinstance(value, int) and 1 <= value <= (2**40 // 3 if name == "n" else 2**24 - 1)
    if name == "seed":
        return isinstance(value, int) and 0 <= value < 2**64
    if name == "top_k":
        return isinstance(value, int) and 0 <= value < 2**31
    if not math.isfinite(value):
        return False
    if name == "top_p":
        return 0 < value <= 1
    if name == "min_p":
        return 0 <= value <= 1
    return -2 <= value <= 2


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(OPTIONS)), data=st.data())
def test_a_sampling_config_accepts_exactly_its_ranges(name, data):
    value = data.draw(OPTIONS[name])
    positional = {k: value for k in ("n", "max_len", "seed") if k == name}
    keyword = {k: value for k in OPTIONS if k == name and k not in positional}
    try:
        config = sampling_config((0.3, 1.0, 1.8), **positional, **keyword)
    except UsageError as e:
        assert not valid(name, value), (name, value, e)
        assert "\n" not in str(e)
        return
    assert valid(name, value), (name, value)
    assert isinstance(config, SampleConfig)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=30), st.lists(NUMBERS, max_size=5).map(lambda xs: ",".join(map(str, xs)))))
def test_any_temperature_text_is_a_config_or_one_line(text):
    try:
        config = sampling_config(parse_temperatures(text))
    except UsageError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert all(t == 0 or 0.01 <= t < math.inf for t in config.temperatures)


FLAGS = {"n": "--n", "max_len": "--max-len", "seed": "--seed", "top_k": "--top-k", "top_p": "--top-p",
         "min_p": "--min-p", "presence_penalty": "--presence-penalty", "frequency_penalty": "--frequency-penalty"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(OPTIONS)), data=st.data())
def test_any_typed_value_is_one_line_and_exit_2(tmp_path, name, data):
    """Through the CLI's parser: a value in range gets past the flags (and stops at the missing model)."""
    value = data.draw(OPTIONS[name])
    code, stderr = cli_in_process("sample-batch", "--model", str(tmp_path / "missing.onnx"), "--out",
                                  str(tmp_path / "s"), FLAGS[name], repr(value))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert ("does not exist" if valid(name, value) else FLAGS[name]) in lines[0], lines[0]
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return step_model(tmp_path_factory.mktemp("m") / "m.onnx", scale=0.3)


@pytest.mark.parametrize("make_out, words", [
    (lambda t: (t / "file").write_text("") or t / "file", ["cannot write"]),
    (lambda t: (t / "file").write_text("") or t / "file" / "below", ["cannot write"]),
    (lambda t: os.symlink(t / "nowhere", t / "link") or t / "link", ["cannot write"]),
])
def test_outputs_that_cannot_be_directories_are_refused(model, tmp_path, make_out, words):
    out = make_out(tmp_path)
    assert_usage_error(run_cli("sample-batch", "--model", model, "--n", "3", "--out", out, "--no-report"), *words)


def test_a_directory_given_as_the_model_is_named_as_such(tmp_path):
    assert_usage_error(run_cli("sample-batch", "--model", tmp_path, "--out", tmp_path / "s"), "is not a file")
    assert not (tmp_path / "s").exists()


def test_a_read_only_output_is_refused(model, tmp_path, monkeypatch):
    """As a user (not root, whom permissions do not stop) meets it: creating the directory is not permitted."""
    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)
    with pytest.raises(UsageError, match="cannot write .*Permission denied"):
        sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=5), device="cpu")


def test_a_full_disk_leaves_no_half_written_samples(model, tmp_path, monkeypatch):
    import toolkit.sampling.writer as writer

    class Full:
        def write_table(self, table):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(writer, "_open", lambda path, fmt, schema: Full())
    with pytest.raises(UsageError, match="No space left on device"):
        sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=5), device="cpu")
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if not p.name.startswith(".")) == []
