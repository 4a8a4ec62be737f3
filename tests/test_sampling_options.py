"""Every sampling option, any value a user can type: a valid config or one line naming the flag, exit status 2
(property-based: hypothesis draws the values, huge and non-finite ones too), and paths that cannot be written."""

import errno
import math
import os
import re
import shutil

import pytest
from helpers import as_cli, assert_usage_error, cli_in_process, run_cli, step_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.files import UsageError
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import SampleConfig, parse_temperatures, sampling_config
from toolkit.sampling.draw import MAX_ROWS, MAX_STEPS
from toolkit.sampling.processors import InvalidParameter, Temperature

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
    (lambda t: (t / "file").write_text("") or t / "file", ["--out", "is a file"]),
    (lambda t: (t / "file").write_text("") or t / "file" / "below", ["--out", "is a file"]),
    (lambda t: os.symlink(t / "nowhere", t / "link") or t / "link", ["--out", "broken symbolic link"]),
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


def test_a_full_disk_is_reported_in_the_systems_words_and_leaves_nothing_half_written(model, tmp_path, monkeypatch):
    import toolkit.sampling.writer as writer

    class Full:
        def write_table(self, table):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(writer, "_open", lambda path, fmt, schema: Full())
    with pytest.raises(UsageError) as error:
        sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=5), device="cpu")
    assert f"cannot write {tmp_path / 's' / 'samples.csv'}: No space left on device; " in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the directory it was to make


@pytest.mark.parametrize("changes, parameter, value, accepted", [
    ({"temperatures": ()}, "temperatures", (), "1 to 1000 values"),
    ({"temperatures": (1.0,) * 1001}, "temperatures", (1.0,) * 1001, "1 to 1000 values"),
    ({"temperatures": (1.0, 0.005)}, "temperatures", 0.005, "at least 0.01"),
    ({"n": 0}, "n", 0, f"integer from 1 to {MAX_ROWS // 3:,}"),
    ({"max_len": 2**24}, "max_len", 2**24, f"from 1 to {2**24 - 1:,}"),
    ({"seed": -1}, "seed", -1, "0 to 2^64 - 1"), ({"prompts": ()}, "prompts", (), "one or more strings"),
    ({"prompts": ("a", 3)}, "prompts", ("a", 3), "one or more strings"),
    ({"prompts": ("", "abc"), "max_len": 3}, "prompts", "abc", "shorter than max_len (3)"),
    ({"processors": (Temperature(),) * 2}, "processors", (Temperature(),) * 2, "Temperature() exactly once")])
def test_a_config_refusal_names_the_setting_the_range_and_the_value(changes, parameter, value, accepted):
    """The CLI prints `error: FLAG REQUIREMENT, not VALUE` from these fields."""
    with pytest.raises(InvalidParameter) as error:
        SampleConfig(**changes)
    assert error.value.parameter == parameter and error.value.value == value
    assert accepted in error.value.requirement and str(error.value).endswith(f"{accepted}, not {value!r}")


@pytest.mark.parametrize("field, inside, outside", [
    ("temperatures", (1.0,) * 1000, (1.0,) * 1001), ("temperatures", (0.01,), (math.nextafter(0.01, 0),)),
    ("n", 1, 0), ("max_len", 1, 0), ("max_len", MAX_STEPS, MAX_STEPS + 1), ("seed", 0, -1), ("seed", 2**64 - 1, 2**64)])
def test_a_config_holds_each_range_to_its_last_value(field, inside, outside):
    SampleConfig(**{field: inside})
    with pytest.raises(InvalidParameter, match=field):
        SampleConfig(**{field: outside})


def test_the_largest_n_is_the_rows_a_run_can_number_over_its_temperatures():
    """Rows are numbered in 40 bits: n times the temperatures fits, and the refusal states that largest n."""
    SampleConfig((0.3, 1.0, 1.8), n=MAX_ROWS // 3)
    with pytest.raises(InvalidParameter) as error:
        SampleConfig((0.3, 1.0, 1.8), n=MAX_ROWS // 3 + 1)
    assert error.value.requirement.endswith(f"from 1 to {MAX_ROWS // 3:,}")


@pytest.mark.parametrize("changes", [{"temperatures": (True,)}, {"temperatures": ("1.0",)}, {"n": True},
                                     {"n": 2.0}, {"max_len": True}, {"seed": True}, {"seed": 1.0},
                                     {"prompts": (b"ab",)}])
def test_a_config_takes_numbers_and_strings_not_look_alikes(changes):
    with pytest.raises(InvalidParameter, match=next(iter(changes))):
        SampleConfig(**changes)


def test_both_ways_to_make_a_config_share_their_defaults():
    assert sampling_config((0.3, 1.0, 1.8)) == SampleConfig()


def test_a_range_may_hold_one_temperature_or_exactly_the_most_allowed():
    assert parse_temperatures("0.5:0.5:0.1") == (0.5,)
    assert sampling_config(parse_temperatures("1:1000:1")).temperatures == tuple(map(float, range(1, 1001)))


@pytest.mark.parametrize("text", ["a,b", "", " , ", "1;2"])
def test_a_temps_error_suggests_values_that_work(text):
    with pytest.raises(UsageError) as error:
        parse_temperatures(text)
    examples = re.findall(r"--temps (\S+)", as_cli(error.value).partition("e.g. ")[2])
    assert examples and all(parse_temperatures(e) for e in examples)


EXTREME = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
    [0.0, 1e-320, 5e-324, 1e-300, 1e300, 1.7976931348623157e308, -1e308, 1.0, 0.1]))


@settings(max_examples=400, deadline=None)
@given(start=EXTREME, stop=EXTREME, step=EXTREME, before=st.lists(st.floats(0.01, 5), max_size=3))
def test_any_range_is_a_config_or_one_line(start, stop, step, before):
    """Ranges whose count overflows, underflows or runs past the limit (the class that reached a traceback):
    every one is a config or one line naming the flag."""
    text = ",".join([*map(repr, before), f"{start!r}:{stop!r}:{step!r}"])
    try:
        config = sampling_config(parse_temperatures(text))
    except UsageError as e:
        assert "\n" not in str(e) and as_cli(e).startswith("error: --temps"), str(e)
        return
    assert 1 <= len(config.temperatures) <= 1000


def _tampered(path, tmp_path, key, value):
    import onnx

    proto = onnx.load(path)
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
    out = tmp_path / f"tampered-{key}.onnx"
    onnx.save(proto, out)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["cell", "layers", "units", "vocab", "specials", "config", "reference"]),
       value=st.one_of(st.sampled_from(["gru", "lstm", "0", "2", "64", "-1", "{}", "[]", "", "nan",
                                        '{"specials": {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}, '
                                        '"chars": ["a", "b"]}']), st.text(max_size=20)))
def test_tampered_metadata_is_one_line_never_a_traceback(model, tmp_path, key, value):
    """Metadata that disagrees with the graph is refused when the model loads, in one line, before any sampling."""
    path = _tampered(model, tmp_path, key, value)
    try:
        sample_batch(path, tmp_path / "s", SampleConfig((1.0,), n=2, max_len=8), device="cpu")
    except UsageError as e:
        assert "\n" not in str(e)
        assert not (tmp_path / "s").exists()
        return
    assert (tmp_path / "s" / "samples.csv").is_file()  # what the graph and the rest of the metadata still agree on
    shutil.rmtree(tmp_path / "s")
