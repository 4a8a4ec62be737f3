"""The logits processors, the uniforms and the draw: hand-computed cases, numpy against the ONNX nodes, and the
drawn distributions against the exact ones."""

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from scipy import stats

from toolkit.sampling.draw import (
    counters,
    draw,
    draw_onnx,
    log_prob,
    log_prob_onnx,
    squares_key,
    uniforms,
    uniforms_onnx,
)
from toolkit.sampling.graph import Graph, make_model
from toolkit.sampling.processors import (
    Ban,
    Constraint,
    InvalidParameter,
    MinP,
    RepetitionPenalty,
    Rows,
    Temperature,
    TopK,
    TopP,
    inverse_temperature,
)
from toolkit.vocab import BOS, PAD, UNK, Vocab

NEG = -np.inf
VOCAB = 12


def logits_of(probs):
    return np.log(np.asarray(probs, np.float32))[None]


def kept(x):
    return np.isfinite(x).tolist()


def no_rows(n=1):
    return Rows(np.ones(n, np.float32))


def test_ban_removes_the_reserved_ids_only():
    x = Ban().numpy(np.zeros((2, 6), np.float32), no_rows(2))
    assert (np.isneginf(x[:, [PAD, BOS, UNK]])).all() and (x[:, [2, 4, 5]] == 0).all()


def test_temperature_divides_each_row_and_zero_keeps_only_the_largest():
    x = np.array([[1.0, 2.0, 4.0], [1.0, 4.0, 4.0], [2.0, -1.0, 0.5]], np.float32)
    out = Temperature().numpy(x, Rows(np.array([2.0, 0.0, 0.5], np.float32)))
    assert out[0].tolist() == [0.5, 1.0, 2.0] and out[2].tolist() == [4.0, -2.0, 1.0]  # powers of 2: exact
    assert kept(out[1:2]) == [[False, True, True]]  # greedy: the tied maxima stay, the rest go


def test_top_k_keeps_the_k_largest_and_ties_with_the_kth():
    assert kept(TopK(2).numpy(np.array([[1.0, 3.0, 2.0, 0.0]], np.float32), no_rows())) == [[False, True, True, False]]
    assert kept(TopK(2).numpy(np.array([[3.0, 2.0, 2.0, 0.0]], np.float32), no_rows())) == [[True, True, True, False]]
    assert kept(TopK(9).numpy(np.zeros((1, 4), np.float32), no_rows())) == [[True] * 4]


