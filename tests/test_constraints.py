"""Title constraints and the logit bias in sampling (issue 22): `--regex`, `--ban`, `--ban-file`, `--stop`,
`--min-len` and `--logit-bias` from the command line and the library's SampleConfig to the graph. Every finished
sample obeys the constraint (Python's re and substring search as the judges), the engine equals the one-row numpy
reference with them on, whatever the batch size, run.json records them, and bad input is one line, exit status 2,
nothing written. Tiny random step models only: no TensorFlow."""

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from helpers import assert_usage_error, cli_in_process, decode, run_cli, step_model
from helpers import processor_graph as run_graph

import toolkit.sampling.batch as batch_module
from toolkit.files import UsageError
from toolkit.sampledir import Samples, is_sample_dir, read_info
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import SampleConfig, parse_logit_bias, read_ban_file, sampling_config
from toolkit.sampling.numpy_loop import generate
from toolkit.sampling.processors import (
    CHAIN,
    Ban,
    Constraint,
    InvalidParameter,
    LogitBias,
    RepetitionPenalty,
    Rows,
    Temperature,
    TopK,
    chain,
)
from toolkit.sampling.runtime import OnnxStep
from toolkit.vocab import EOS, Vocab

PATTERN = r"[a-e][a-j ]*[f-j]"  # over step_model's characters "abcdefghij "
AP = r"[A-Z][^()]*\(AP\)"  # README's example


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return step_model(tmp_path_factory.mktemp("m") / "m.onnx", scale=0.3, bias={EOS: 0.5})


@pytest.fixture(scope="module")
def step(model):
    return OnnxStep(model, "cpu")


def read(directory):
    return pd.read_csv(directory / "samples.csv", keep_default_na=False)


def cli(*args) -> subprocess.CompletedProcess:
    """`cli.py ARGS` in this process (fast), as a CompletedProcess for helpers.assert_usage_error."""
    code, stderr = cli_in_process(*map(str, args))
    return subprocess.CompletedProcess(args, code, "", stderr)


def first_stop_end(text: str, stops) -> int | None:
    """Where the first occurrence of any stop string ends in `text` (None: none occurs)."""
    ends = [m.start() + len(s) for s in stops for m in re.finditer(f"(?={re.escape(s)})", text)]
    return min(ends, default=None)


# --- every finished sample obeys the constraint ------------------------------------------------------------------

def test_every_finished_sample_obeys_the_regex_the_bans_and_the_minimum_length(model, tmp_path):
    banned = ("b c", "dd", "ej")
    config = sampling_config((0.0, 0.7, 1.5), n=60, prompts=("", "ab", "cd"), max_len=30, seed=4, regex=PATTERN,
                             ban=banned, min_length=6)  # "cd": the prompt's characters count towards "dd"
    sample_batch(model, tmp_path, config, device="cpu")
    rows = read(tmp_path)
    done = rows[rows["finished"]]
    assert len(done) > 0.5 * len(rows) and done["text"].nunique() > 40
    for text, prompt in zip(done["text"], done["prompt"], strict=True):
        assert re.fullmatch(PATTERN, text) and not any(b in text for b in banned) and len(text) >= 6, text
        assert text.startswith(prompt)
    # rows that reach --max-len without an accepting state stay unfinished, as without a constraint
    assert (rows.loc[~rows["finished"], "length"] == 30).all()
    assert not any(b in text for text in rows["text"] for b in banned)


