"""What a user relies on, each against an independent statement of it (docs/testing.md, "Promises and the tests that
keep them"): the order of the sampling controls and what each counts, against the public Hugging Face / vLLM
rules; each row's own random numbers; every column of samples.csv and of the report's groups on its own row; both
sides of the report's distances normalised alike and sized as documented; a new run's cosine schedule.

Each test was checked by planting the bug it names (a one-line change in the library) and watching it fail."""

import math
import random

import numpy as np
import pandas as pd
import pytest
from helpers import decode, step_model
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, wasserstein_distance

import eval.metrics
from eval.metrics import BOOTSTRAP, DISTANCES, words
from eval.novelty import TrainingTitles
from eval.scoring import metrics_table
from eval.stream import Streams
from toolkit.sampling import processors
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import sampling_config
from toolkit.sampling.draw import MAX_ROWS, MAX_STEPS, counters, squares_key, uniforms
from toolkit.sampling.engine import Engine
from toolkit.sampling.numpy_loop import generate
from toolkit.sampling.runtime import OnnxStep
from toolkit.vocab import BOS, EOS, PAD, UNK

# --- the independent reference: the public rules of Hugging Face `generate` and vLLM, in float64 ---------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hf_vllm_reference(logits, temperature, counts, presence=0.0, frequency=0.0, top_k=0, top_p=1.0, min_p=0.0):
    """[rows, vocab] logits after the controls, written from the public rules, not from toolkit/sampling:

    - vLLM's `apply_penalties` (OpenAI's definition): logits -= frequency * count + presence * (count > 0), where
      count is how often the row has drawn the id (its output tokens, never its prompt);
    - Hugging Face's warpers in `generate`'s order: `TemperatureLogitsWarper` (divide), `TopKLogitsWarper` (remove
      what is below the k-th largest), `TopPLogitsWarper` (sort ascending, remove ids whose cumulative probability
      is <= 1 - top_p, keep the likeliest), `MinPLogitsWarper` (remove ids whose probability is below min_p times
      the largest), each on the output of the one before.

    Also returns a margin per row: how close the row came to a top-p or min-p boundary (rows within float32's
    rounding of one are not a test of the rule)."""
    x = np.asarray(logits, np.float64).copy()
    x[:, [PAD, BOS, UNK]] = -np.inf  # no character: never drawn
    x = x - frequency * counts - presence * (counts > 0)
    x = x / np.asarray(temperature, np.float64)[:, None]
    margin = np.full(x.shape[0], np.inf)
    if top_k:
        kth = np.sort(x, axis=1)[:, -min(top_k, x.shape[1]), None]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1:
        order = np.argsort(x, axis=1, kind="stable")
        ascending = np.take_along_axis(x, order, axis=1)
        cumulative = np.cumsum(_softmax(ascending), axis=1)
        remove = cumulative <= 1 - top_p
        remove[:, -1] = False
        margin = np.minimum(margin, np.abs(cumulative - (1 - top_p)).min(axis=1))
        x = np.where(np.take_along_axis(remove, np.argsort(order, axis=1), axis=1), -np.inf, x)
    if min_p:
        probs = _softmax(x)
        floor = min_p * probs.max(axis=1, keepdims=True)
        margin = np.minimum(margin, np.abs(np.where(probs > 0, probs - floor, np.inf)).min(axis=1))
        x = np.where(probs < floor, -np.inf, x)
    return x, margin


KNOBS = {"presence_penalty": 1.5, "frequency_penalty": -0.7, "top_k": 5, "top_p": 0.6, "min_p": 0.15}
SPELLED = {"presence_penalty": "presence", "frequency_penalty": "frequency"}  # the reference's names


@pytest.mark.parametrize("on", [mask for mask in range(32)], ids=lambda m: "+".join(
    k for i, k in enumerate(KNOBS) if m >> i & 1) or "temperature-only")