@pytest.mark.parametrize("p, expected", [(0.5, [1, 0, 0, 0]), (0.8, [1, 1, 0, 0]), (0.81, [1, 1, 1, 0]),
                                         (1.0, [1, 1, 1, 1])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(TopP(p).numpy(logits_of([0.5, 0.3, 0.15, 0.05]), no_rows())) == [list(map(bool, expected))]


@pytest.mark.parametrize("p, expected", [(0.5, [1, 1, 0, 0]), (0.3, [1, 1, 1, 0]), (1.0, [1, 0, 0, 0])])
def test_min_p_keeps_ids_at_least_p_times_the_likeliest(p, expected):
    assert kept(MinP(p).numpy(logits_of([0.4, 0.3, 0.15, 0.05]), no_rows())) == [list(map(bool, expected))]


def test_repetition_penalty_subtracts_presence_once_and_frequency_per_draw():
    counts = np.array([[0, 2, 1, 0]], np.float32)
    out = RepetitionPenalty(presence=0.5, frequency=0.25).numpy(np.zeros((1, 4), np.float32),
                                                                Rows(None, {"counts": counts}))
    assert out.tolist() == [[0.0, -1.0, -0.75, 0.0]]


def test_processors_compose_in_order():
    x = logits_of([0.4, 0.3, 0.2, 0.1])
    top2_then_p = TopP(0.5).numpy(TopK(2).numpy(x, no_rows()), no_rows())  # renormalised: 0.57, 0.43 -> first
    p_then_top2 = TopK(2).numpy(TopP(0.65).numpy(x, no_rows()), no_rows())  # 0.4 + 0.3 reach 0.65 -> two
    assert kept(top2_then_p) == [[True, False, False, False]] and kept(p_then_top2) == [[True, True, False, False]]


@pytest.mark.parametrize("make, message", [
    (lambda: TopK(0), "top_k must be a positive integer, not 0"),
    (lambda: TopK(2.5), "top_k must be a positive integer, not 2.5"),
    (lambda: TopK(True), "top_k must be a positive integer, not True"),
    (lambda: TopP(0), "top_p must lie in (0, 1], not 0"), (lambda: TopP(1.2), "top_p must lie in (0, 1], not 1.2"),
    (lambda: MinP(0), "min_p must lie in (0, 1], not 0"), (lambda: MinP(math.nan), "min_p must lie in (0, 1], not nan"),
    (lambda: RepetitionPenalty(3, 0), "presence_penalty must lie in [-2, 2], not 3"),
    (lambda: RepetitionPenalty(0, -2.5), "frequency_penalty must lie in [-2, 2], not -2.5")])
def test_processors_refuse_their_bad_parameters_by_name(make, message):
    """The parameter's name (the CLI swaps in its flag), what it must be, and the value given."""
    with pytest.raises(InvalidParameter) as error:
        make()
    assert str(error.value) == message and error.value.parameter == message.split()[0]


def run_graph(build, inputs: dict[str, np.ndarray], opset=17):
    """Build a graph with `build(g) -> output name` over the given inputs and run it on onnxruntime's CPU."""
    g = Graph(np.float32, opset, vocab=VOCAB)
    result = build(g)
    model = make_model(helper.make_graph(
        [*g.nodes, helper.make_node("Identity", [result], ["out"])], "t",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
         for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info("out")], g.initializers), opset)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


PROCESSORS = [Ban(), Temperature(), TopK(3), TopP(0.7), MinP(0.05), RepetitionPenalty(0.4, 0.3)]
GRAPH_ROWS = Rows("temperature", {"counts": "counts"}, inverse="inverse")


@pytest.mark.parametrize("opset", [13, 17, 18, 26])
@pytest.mark.parametrize("processor", PROCESSORS, ids=lambda p: type(p).__name__)
def test_onnx_nodes_do_what_the_numpy_reference_does(processor, opset):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (500, VOCAB)).astype(np.float32)
    x[:50, 5] = x[:50, 6]  # ties
    temperature = rng.choice(np.float32([0, 0.3, 1, 1.8]), 500)
    counts = rng.integers(0, 4, (500, VOCAB)).astype(np.float32)
    expected = processor.numpy(x, Rows(temperature, {"counts": counts}))
    got = run_graph(lambda g: processor.onnx(g, "x", GRAPH_ROWS),
                    {"x": x, "temperature": temperature, "counts": counts,
                     "inverse": inverse_temperature(temperature)}, opset)
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
    assert np.allclose(got[np.isfinite(got)], expected[np.isfinite(expected)], rtol=1e-6, atol=1e-6)


def test_uniforms_are_a_function_of_seed_row_and_step_and_look_uniform():
    key, rows = squares_key(7), np.arange(200_000)
    u = uniforms(key, counters(rows), 3)
    assert u.dtype == np.float32 and u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert np.array_equal(uniforms(key, counters(rows[[5, 99]]), 3), u[[5, 99]])
    assert not np.array_equal(uniforms(squares_key(8), counters(rows[:10]), 3), u[:10])
    following = uniforms(key, counters(rows), 4)
    assert abs(np.corrcoef(u, following)[0, 1]) < 0.01  # one row's consecutive steps are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # nor are neighbouring rows


def test_uniforms_in_the_graph_are_bit_identical():
    key, counter = squares_key(2**63 + 5), counters(np.arange(0, 10**12, 10**7))
    for step in (0, 1, 1000, 2**24 - 2):
        got = run_graph(lambda g: uniforms_onnx(g, key, "counter", "step"),
                        {"counter": counter, "step": np.array(step, np.int64)})
        assert np.array_equal(got, uniforms(key, counter, step))