def test_the_readme_example_gives_titles_that_end_in_ap(tmp_path):
    model = step_model(tmp_path / "ap.onnx", chars=tuple("abAPZ ()"), scale=0.3)
    result = run_cli("sample-batch", "--model", model, "--n", "40", "--temps", "0.5,1.2", "--max-len", "40",
                     "--regex", AP, "--out", tmp_path / "s", "--no-report", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = read(tmp_path / "s")
    assert 0.5 < rows["finished"].mean() < 1
    assert all(re.fullmatch(AP, t) for t in rows.loc[rows["finished"], "text"])
    result = run_cli("sample-batch", "--model", model, "--n", "40", "--temps", "0.5,1.2", "--max-len", "40",
                     "--regex", AP, "--must-finish", "--out", tmp_path / "s", "--no-report", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = read(tmp_path / "s")
    assert rows["finished"].all() and all(re.fullmatch(AP, t) for t in rows["text"])
    processor = json.loads((tmp_path / "s" / "run.json").read_text())["sampling"]["processors"][0]
    assert processor["must_finish"] is True and processor["regex"] == AP


def test_a_stop_string_ends_the_sample_right_after_it_and_is_kept(model, tmp_path):
    stops = ("j", "b c")
    config = sampling_config((0.0, 1.0, 1.8), n=50, prompts=("", "a"), max_len=30, seed=6, stop=stops)
    sample_batch(model, tmp_path, config, device="cpu")
    rows = read(tmp_path)
    ended = 0
    for text, finished in zip(rows["text"], rows["finished"], strict=True):
        end = first_stop_end(text, stops)
        if end is not None:  # the sample goes no further than the first stop string, which it keeps
            assert finished and end == len(text), text
            ended += 1
    assert ended > 0.3 * len(rows)


def test_ban_file_strings_are_banned_with_ban_and_bias_characters_may_be_equals_or_comma(tmp_path):
    model = step_model(tmp_path / "m.onnx", chars=tuple("abc=, "), scale=0.3, bias={EOS: 0.5})
    (tmp_path / "banned.txt").write_bytes("\ufeffab\nc,c\r\n\n".encode())  # a byte-order mark, CRLF, empty line
    out = tmp_path / "s"
    result = run_cli("sample-batch", "--model", model, "--n", "60", "--temps", "0.7,1.4", "--max-len", "25",
                     "--ban", "==", "--ban-file", tmp_path / "banned.txt", "--stop", "c=", "--min-len", "3",
                     "--logit-bias", "==2", "--logit-bias", ",=-3.5", "--logit-bias", "a=1", "--out", out,
                     "--no-report", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    processors = json.loads((out / "run.json").read_text())["sampling"]["processors"]
    assert processors == [{"name": "Constraint", "regex": None, "ban": ["==", "ab", "c,c"], "min_length": 3,
                           "stop": ["c="], "must_finish": False},
                          {"name": "LogitBias", "bias": [["=", 2.0], [",", -3.5], ["a", 1.0]]},
                          {"name": "Temperature"}]
    rows = read(out)
    assert rows["text"].str.contains("=").any()
    for text, finished in zip(rows["text"], rows["finished"], strict=True):
        assert not any(b in text for b in ("==", "ab", "c,c")), text
        assert not finished or len(text) >= 3
        assert "c=" not in text[:-1], text


# --- the engine is the numpy reference, whatever the batch size --------------------------------------------------

def test_each_row_equals_the_one_row_reference_whatever_the_batch_size(model, step, tmp_path, monkeypatch):
    config = sampling_config((0.0, 0.8, 1.6), n=8, prompts=("", "ab", "c"), max_len=30, seed=11, regex=PATTERN,
                             ban=("b c", "dd"), min_length=5, stop=("hj",), logit_bias={"e": 1.5, "a": -2.0},
                             top_k=6, presence_penalty=0.3)
    sample_batch(model, tmp_path / "one", config, device="cpu")
    monkeypatch.setattr(batch_module, "cpu_cores", lambda: 2)
    sample_batch(model, tmp_path / "chunks", config, device="cpu", batch_size=5)
    one, chunks = read(tmp_path / "one"), read(tmp_path / "chunks")
    assert one.drop(columns="logprob").equals(chunks.drop(columns="logprob"))
    vocab = step.spec.vocab
    for sid, row in one.iterrows():  # the library's generate, given the SampleConfig as it stands (not bound)
        alone = generate(step, config, np.array([sid]), config.prompt_ids(vocab))
        assert row["text"] == decode(vocab, alone.ids[0]) and row["finished"] == bool(alone.finished[0]), sid
        assert row["logprob"] == pytest.approx(float(alone.logprob[0]), abs=1e-3)
    assert one["finished"].any() and one["length"].nunique() > 5


def test_generate_builds_the_constraint_over_the_vocabulary_it_is_given(step):
    class Bare:  # a Step without a spec: the vocabulary must be given
        def __init__(self, inner):
            self.inner = inner

        def initial_state(self, rows, classes=None):
            return self.inner.initial_state(rows, classes)

        def __call__(self, tokens, state):
            return self.inner(tokens, state)

        def select(self, state, rows):
            return self.inner.select(state, rows)

    config = sampling_config((1.0,), n=20, max_len=20, seed=3, regex=PATTERN)
    rows = np.arange(20)
    with pytest.raises(ValueError, match="not built over the model's vocabulary"):
        generate(Bare(step), config, rows, [[]])
    given = generate(Bare(step), config, rows, [[]], vocab=step.spec.vocab)
    assert np.array_equal(given.ids, generate(step, config, rows, [[]]).ids)


# --- run.json ---------------------------------------------------------------------------------------------------

def test_run_json_records_the_constraint_and_the_bias_and_the_readers_accept_it(model, tmp_path):
    config = sampling_config((1.0,), n=12, max_len=30, seed=2, regex=PATTERN, ban=["dd"], min_length=4,
                             stop=["hj"], logit_bias=[("g", 3)])
    sample_batch(model, tmp_path, config, device="cpu")
    info = read_info(tmp_path)
    assert info["sampling"] == config.to_dict() and "chars" not in json.dumps(info["sampling"])
    assert info["sampling"]["processors"][:2] == [
        {"name": "Constraint", "regex": PATTERN, "ban": ["dd"], "min_length": 4, "stop": ["hj"], "must_finish": False},
        {"name": "LogitBias", "bias": [["g", 3.0]]}]
    assert is_sample_dir(tmp_path) and sum(b.num_rows for b in Samples(tmp_path).chunks()) == 12
    sample_batch(model, tmp_path, config, device="cpu")  # an earlier constrained directory is replaced whole


def test_the_constraint_sits_after_the_reserved_ids_and_before_the_penalties_and_the_temperature():
    config = sampling_config((1.0,), top_k=3, presence_penalty=0.5, logit_bias={"a": 1}, regex="a+", ban=["b"])
    assert [type(p) for p in config.processors] == [Constraint, LogitBias, RepetitionPenalty, Temperature, TopK]
    assert [type(p) for p in chain(config.processors)][:3] == [Ban, Constraint, LogitBias]
    assert CHAIN.index(Constraint) + 1 == CHAIN.index(LogitBias) < CHAIN.index(Temperature)
    assert sampling_config((1.0,), regex=None, ban=[], stop=(), min_length=0, logit_bias={}) == SampleConfig((1.0,))


# --- the logit bias -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 17])
def test_the_logit_bias_in_the_graph_is_the_numpy_reference_bit_for_bit(opset):
    vocab = Vocab(tuple("abc=, "))
    bias = LogitBias((("a", 2.5), ("=", -100.0), (",", 100.0), ("c", -0.1))).bind(vocab)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (2000, vocab.size)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[:20] = np.float32(-0.0)
    got = run_graph(lambda g: bias.onnx(g, "x", Rows("t")), {"x": x}, vocab.size, opset)
    expected = bias.numpy(x, Rows(None))
    assert got.dtype == expected.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    shift = np.zeros(vocab.size, np.float32)
    shift[[vocab.index[c] for c in "a=,c"]] = [2.5, -100, 100, -0.1]
    assert np.array_equal(expected, x + shift)  # the amount added to its character's logit only


def test_a_bias_of_100_draws_its_character_wherever_it_is_allowed(model, step, tmp_path):
    vocab = step.spec.vocab
    a = vocab.index["a"]
    sample_batch(model, tmp_path / "free", sampling_config((0.0, 1.0, 1.8), n=10, prompts=("", "b"), max_len=20,
                                                           logit_bias={"a": 100}), device="cpu")
    free = read(tmp_path / "free")
    assert [t for t in free["text"]] == [p + "a" * (20 - len(p)) for p in free["prompt"]]
    assert not free["finished"].any()
    config = sampling_config((0.0, 1.0, 1.8), n=30, prompts=("", "b"), max_len=25, seed=2, ban=("aaa",),
                             logit_bias={"a": 100})
    sample_batch(model, tmp_path / "banned", config, device="cpu")
    automaton = Constraint.build(vocab, ban=("aaa",)).automaton
    checked = others = 0
    for text, prompt, finished in read(tmp_path / "banned")[["text", "prompt", "finished"]].itertuples(index=False):
        state = automaton.advance(0, [vocab.index[c] for c in prompt])
        for ch in text[len(prompt):]:
            if automaton.allowed[state, a]:
                assert ch == "a", text
                checked += 1
            else:
                assert ch != "a", text
                others += 1
            state = int(automaton.next[state, vocab.index[ch]])
        assert not finished or not automaton.allowed[state, a], text  # <eos> only where "a" was not allowed
    assert checked > 400 and others > 150, (checked, others)


# --- bad input: one line, exit status 2, nothing written ---------------------------------------------------------

BAD = [
    (["--regex", "(a"], ["--regex", "not a regular expression"], True),
    (["--regex", r"\bab"], ["--regex", "word boundary"], True),
    (["--regex", "(?<=a)b"], ["--regex", "lookbehind"], True),
    (["--regex", "x+"], ["--regex 'x+'", "no title"], False),
    (["--regex", "a{50}", "--max-len", "20"], ["--regex", "50 characters", "--max-len (20)"], False),
    (["--regex", "[a-e]+f", "--ban", "f"], ["--regex and --ban together", "no title"], False),
    (["--min-len", "30", "--max-len", "20"], ["--min-len 30", "--max-len"], False),
    (["--min-len", "-1"], ["--min-len", "integer"], True),
    (["--prompt", "j", "--regex", "a.*"], ["--prompt 'j'", "cannot begin", "character 1"], False),
    (["--prompt", "add", "--ban", "dd"], ["--prompt 'add'", "character 3"], False),
    (["--prompt", "ab", "--regex", "b.{0,3}|a.{30}", "--max-len", "20"], ["--prompt 'ab'", "needs 29 more",
                                                                          "--max-len (20)"], False),
    (["--ban", ""], ["--ban", "non-empty"], True),
    (["--stop", ""], ["--stop", "non-empty"], True),
    (["--ban-file", "{tmp}/missing.txt"], ["--ban-file", "does not exist"], True),
    (["--ban-file", "{tmp}"], ["--ban-file", "cannot read"], True),
    (["--ban-file", "{tmp}/latin1.txt"], ["--ban-file", "not UTF-8"], True),
    (["--ban-file", "{tmp}/empty.txt"], ["--ban-file", "no strings"], True),
    (["--logit-bias", "a"], ["--logit-bias 'a'", "CHAR=X"], True),
    (["--logit-bias", "=5"], ["--logit-bias", "CHAR=X"], True),
    (["--logit-bias", "a=much"], ["--logit-bias", "CHAR=X"], True),
    (["--logit-bias", "ab=1"], ["--logit-bias", "single characters"], True),
    (["--logit-bias", "a=100.5"], ["--logit-bias", "[-100, 100]", "100.5"], True),
    (["--logit-bias", "a=nan"], ["--logit-bias", "[-100, 100]"], True),
    (["--logit-bias", "a=1", "--logit-bias", "a=2"], ["--logit-bias", "once"], True),
    (["--logit-bias", "Z=1"], ["--logit-bias", "'Z'", "vocabulary", "abcdefghij"], False),
]


@pytest.mark.parametrize("args, words, early", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_constraints_are_one_line_exit_2_and_write_nothing(model, tmp_path, args, words, early):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("\n\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "s"
    assert_usage_error(cli("sample-batch", "--model", model, "--out", out, "--n", "3", "--device", "cpu", *args),
                       *words)
    assert not out.exists()
    if early:  # refused before the model is even looked for
        missing = tmp_path / "missing.onnx"
        assert_usage_error(cli("sample-batch", "--model", missing, "--out", out, *args), words[0])


def test_a_bad_ban_file_is_refused_as_a_user_runs_it(model, tmp_path):
    assert_usage_error(run_cli("sample-batch", "--model", model, "--out", tmp_path / "s", "--ban-file",
                               tmp_path / "nope.txt"), "--ban-file", "nope.txt", "does not exist")
    assert not (tmp_path / "s").exists()


def test_the_library_refuses_what_the_command_line_does_in_its_own_terms(model, tmp_path):
    with pytest.raises(UsageError, match="^no title .* regex 'x\\+'"):
        sample_batch(model, tmp_path / "s", sampling_config((1.0,), regex="x+"), device="cpu")
    with pytest.raises(InvalidParameter, match="^logit_bias for 'a' must lie in"):
        sampling_config((1.0,), logit_bias={"a": 101})
    with pytest.raises(InvalidParameter, match="before Temperature"):
        SampleConfig(processors=(Temperature(), Constraint(regex="a+")))
    with pytest.raises(InvalidParameter, match="one Constraint"):
        SampleConfig(processors=(Constraint(regex="a+"), Constraint(ban=("b",)), Temperature()))
    assert not (tmp_path / "s").exists()
    assert parse_logit_bias(["==2", ",=-3.5", "a,=1", "a=1e1"]) == (("=", 2.0), (",", -3.5), ("a,", 1.0),
                                                                    ("a", 10.0))
    (tmp_path / "ban.txt").write_text(" war \nx\r\n\n")
    assert read_ban_file(tmp_path / "ban.txt") == (" war ", "x")  # spaces are part of a string


def test_pipeline_checks_the_constraint_against_the_datas_characters_before_training(small_csv, tmp_path):
    for args, words in ((["--regex", "[☃Ω]+"], ["--regex", "no title"]),
                        (["--min-len", "30", "--max-len", "20"], ["--min-len 30", "--max-len (20)"]),
                        (["--logit-bias", "☃=5"], ["--logit-bias", "'☃'", "vocabulary"])):
        result = run_cli("pipeline", "--data", small_csv, "--name", "x", "--epochs", "1", *args, cwd=tmp_path)
        assert_usage_error(result, *words)
        assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


def test_the_report_judges_the_promise_with_python_re_and_substring_search(model, tmp_path):
    """regex_match_rate (finished samples that fullmatch --regex) and banned_rate (samples holding a --ban string),
    judged by Python's re and `in`, not by the automaton; the reference row says how often real titles keep it;
    a run without a constraint leaves both empty."""
    from eval.report import write_report
    from toolkit.config import TrainConfig
    from toolkit.data import load_corpus

    rng = np.random.default_rng(0)
    titles = tmp_path / "titles.txt"
    titles.write_text("".join("".join(rng.choice(list("abcdefghij "), rng.integers(3, 12))) + "\n"
                              for _ in range(300)))
    out = tmp_path / "s"
    sample_batch(model, out, sampling_config((0.5, 1.0), n=80, max_len=20, seed=1, regex=PATTERN, ban=("ab", "ji")),
                 device="cpu")
    write_report(out, train_data=str(titles))
    metrics = pd.read_csv(out / "metrics.csv").set_index("group")
    assert metrics.loc[["T=0.5", "T=1"], "regex_match_rate"].tolist() == [1.0, 1.0]
    assert metrics.loc[["T=0.5", "T=1"], "banned_rate"].tolist() == [0.0, 0.0]
    val = load_corpus(str(titles), "title", TrainConfig().val_fraction, None).val_titles
    assert metrics.loc["reference", "regex_match_rate"] == pytest.approx(
        np.mean([re.fullmatch(PATTERN, t) is not None for t in val]))
    assert metrics.loc["reference", "banned_rate"] == pytest.approx(np.mean([("ab" in t) or ("ji" in t) for t in val]))
    assert 0 < metrics.loc["reference", "banned_rate"] < 1
    plain = tmp_path / "plain"
    sample_batch(model, plain, sampling_config((1.0,), n=20, max_len=20, seed=1), device="cpu")
    write_report(plain, train_data=str(titles))
    assert pd.read_csv(plain / "metrics.csv")[["regex_match_rate", "banned_rate"]].isna().all().all()