def test_the_chain_runs_each_control_in_the_documented_order_and_counts_what_it_says(on):
    """README, sample-batch: "Controls, applied in this order after the reserved ids are removed: the penalties
    (OpenAI's, over the characters the sample has drawn so far), the temperature, --top-k, --top-p and --min-p".
    Every subset of the controls, as the command line builds it, against the public rules in float64."""
    knobs = {k: v for i, (k, v) in enumerate(KNOBS.items()) if on >> i & 1}
    config = sampling_config((0.5, 1.0, 1.7), **knobs)
    rng = np.random.default_rng(on)
    rows, vocab = 3000, 15
    x = rng.normal(0, 2, (rows, vocab)).astype(np.float32)
    temperature = rng.choice(np.float32([0.5, 1.0, 1.7]), rows)
    counts = rng.integers(0, 4, (rows, vocab)).astype(np.float32) * (rng.random((rows, vocab)) < 0.4)
    got = processors.apply(config.processors, x, processors.Rows(temperature, {"counts": counts}))
    expected, margin = hf_vllm_reference(x, temperature, counts, **{SPELLED.get(k, k): v for k, v in knobs.items()})
    clear = margin > 1e-4  # a boundary within rounding decides nothing about the order
    assert clear.mean() > 0.95
    assert np.array_equal(np.isfinite(got[clear]), np.isfinite(expected[clear]))
    finite = np.isfinite(expected) & clear[:, None]
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_the_chain_is_the_documented_order_whatever_order_the_knobs_come_in():
    """run.json records the controls in the order they ran: the penalties, the temperature, top-k, top-p, min-p."""
    for order in (list(KNOBS), list(reversed(KNOBS))):
        config = sampling_config((1.0,), **{k: KNOBS[k] for k in order})
        assert [p["name"] for p in config.to_dict()["processors"]] == ["RepetitionPenalty", "Temperature", "TopK",
                                                                       "TopP", "MinP"]


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    """Rows that run long: many drawn characters to check."""
    return OnnxStep(step_model(tmp_path_factory.mktemp("m") / "lstm.onnx", scale=0.3, bias={EOS: -2.0}), "cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Rows of which about half end within 24 characters."""
    return step_model(tmp_path_factory.mktemp("m") / "model.onnx", scale=0.3, bias={EOS: -1.0})


def replay(step, config, row: int, ids: np.ndarray, finished: bool, knobs: dict) -> int:
    """Feed a sampled row back through the model one id at a time and check each drawn id against the reference
    distribution and the row's own uniform (inverse CDF); returns the number of drawn ids checked."""
    vocab = step.spec.vocab
    prompt = vocab.encode_known(config.prompts[int(config.row_prompts(np.array([row]))[0])], "prompt")
    temperature = config.row_temperatures(np.array([row]))
    sequence = [int(i) for i in ids if i != PAD] + ([EOS] if finished else [])
    state, token, counts, checked = step.initial_state(1), BOS, np.zeros((1, vocab.size)), 0
    key, counter = squares_key(config.seed), counters(np.array([row]))
    for t, target in enumerate(sequence):
        logits, state = step(np.array([token]), state)
        if t < len(prompt):  # forced, and not counted by the penalties
            assert target == prompt[t], (row, t)
        else:
            x, _ = hf_vllm_reference(logits, temperature, counts, **{SPELLED.get(k, k): v for k, v in knobs.items()})
            cdf = np.cumsum(_softmax(x)[0])
            u = float(uniforms(key, counter, t)[0])
            assert np.isfinite(x[0, target]), (row, t, target)  # never an id the rules remove
            low = cdf[target - 1] if target else 0.0
            assert low - 1e-5 <= u <= cdf[target] + 1e-5, (row, t, target, u, low, cdf[target])
            counts[0, target] += 1
            checked += 1
        token = target
    assert len(sequence) == config.max_len or finished
    return checked


@pytest.mark.parametrize("loop", ["engine", "numpy"])
def test_every_drawn_character_is_the_public_rules_draw_from_the_rows_own_uniform(lstm, loop):
    """The whole loop against the reference: the penalties count the characters the row itself drew (not its
    prompt, not another row's), the controls run in the documented order on the raw logits, and the draw is the
    inverse CDF of the row's own uniform for (seed, sample, step)."""
    knobs = {"presence_penalty": 1.2, "frequency_penalty": 0.6, "top_k": 6, "top_p": 0.9, "min_p": 0.05}
    config = sampling_config((0.7, 1.4), n=21, prompts=("ab ", "j", ""), max_len=30, seed=3, **knobs)
    rows = np.arange(config.rows)
    batch = Engine(lstm, config, sync_every=3).generate(rows) if loop == "engine" else \
        generate(lstm, config, rows, config.prompt_ids(lstm.spec.vocab))
    checked = sum(replay(lstm, config, int(r), batch.ids[r], bool(batch.finished[r]), knobs) for r in rows)
    assert checked > 10 * config.rows


# --- each row's randomness is its own -------------------------------------------------------------------------


def test_no_two_rows_share_any_stretch_of_random_numbers():
    """README: "every random number is a function of (seed, sample, step)". No row's uniforms repeat another row's
    (at any shift of steps), up to the last row and the last step a run can have."""
    key = squares_key(11)
    rows = np.concatenate([np.arange(40), [2**24, 2**39, MAX_ROWS - 2, MAX_ROWS - 1]])
    steps = np.concatenate([np.arange(300), np.arange(MAX_STEPS - 40, MAX_STEPS)])  # steps 0 .. max_len - 1
    u = np.stack([uniforms(key, counters(rows), int(s)) for s in steps], axis=1)  # [rows, steps]
    windows = np.lib.stride_tricks.sliding_window_view(u, 3, axis=1).reshape(-1, 3)
    assert len({w.tobytes() for w in windows}) == len(windows)  # 69 random bits: no stretch seen twice
    assert u.min() > 0 and u.max() < 1


def test_rows_alike_in_every_setting_still_draw_their_own_texts(lstm):
    """Rows of one temperature and one prompt differ only in their sample id: their texts are their own, and a
    row's text is the same whatever rows run beside it."""
    config = sampling_config((1.0,), n=200, prompts=("ab",), max_len=25, seed=8)
    batch = Engine(lstm, config).generate(np.arange(200))
    texts = lstm.spec.vocab.decode_rows(batch.ids).tolist()
    assert len(set(texts)) > 190
    late = Engine(lstm, config).generate(np.arange(150, 200))
    assert np.array_equal(late.ids, batch.ids[150:])


# --- every column stays on its row ----------------------------------------------------------------------------


@pytest.mark.parametrize("cores, batch_size", [(1, 13), (3, 7)])
def test_every_column_of_samples_csv_belongs_to_its_row(model, tmp_path, monkeypatch, cores, batch_size):
    """README, sample-batch: columns sample_id, temperature, prompt, text, length, finished, logprob, seed; rows are
    temperature-major and the prompts cycle within a temperature (toolkit/sampling/config.py). Each column against
    the one-row reference of its sample id, with chunks that cut through temperatures and prompts."""
    import toolkit.sampling.batch

    monkeypatch.setattr(toolkit.sampling.batch, "cpu_cores", lambda: cores)
    temps, prompts, n = (0.0, 0.6, 1.5), ("ab ", "j", "", "cab"), 11  # n not a multiple of the prompts
    config = sampling_config(temps, n=n, prompts=prompts, max_len=24, seed=21, top_k=7, presence_penalty=0.4)
    sample_batch(model, tmp_path / "s", config, device="cpu", batch_size=batch_size)
    rows = pd.read_csv(tmp_path / "s" / "samples.csv", keep_default_na=False)
    assert rows["sample_id"].tolist() == list(range(len(temps) * n))
    assert 0.2 < rows["finished"].mean() < 0.8 and rows["length"].nunique() > 5  # rows tell apart
    step = OnnxStep(model, "cpu")
    vocab = step.spec.vocab
    for sid, row in rows.iterrows():
        assert row["temperature"] == temps[sid // n] and row["prompt"] == prompts[sid % n % len(prompts)], sid
        alone = generate(step, config, np.array([sid]), config.prompt_ids(vocab))
        assert row["text"] == decode(vocab, alone.ids[0]) and row["text"].startswith(row["prompt"]), sid
        assert row["length"] == len(row["text"]) and row["finished"] == bool(alone.finished[0]), sid
        assert row["logprob"] == pytest.approx(float(alone.logprob[0]), abs=1e-3) and row["seed"] == 21, sid


def test_the_reports_groups_keep_each_texts_own_flags_whatever_the_file_order():
    """README, report: the counts over every sample and the seeded subset, per temperature. Rows interleaved in the
    file, read in chunks, the subset smaller than the groups: each kept text still has its own finished flag and
    log-probability, and each group's counts are its own rows'."""
    rng = np.random.default_rng(1)
    temps = rng.choice([0.3, 1.0, 1.8], 900)
    ids = np.arange(900)
    finished, logprob = ids % 3 == 0, -(ids + 1.0)
    texts = [f"t{i} " + "x" * (i % 7) for i in ids]
    streams = Streams(TrainingTitles(["nothing alike"]), subset=50, seed=4)
    for first in range(0, 900, 128):
        part = slice(first, first + 128)
        streams.add(temps[part], texts[part], finished[part], logprob[part])
    for group in streams.groups():
        mine = np.flatnonzero(temps == group.temperature)
        assert group.rows == mine.size and len(group.texts) == 50
        kept = np.array([int(t.split()[0][1:]) for t in group.texts])
        assert set(kept) <= set(mine)
        assert np.array_equal(group.finished, finished[kept]) and np.array_equal(group.logprob, logprob[kept])
        est = group.sums["finished_rate"].interval(1.96, 1.0)[0]
        assert est == pytest.approx(finished[mine].mean())
        assert group.sums["mean_length"].interval(1.96, math.inf)[0] == pytest.approx(
            np.mean([len(texts[i]) for i in mine]))
    table = metrics_table(pd.DataFrame({"temperature": temps, "text": texts, "finished": finished,
                                        "logprob": logprob}), ["nothing alike"], texts[:60], subset=50)
    for t, row in zip((0.3, 1.0, 1.8), table.itertuples(), strict=False):
        mine = np.flatnonzero(temps == t)
        assert row.samples == mine.size and row.finished_rate == pytest.approx(finished[mine].mean())
        chars = np.array([len(texts[i]) for i in mine]) + finished[mine]
        assert row.bpc == pytest.approx(-logprob[mine].sum() / math.log(2) / chars.sum())


# --- both sides of every comparison in the report ---------------------------------------------------------------


def _spy_distances(monkeypatch):
    calls = []
    real = eval.metrics._distances

    def spy(a, b, sel_a, sel_b):
        found = real(a, b, sel_a, sel_b)
        calls.append((a, b, np.asarray(sel_a, bool), np.asarray(sel_b, bool), found))
        return found

    monkeypatch.setattr(eval.metrics, "_distances", spy)
    return calls


def _titles(rng, vocab, n):
    return [" ".join(rng.choices(vocab, k=rng.randint(1, 6))) for _ in range(n)]


@pytest.mark.parametrize("reference_titles, size", [(40, None), (40, 20), (300, None), (41, 40)],
                         ids=["reference-smaller", "size-given", "reference-larger", "reference-one-more"])
def test_each_distance_compares_half_the_common_size_on_each_side(monkeypatch, reference_titles, size):
    """README, report: "every group is scored on disjoint subsamples of one size (the smallest group, or --size)
    ... Distances are measured between halves"; eval/metrics.py: "half the common size on each side", the reference
    row "between two disjoint halves of the reference". Also where the reference is smaller than the samples."""
    rng = random.Random(7)
    vocab = ["Alpha", "beta", "GAMMA", "delta", "eps", "zeta"]
    samples = pd.DataFrame([{"temperature": t, "text": x, "finished": True}
                            for t in (0.5, 1.5) for x in _titles(rng, vocab, 120)])
    calls = _spy_distances(monkeypatch)
    table = metrics_table(samples, ["x"], _titles(rng, vocab, reference_titles), size=size).set_index("group")
    common = min(120, reference_titles) if size is None else size
    assert table["size"].tolist() == [common] * 3
    assert table["subsamples"].tolist() == [120 // common, 120 // common, reference_titles // common]
    half = common // 2
    assert calls and len(calls) == sum(table["subsamples"])
    for a, b, sel_a, sel_b, found in calls:
        assert a.length.size == b.length.size == common
        assert (sel_a.sum(axis=1) == half).all() and (sel_b.sum(axis=1) == half).all()
        for r in range(0, sel_a.shape[0], 37):  # the replicate's figures are those of its two halves
            left, right = a.length[sel_a[r]], b.length[sel_b[r]]
            assert found["length_ks"][r] == pytest.approx(ks_2samp(left, right).statistic)
            assert found["length_wasserstein"][r] == pytest.approx(wasserstein_distance(left, right))


def test_both_sides_of_a_distance_are_normalised_alike():
    """Words are `text.lower().split()` on both sides (eval/metrics.py) and each side is a distribution of its own:
    a group that writes the reference's titles in capitals, or repeats them, is at distance 0 in words and lengths;
    characters keep their case."""
    val = ["MARKET RALLIES ON rate cut", "STORM HITS coast", "Team WINS TITLE"] * 14  # 42 titles
    shouted = [t.upper() for t in val[:40]] * 3  # three times as many samples, in capitals
    repeated = [t for t in val[:40] for _ in range(3)]  # the same titles, each three times
    samples = pd.DataFrame([{"temperature": t, "text": x, "finished": True}
                            for t, group in ((0.5, shouted), (1.0, repeated)) for x in group])
    table = metrics_table(samples, ["x"], val).set_index("group")
    floor = table.loc["reference"]
    for group in ("T=0.5", "T=1", "reference"):
        assert table.loc[group, "js_words"] < 0.15, group  # the sampling noise of halves only
    for name in ("length_ks", "js_words", "js_char_bigrams"):
        assert table.loc["T=1", name] == pytest.approx(floor[name], abs=0.05), name
    assert table.loc["T=0.5", "js_char_bigrams"] > floor["js_char_bigrams"] + 0.2  # characters keep their case


def test_a_groups_distance_is_the_mean_over_its_halves_against_the_references(monkeypatch):
    """The estimate of each distance is the mean of the replicates' distances (eval/metrics.py), each replicate's
    words and character bigrams counted on each side alone and normalised by that side's own total, as SciPy's
    Jensen-Shannon distance squared does for two count vectors."""
    from collections import Counter

    from eval.metrics import Group, _pools, score

    rng = random.Random(9)
    group = Group("T=1", 1.0, _titles(rng, ["Alpha", "beta", "beta", "GAMMA", "delta"], 60), np.ones(60, bool))
    reference = Group("reference", math.nan, _titles(rng, ["alpha", "beta", "zeta", "zeta", "eta"], 60),
                      np.ones(60, bool))
    calls = _spy_distances(monkeypatch)
    table = score([group], reference, TrainingTitles(["x"]))
    a, b, sel_a, sel_b, found = calls[0]
    assert sel_a.shape[0] == BOOTSTRAP
    ours, theirs = ([g.texts[i] for i in _pools(g, 60, 0).rows[0]] for g in (group, reference))
    assert a.length.tolist() == list(map(len, ours)) and b.length.tolist() == list(map(len, theirs))

    def js(x, y):
        cx, cy = Counter(x), Counter(y)
        keys = sorted(set(cx) | set(cy))
        return jensenshannon([cx[k] for k in keys], [cy[k] for k in keys], base=2) ** 2

    def bigrams(texts):
        return [t[i:i + 2] for t in texts for i in range(len(t) - 1)]

    for r in range(0, BOOTSTRAP, 23):
        left = [t for t, s in zip(ours, sel_a[r], strict=True) if s]
        right = [t for t, s in zip(theirs, sel_b[r], strict=True) if s]
        assert found["js_words"][r] == pytest.approx(js([w for t in left for w in words(t)],
                                                        [w for t in right for w in words(t)]))
        assert found["js_char_bigrams"][r] == pytest.approx(js(bigrams(left), bigrams(right)))
    for name in DISTANCES:
        assert table.iloc[0][name] == pytest.approx(np.nanmean(found[name]))


def test_at_an_odd_size_the_reference_row_also_compares_half_with_half(monkeypatch):
    """eval/metrics.py: "the reference row holds the distance between two disjoint halves of the reference", at
    "half the common size on each side" as the groups are."""
    rng = random.Random(8)
    samples = pd.DataFrame({"temperature": 1.0, "text": _titles(rng, ["a", "b", "c"], 41), "finished": True})
    calls = _spy_distances(monkeypatch)
    metrics_table(samples, ["x"], _titles(rng, ["a", "b", "d"], 41))
    assert all((sel_a.sum(axis=1) == 20).all() and (sel_b.sum(axis=1) == 20).all()
               for _, _, sel_a, sel_b, _ in calls)


# --- a new run's learning rate ----------------------------------------------------------------------------------


def test_a_new_runs_learning_rate_follows_the_cosine_its_config_states(small_csv, tmp_path):
    """README, train: "Adam 3e-3 with cosine decay to a tenth" over the configured epochs, for a new run (the
    resumed one is test_train.py::test_resume_with_more_epochs_follows_the_longer_cosine)."""
    import keras

    from toolkit.config import TrainConfig
    from toolkit.train import read_history, train

    data = tmp_path / "t.csv"
    data.write_text("".join(small_csv.read_text(encoding="utf-8").splitlines(keepends=True)[:120]), encoding="utf-8")
    config = TrainConfig(data=str(data), units=8, embedding_dim=4, seq_len=32, batch_size=32, epochs=3, lr=2e-3)
    assert TrainConfig().lr == 3e-3
    train(config, tmp_path / "run", verbose=0, log=lambda _: None)
    steps = int(keras.saving.load_model(tmp_path / "run" / "last.keras").optimizer.iterations.numpy()) // 3
    assert steps >= 2
    history = read_history(tmp_path / "run")

    def cosine(step, total):
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))

    assert [row["epoch"] for row in history] == [1, 2, 3]
    for row in history:
        assert row["lr"] == pytest.approx(cosine(row["epoch"] * steps, 3 * steps), rel=1e-5), row
    assert history[-1]["lr"] == pytest.approx(config.lr / 10, rel=1e-5)