def test_the_draw_in_the_graph_equals_the_numpy_draw():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (100_000, VOCAB)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = NEG
    x[:, 4] = np.maximum(x[:, 4], 0)  # every row keeps an id
    u = uniforms(squares_key(0), counters(np.arange(100_000)), 0)
    got = run_graph(lambda g: draw_onnx(g, "x", "u"), {"x": x, "u": u})
    expected = draw(x, u)
    assert np.mean(got == expected) >= 0.9999
    assert np.isfinite(x[np.arange(x.shape[0]), got]).all()  # never a removed id


def test_log_prob_in_the_graph_equals_numpy_and_normalises():
    x = np.random.default_rng(2).normal(0, 3, (300, VOCAB)).astype(np.float32)
    ids = np.random.default_rng(3).integers(0, VOCAB, 300)
    got = run_graph(lambda g: log_prob_onnx(g, "x", "ids"), {"x": x, "ids": ids})
    assert np.allclose(got, log_prob(x, ids), atol=1e-5)
    every = np.stack([log_prob(x, np.full(300, i)) for i in range(VOCAB)], axis=1)
    assert np.allclose(np.exp(every).sum(axis=1), 1, atol=1e-5)


def assert_graph_draws_follow(chain, rows, inputs, exact, key):
    """Draw once per row of `inputs` through `chain` in the graph (uniforms from Squares under `key`) and check the
    draws against the distribution `exact` [VOCAB]: ids outside its support never drawn, the rest by chi-square."""
    def build(g):
        y = "x"
        for p in chain:
            y = p.onnx(g, y, rows)
        return draw_onnx(g, y, uniforms_onnx(g, squares_key(key), "counter", "step"))

    draws = len(inputs["x"])
    ids = run_graph(build, {**inputs, "inverse": inverse_temperature(inputs["temperature"]),
                            "counter": counters(np.arange(draws)), "step": np.array(0, np.int64)})
    observed = np.bincount(ids, minlength=VOCAB)
    support = exact > 0
    assert observed[~support].sum() == 0  # removed ids are never drawn
    assert stats.chisquare(observed[support], exact[support] * draws).pvalue > 1e-4, (observed, exact * draws)


@pytest.mark.parametrize("processor", [Temperature(), TopK(4), TopP(0.8), MinP(0.1), RepetitionPenalty(0.7, 0.4)],
                         ids=lambda p: type(p).__name__)
def test_each_processors_draws_follow_its_exact_distribution(processor):
    """Chi-square of 60,000 in-graph draws from one fixed row (at temperature 0.8) against the distribution the
    processor defines."""
    draws = 60_000
    chain = [Ban(), processor] + ([] if isinstance(processor, Temperature) else [Temperature()])
    x = np.tile(np.random.default_rng(4).normal(0, 1.5, (1, VOCAB)).astype(np.float32), (draws, 1))
    temperature = np.full(draws, 0.8, np.float32)
    counts = np.tile(np.float32([[0, 0, 0, 0, 1, 3, 0, 2, 0, 0, 1, 0]]), (draws, 1))
    exact = x[:1]
    for p in chain:
        exact = p.numpy(exact, Rows(temperature[:1], {"counts": counts[:1]}))
    exact = np.exp(exact[0].astype(np.float64))
    exact /= exact.sum()
    assert_graph_draws_follow(chain, GRAPH_ROWS, {"x": x, "temperature": temperature, "counts": counts}, exact, 11)


def test_a_constraints_draws_follow_the_models_distribution_renormalised_over_the_allowed_characters():
    """Chi-square of 60,000 in-graph draws from one fixed row whose title so far is "a", under `--regex '[a-g]*h'
    --ban ab --min-len 3`: "b" (banned after "a"), <eos> (before 3 characters) and "h" (it would end the title at 2)
    are never drawn, and the other characters follow the model's probabilities at T = 0.8 renormalised over what is
    left, as the README says."""
    draws = 60_000
    vocab = Vocab(tuple("abcdefgh"))
    constraint = Constraint.build(vocab, regex="[a-g]*h", ban=["ab"], min_length=3)
    after_a = constraint.automaton.advance(0, [vocab.index["a"]])
    x = np.tile(np.random.default_rng(5).normal(0, 1.5, (1, VOCAB)).astype(np.float32), (draws, 1))
    temperature = np.full(draws, 0.8, np.float32)
    logits = x[0].astype(np.float64) / 0.8
    allowed = np.isin(np.arange(VOCAB), [vocab.index[c] for c in "acdefg"])
    exact = np.where(allowed, np.exp(logits - logits.max()), 0.0)  # "b", "h", <eos> and the reserved ids: 0
    exact /= exact.sum()
    assert_graph_draws_follow([Ban(), constraint, Temperature()],
                              Rows("temperature", {"automaton": "automaton"}, inverse="inverse"),
                              {"x": x, "temperature": temperature, "automaton": np.full(draws, after_a, np.int64)},
                              exact, 12)


def test_the_key_is_splitmix64_made_odd():
    """Keys are SplitMix64's outputs (its published sequence from seed 0: Vigna's splitmix64.c), low bit set as
    Squares requires: a seed gives the same samples in every version, and any two seeds give two keys."""
    golden = 0x9E3779B97F4A7C15
    published = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    assert [int(squares_key(i * golden % 2**64)) for i in range(4)] == [v | 1 for v in published]
    keys = {int(squares_key(seed)) for seed in [*range(10_000), 2**64 - 1]}
    assert len(keys) == 10_001 and all(k & 1 for k in keys)


def test_a_row_is_drawn_and_scored_as_if_it_were_alone():
    """A batch mixes rows of any scale (a temperature of 0.01 beside 1.8 multiplies logits by 180): each row's draw
    and log-probability are those of the row alone, with nothing lost to underflow."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 3, (6, VOCAB)).astype(np.float32) * np.float32([[1], [100], [1], [1e-3], [300], [1]])
    x[2] -= 500  # a row far below the others
    u = rng.random(6).astype(np.float32)
    ids = rng.integers(0, VOCAB, 6)
    exact = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))  # the inverse CDF in float64
    cdf = np.cumsum(exact, axis=1)
    assert draw(x, u).tolist() == (cdf < u[:, None] * cdf[:, -1:]).sum(axis=1).tolist()
    assert draw(x, u).tolist() == [int(draw(x[i:i + 1], u[i:i + 1])[0]) for i in range(6)]
    alone = np.array([log_prob(x[i:i + 1], ids[i:i + 1])[0] for i in range(6)])
    assert np.isfinite(alone).all() and np.array_equal(log_prob(x, ids), alone)


def test_the_draw_takes_the_first_id_whose_running_probability_reaches_u():
    """Four equal logits: the running probabilities are exactly 1/4, 1/2, 3/4, 1, so u on a boundary picks the
    id that reaches it, in numpy and in the graph alike."""
    x = np.zeros((5, 4), np.float32)
    u = np.float32([2**-24, 0.25, 0.5, 0.5 + 2**-24, 1 - 2**-24])
    expected = [0, 0, 1, 2, 3]
    assert draw(x, u).tolist() == expected
    got = run_graph(lambda g: draw_onnx(g, "x", "u"), {"x": x, "u": u})
    assert got.tolist() == expected


def test_the_draw_never_leaves_the_vocabulary_whatever_the_rounding():
    """Probabilities that sum to a little less than 1 in float32, and the largest uniform there is: the draw is
    still an id of the row, in numpy and in the graph."""
    rng = np.random.default_rng(6)
    x = rng.normal(0, 4, (20_000, VOCAB)).astype(np.float32)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    total = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)[:, -1]
    x = x[total < np.float32(1)]
    assert x.shape[0] > 100  # rows whose running total falls short of 1
    u = np.full(x.shape[0], 1 - 2**-24, np.float32)  # the largest uniform: (2^23 - 1 + 0.5) * 2^-23
    for ids in (draw(x, u), run_graph(lambda g: draw_onnx(g, "x", "u"), {"x": x, "u": u})):
        assert ids.min() >= 0 and ids.max() < VOCAB


@pytest.mark.parametrize("make, value, accepted", [
    (TopK, 0, "positive integer"), (TopK, 2.5, "positive integer"), (TopP, 1.5, "(0, 1]"), (TopP, 0.0, "(0, 1]"),
    (MinP, -0.1, "(0, 1]"), (MinP, 0, "(0, 1]"),
    (lambda v: RepetitionPenalty(v, 0), 3, "[-2, 2]"), (lambda v: RepetitionPenalty(0, v), -2.5, "[-2, 2]")])
def test_a_refusal_says_what_is_accepted_and_what_was_given(make, value, accepted):
    """The CLI prints `error: FLAG REQUIREMENT, not VALUE` from these fields."""
    with pytest.raises(InvalidParameter) as error:
        make(value)
    assert accepted in error.value.requirement and error.value.value == value
    assert str(error.value).endswith(f"{accepted}, not {value!r}")


@pytest.mark.parametrize("make, inside, outside", [
    (TopK, 1, 0), (TopK, 2**31 - 1, 2**31), (TopP, 5e-324, 0.0), (TopP, 1.0, math.nextafter(1, 2)),
    (MinP, 5e-324, 0.0), (MinP, 1.0, math.nextafter(1, 2)),
    (lambda v: RepetitionPenalty(v, 0), 2.0, math.nextafter(2, 3)),
    (lambda v: RepetitionPenalty(0, v), -2.0, math.nextafter(-2, -3))])
def test_each_parameter_holds_its_range_to_the_last_value(make, inside, outside):
    make(inside)
    with pytest.raises(InvalidParameter):
        make(outside)


def test_top_k_keeps_the_k_largest_of_a_wide_vocabulary():
    """Thousands of ids, as a character vocabulary of Chinese or Japanese text has."""
    x = np.random.default_rng(7).normal(0, 1, (20, 5000)).astype(np.float32)
    for k in (1, 7, 2500, 4999, 5000):
        assert kept(TopK(k).numpy(x, no_rows(20))) == (x >= np.sort(x, axis=1)[:, -k, None]).tolist()


def test_top_p_holds_at_the_lowest_temperature():
    """At temperature 0.01 the logits are 100 times larger (here ~1000): the nucleus is still the likeliest id."""
    x = Temperature().numpy(np.float32([[10, 9.5, 9, 0]]), Rows(np.float32([0.01])))
    assert kept(TopP(0.9).numpy(x, no_rows())) == [[True, False, False, False]]


@pytest.mark.parametrize("opset", [13, 17, 18, 26])
def test_a_whole_chain_in_the_graph_equals_the_reference_to_the_last_bit(opset):
    """The graph and numpy run the same float32 operations in the same order, so the reference predicts the
    engine's logits exactly on CPU."""
    rng = np.random.default_rng(8)
    x = rng.normal(0, 3, (500, VOCAB)).astype(np.float32)
    temperature = rng.choice(np.float32([0, 0.3, 1, 1.8]), 500)
    counts = rng.integers(0, 4, (500, VOCAB)).astype(np.float32)
    chain = [Ban(), RepetitionPenalty(0.4, -0.3), Temperature(), TopK(9), TopP(0.9), MinP(0.02)]

    def build(g):
        y = "x"
        for p in chain:
            y = p.onnx(g, y, GRAPH_ROWS)
        return y

    expected = x
    for p in chain:
        expected = p.numpy(expected, Rows(temperature, {"counts": counts}))
    got = run_graph(build, {"x": x, "temperature": temperature, "counts": counts,
                            "inverse": inverse_temperature(temperature)}, opset)
    assert expected.dtype == np.float32 and np.array_equal(got, expected)
