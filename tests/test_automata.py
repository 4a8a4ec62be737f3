"""Title constraints as character automata (toolkit.sampling.automata): each constraint on hand-built cases, the
regex and ban automata against Python's re and substring search, composition and minimisation, the numpy and ONNX
twins of the processor bit for bit, sampling loops whose every finished title obeys the constraint, and the
refusals of what cannot be compiled or satisfied."""

import itertools
import json
import re

import numpy as np
import pytest
from helpers import decode, step_model
from helpers import processor_graph as run_graph
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.files import UsageError
from toolkit.sampling import automata
from toolkit.sampling.automata import Automaton, intersect, prompt_state
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.engine import Engine
from toolkit.sampling.numpy_loop import generate
from toolkit.sampling.processors import Constraint, InvalidParameter, Rows, Temperature, describe
from toolkit.sampling.runtime import OnnxStep
from toolkit.sampling.tensors import select_rows
from toolkit.vocab import BOS, EOS, PAD, UNK, Vocab

NEG = np.float32(-np.inf)
AP = Vocab(tuple("ab ()APZ"))
SMALL = Vocab(tuple("abc "))  # the property tests' alphabet: three letters and a character no pattern names
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ids(vocab, text):
    return [vocab.index[ch] for ch in text]


def state_after(automaton, vocab, text):
    return automaton.advance(0, ids(vocab, text))


def allowed_chars(automaton, vocab, text):
    """The characters (and "<eos>") allowed after `text`."""
    row = automaton.allowed[state_after(automaton, vocab, text)]
    return {("<eos>" if i == EOS else vocab.chars[i - 4]) for i in np.flatnonzero(row)}


def strings(chars, longest):
    """Every string over `chars` of at most `longest` characters."""
    return ["".join(p) for n in range(longest + 1) for p in itertools.product(chars, repeat=n)]


SHORT = strings("abc ", 5)  # 1,365 strings: the exhaustive check of the property tests


def assert_well_formed(a):
    """State 0 starts, the last is DEAD (absorbing, not accepting), the reserved ids lead to DEAD, <eos> is allowed
    exactly where a title may end (and keeps the state), and every state but DEAD can still reach acceptance."""
    dead = a.dead
    assert (a.next[dead] == dead).all() and not a.accepting[dead]
    assert (a.next[:, [PAD, BOS, UNK]] == dead).all()
    assert np.array_equal(a.allowed[:, EOS], a.accepting)
    assert np.array_equal(a.next[a.accepting, EOS], np.flatnonzero(a.accepting))
    assert all(a.shortest_accepted(s) is not None for s in range(dead))
    assert a.mask.dtype == np.float32 and np.array_equal(a.mask == 0, a.allowed)


# --- each constraint by hand -----------------------------------------------------------------------------------

def test_a_regex_automaton_allows_exactly_the_titles_that_fullmatch():
    a = Automaton.from_regex(r"[A-Z][^()]*\(AP\)", AP)
    assert_well_formed(a)
    for text in ("A (AP)", "Zab(AP)", "AP(AP)", "Z  b(AP)"):
        assert a.accepts(ids(AP, text)), text
    for text in ("a (AP)", "A (AP) ", "A(A)P", "A (AP", "", "(AP)"):
        assert not a.accepts(ids(AP, text)), text
    assert allowed_chars(a, AP, "") == {"A", "P", "Z"}  # a capital first; no <eos> yet
    assert allowed_chars(a, AP, "Ab (AP)") == {"<eos>"}
    assert "(" in allowed_chars(a, AP, "Ab") and "<eos>" not in allowed_chars(a, AP, "Ab")
    assert a.shortest_accepted() == 5 and a.accepts(a.example())
    assert a.states == 7  # start, the capital, (, A, P, ), DEAD: minimal
    assert np.array_equal(Automaton.from_regex(r"^[A-Z][^()]*\(AP\)$", AP).next, a.next)  # anchors are implied


def test_characters_the_vocabulary_lacks_are_unreachable():
    a = Automaton.from_regex(r"(x|a)b+", AP)  # no x in AP
    assert a.accepts(ids(AP, "abb")) and allowed_chars(a, AP, "") == {"a"}


def test_only_an_unescaped_dollar_at_the_end_is_an_anchor():
    dollar = Vocab(tuple("A$\\"))
    assert Automaton.from_regex(r"A\$", dollar).accepts(ids(dollar, "A$"))
    assert not Automaton.from_regex(r"A\$", dollar).accepts(ids(dollar, "A"))
    assert Automaton.from_regex(r"A\\$", dollar).accepts(ids(dollar, "A\\"))  # a backslash, then the anchor


def test_a_ban_automaton_never_completes_a_banned_string():
    vocab = Vocab(tuple("ehirstu "))
    a = Automaton.from_banned(["he", "she", "his", "hers"], vocab)  # Aho and Corasick's own example
    assert_well_formed(a)
    assert a.accepting[:-1].all()  # a title may end anywhere
    for text in ("usher", "this", "hershe", "he"):
        assert not a.accepts(ids(vocab, text)), text
    for text in ("", "sir", "ruse", "h", "hi", "s h e"):
        assert a.accepts(ids(vocab, text)), text
    assert "e" not in allowed_chars(a, vocab, "us h")  # "he" through the failure link from "sh"
    assert "s" not in allowed_chars(a, vocab, "hi") and "h" in allowed_chars(a, vocab, "s")
    abcd = Vocab(tuple("abcd"))
    b = Automaton.from_banned(["abcd", "bc"], abcd)
    assert "b" in allowed_chars(b, abcd, "a") and "c" not in allowed_chars(b, abcd, "ab")  # "bc" inside "abc"


def test_min_length_refuses_eos_before_n_characters():
    a = Automaton.min_length(3, AP)
    assert_well_formed(a)
    assert [a.accepts(ids(AP, "a" * n)) for n in range(6)] == [False, False, False, True, True, True]
    assert "<eos>" not in allowed_chars(a, AP, "ab") and "<eos>" in allowed_chars(a, AP, "abZ")
    assert a.shortest_accepted() == 3 and a.states == 5  # 0, 1, 2, 3+ characters and DEAD
    assert Automaton.min_length(0, AP).states == 2 and Automaton.min_length(0, AP).accepts([])


def test_a_stop_string_leaves_only_eos():
    a = Automaton.stop(["(AP)"], AP)
    assert_well_formed(a)
    assert allowed_chars(a, AP, "Ab (AP)") == {"<eos>"}
    assert a.accepts(ids(AP, "Ab (AP)")) and a.accepts(ids(AP, "Ab (A")) and not a.accepts(ids(AP, "(AP) b"))
    assert len(allowed_chars(a, AP, "Ab (A")) == len(AP.chars) + 1  # anything before it
    late = intersect(a, Automaton.min_length(6, AP))  # a stop string before the minimum length is not allowed
    assert ")" not in allowed_chars(late, AP, "(AP") and late.accepts(ids(AP, "ab(AP)"))


# --- against Python's re and substring search ------------------------------------------------------------------

ATOMS = st.sampled_from(["a", "b", "c", "[ab]", "[^a]", ".", "(a|bc)", "", "a?"])


def _combine(inner):
    return st.one_of(st.tuples(inner, inner).map("".join), st.tuples(inner, inner).map(lambda p: f"({p[0]}|{p[1]})"),
                     inner.map(lambda p: f"({p})*"), inner.map(lambda p: f"({p})+"), inner.map(lambda p: f"({p})?"),
                     inner.map(lambda p: f"({p}){{1,2}}"), inner.map(lambda p: f"(?:{p}){{2}}"))


REGEXES = st.recursive(ATOMS, _combine, max_leaves=6)


@FAST
@given(REGEXES)
def test_the_regex_automaton_is_re_fullmatch(pattern):
    """On every string of up to 5 characters over a, b, c and a space: accepted iff re.fullmatch matches; a state
    off DEAD can still be completed to a match (its example), and every prefix of a match stays off DEAD."""
    a = Automaton.from_regex(pattern, SMALL)
    assert_well_formed(a)
    compiled = re.compile(pattern)
    for text in SHORT:
        state = state_after(a, SMALL, text)
        assert bool(a.accepting[state]) == bool(compiled.fullmatch(text)), (pattern, text)
        if state != a.dead:
            rest = "".join(SMALL.chars[i - 4] for i in a.example(state))
            assert compiled.fullmatch(text + rest), (pattern, text, rest)
        if compiled.fullmatch(text):
            assert all(state_after(a, SMALL, text[:k]) != a.dead for k in range(len(text) + 1))


BANS = st.lists(st.text("abc", min_size=1, max_size=4), min_size=1, max_size=5)


@FAST
@given(BANS)
def test_the_ban_automaton_is_substring_search(banned):
    """After any string, exactly the characters that complete no banned string are allowed."""
    a = Automaton.from_banned(banned, SMALL)
    assert_well_formed(a)
    for text in SHORT:
        clean = not any(b in text for b in banned)
        assert a.accepts(ids(SMALL, text)) == clean, (banned, text)
        if clean:
            expected = {ch for ch in SMALL.chars if not any((text + ch).endswith(b) for b in banned)} | {"<eos>"}
            assert allowed_chars(a, SMALL, text) == expected, (banned, text)


# --- composition and minimisation --------------------------------------------------------------------------------

@FAST
@given(REGEXES, BANS, st.integers(0, 4))
def test_the_product_allows_what_every_factor_allows(pattern, banned, shortest):
    regex, ban, least = (Automaton.from_regex(pattern, SMALL), Automaton.from_banned(banned, SMALL),
                         Automaton.min_length(shortest, SMALL))
    raw, both = intersect(regex, ban, least, minimise=False), intersect(regex, ban, least)
    assert_well_formed(raw)
    assert_well_formed(both)
    assert both.states <= raw.states
    for text in SHORT:
        expected = regex.accepts(ids(SMALL, text)) and ban.accepts(ids(SMALL, text)) and len(text) >= shortest
        assert raw.accepts(ids(SMALL, text)) == both.accepts(ids(SMALL, text)) == expected, (pattern, banned, text)
    assert np.array_equal(both.minimise().next, both.next)  # minimal already: a fixed point


def test_minimisation_merges_equivalent_states_and_keeps_the_language():
    """(aa)*(b(aa)*)?, hand-built with two copies of the state "b and an even number of a's" (2 and 4), and a state
    (6) from which no title can be completed."""
    a_, b_, c_ = (ids(SMALL, ch)[0] for ch in "abc")
    next_ = np.full((8, SMALL.size), 7, np.int32)
    for state, char, target in ((0, a_, 1), (1, a_, 0), (0, b_, 2), (2, a_, 3), (3, a_, 4), (4, a_, 3), (4, c_, 6),
                                (6, a_, 6), (5, a_, 0)):  # 5 is unreachable
        next_[state, char] = target
    raw = Automaton(next_, np.array([True, False, True, False, True, True, False, False]))
    small = raw.minimise()
    assert_well_formed(small)
    assert small.states == 5  # 0, 1, {2, 4}, 3 and DEAD (6 is dead too, 5 is gone)
    for text in SHORT:
        expected = bool(re.fullmatch(r"(aa)*(b(aa)*)?", text))
        assert raw.accepts(ids(SMALL, text)) == small.accepts(ids(SMALL, text)) == expected, text


def test_a_hash_collision_in_the_refinement_falls_back_to_the_exact_one():
    raw = intersect(Automaton.from_regex("(a|b)*a(a|b)(a|b)", SMALL), Automaton.min_length(3, SMALL),
                    Automaton.from_banned(["bab"], SMALL), minimise=False)  # 15 states, 11 once minimised
    table = automata._columns(raw.next[:, 4:])[0]
    exact = automata._blocks(table, raw.accepting)
    colliding = automata._blocks(table, raw.accepting, np.ones(table.shape[1] + 1, np.uint64))  # a sum: collides
    assert len(set(exact)) < raw.states
    assert len(set(zip(exact, colliding, strict=True))) == len(set(exact)) == len(set(colliding))  # one partition


def test_one_language_gives_one_table():
    assert np.array_equal(Automaton.from_regex("a*a*(b|b)", SMALL).next, Automaton.from_regex("a*b", SMALL).next)
    assert np.array_equal(intersect(Automaton.min_length(2, SMALL), Automaton.min_length(3, SMALL)).next,
                          Automaton.min_length(3, SMALL).next)
    assert intersect(Automaton.from_regex("(ab)*", SMALL), Automaton.from_regex("(ab)*", SMALL)).states == 3


# --- the processor: numpy and ONNX twins -------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("must_finish", [False, True])
def test_onnx_nodes_do_what_the_numpy_reference_does_bit_for_bit(opset, must_finish):
    c = Constraint.build(AP, regex=r"[A-Z][^()]*\(AP\)", ban=["ab", "b b"], min_length=7, must_finish=must_finish)
    rng, vocab = np.random.default_rng(0), AP.size
    rows, left = 2000, np.array(6, np.int64)
    state = rng.integers(0, c.automaton.states, rows)  # DEAD too
    x = rng.normal(0, 3, (rows, vocab)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = NEG
    x[:20] = np.float32(-0.0)
    token = rng.integers(0, vocab, rows)
    drew = rng.random(rows) < 0.5
    applied = run_graph(lambda g: c.onnx(g, "x", Rows("t", {"automaton": "automaton"}, left="left")),
                        {"x": x, "automaton": state, "left": left}, vocab, opset)
    expected = c.numpy(x, Rows(None, {"automaton": state}, left=left))
    assert applied.dtype == expected.dtype == np.float32
    assert np.array_equal(applied.view(np.uint32), expected.view(np.uint32))  # the same bits, -0.0 and -inf too
    removed = ~c.automaton.allowed[state] | (must_finish & (c.automaton.need[state] > left))
    assert np.array_equal(np.isneginf(expected), np.isneginf(x) | removed)
    assert must_finish == bool((removed & c.automaton.allowed[state]).any())  # the room left removes some
    after = run_graph(lambda g: c.accept_onnx(g, "automaton", "token", "drew"),
                      {"automaton": state, "token": token, "drew": drew}, vocab, opset)
    expected_after = c.accept(state, token, drew)
    assert after.dtype == expected_after.dtype == np.int64
    assert np.array_equal(after, expected_after)
    assert np.array_equal(expected_after, c.automaton.next[state, token])  # every row moves, drawn or forced


def test_need_is_the_ids_a_row_must_write_to_end_after_each_id():
    """Against the automaton's own shortest completions (example(), a forward search): 1 for an allowed <eos>, the
    character, the fewest characters after it to acceptance and <eos>, else never."""
    a = intersect(Automaton.from_regex(r"[A-Z][^()]*\(AP\)", AP), Automaton.min_length(6, AP))
    for state in range(a.states):
        for i in range(a.vocab_size):
            after = int(a.next[state, i])
            shortest = a.example(after) if after != a.dead else None
            want = automata.NEVER if after == a.dead else 1 if i == EOS else 2 + len(shortest)
            assert a.need[state, i] == want, (state, i)
    assert a.shortest_accepted() == 6 == len(a.example())


def test_must_finish_ends_every_row_with_an_allowed_title_within_max_len():
    pattern = r"[A-Z][^()]*\(AP\)"
    free, config = sample(Constraint.build(AP, regex=pattern), AP, temperatures=(1.0,), n=200, max_len=12)
    assert len(free) < 0.9 * config.rows  # without it, rows run out of room
    held, config = sample(Constraint.build(AP, regex=pattern, must_finish=True), AP, temperatures=(0.0, 1.0), n=200,
                          max_len=12, prompts=("", "Z a"))
    assert len(held) == config.rows and len({t for t, _ in held}) > 50
    assert all(re.fullmatch(pattern, t) and len(t) <= 11 and t.startswith(p) for t, p in held)
    assert max(len(t) for t, _ in held) == 11  # the whole room is used


def test_the_processor_is_a_frozen_hashable_record_of_its_parameters():
    c = Constraint.build(AP, regex="A.*", ban=["ab"], min_length=2, stop=["(AP)"])
    assert c == Constraint.build(AP, regex="A.*", ban=("ab",), min_length=2, stop=("(AP)",)) and hash(c)
    assert Constraint.state.dtype == np.int64 and Constraint.state.shape(5, AP.size) == (5,)
    record = json.loads(json.dumps(describe(c)))
    assert record["name"] == "Constraint" and record["regex"] == "A.*" and record["ban"] == ["ab"]


# --- sampling with it --------------------------------------------------------------------------------------------

class RandomStep:
    """A "model" whose logits are random at every step (and <eos> a little likelier)."""

    def __init__(self, vocab: Vocab, seed: int = 0):
        self.rng, self.size = np.random.default_rng(seed), vocab.size

    def initial_state(self, rows, classes=None):
        return (np.zeros((1, rows, 1), np.float32),)

    def __call__(self, tokens, state):
        logits = self.rng.normal(0, 2, (tokens.size, self.size)).astype(np.float32)
        logits[:, EOS] += 2
        return logits, state

    def select(self, state, rows):
        return select_rows(state, rows)


def sample(constraint, vocab, prompts=("",), temperatures=(0.0, 1.0), n=150, max_len=40, seed=0):
    """The finished titles of a numpy loop over RandomStep, each with its prompt."""
    config = SampleConfig(temperatures, n, prompts, max_len, seed, (constraint, Temperature()))
    rows = np.arange(config.rows)
    batch = generate(RandomStep(vocab, seed), config, rows, config.prompt_ids(vocab))
    prompt = np.array(prompts)[config.row_prompts(rows)]
    return [(decode(vocab, batch.ids[r]), prompt[r]) for r in rows if batch.finished[r]], config


def test_every_finished_sample_obeys_the_constraint():
    pattern, banned = r"[A-Z][^()]*\(AP\)", ["ab", "b b", "PP"]
    titles, config = sample(Constraint.build(AP, regex=pattern, ban=banned, min_length=8), AP,
                            prompts=("Z", "", "A a"))
    assert len(titles) > 0.8 * config.rows and len({t for t, _ in titles}) > 50
    for title, prompt in titles:
        assert re.fullmatch(pattern, title) and not any(b in title for b in banned) and len(title) >= 8, title
        assert title.startswith(prompt)  # the prompt stays, and counts towards the constraint


def test_a_stop_string_ends_the_sample_right_after_it():
    titles = [t for t, _ in sample(Constraint.build(AP, stop=["(AP)", "Z"]), AP, n=300)[0]]
    ended = [t for t in titles if t.endswith(("(AP)", "Z"))]
    assert ended and all("(AP)" not in t[:-1] and "Z" not in t[:-1] for t in titles)


def test_the_engine_carries_the_automaton_state_as_the_numpy_loop_does(tmp_path):
    """The int64 [rows] state through the composed graph, its start and the dropping of ended rows."""
    step = OnnxStep(step_model(tmp_path / "m.onnx", bias={EOS: 1.0}), "cpu")
    vocab, pattern = step.spec.vocab, r"[a-e][a-j ]*[f-j]"
    for must_finish in (False, True):
        constraint = Constraint.build(vocab, regex=pattern, ban=["aa", "b c"], min_length=5, must_finish=must_finish)
        config = SampleConfig((0.0, 1.0), 40, ("a", "", "cb"), 30, 3, (constraint, Temperature()))
        rows = np.arange(config.rows)
        batch = Engine(step, config, sync_every=3, shrink=0.5).generate(rows)
        reference = generate(step, config, rows, config.prompt_ids(vocab))
        assert np.array_equal(batch.ids, reference.ids) and np.array_equal(batch.finished, reference.finished)
        assert batch.finished.all() == must_finish
    titles = [decode(vocab, r) for r in batch.ids[batch.finished]]
    assert len(titles) == config.rows
    assert all(re.fullmatch(pattern, t) and "aa" not in t and "b c" not in t and len(t) >= 5 for t in titles)


# --- refusals ----------------------------------------------------------------------------------------------------

def refusal(make):
    with pytest.raises(UsageError) as error:
        make()
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("make, words", [
    (lambda: Constraint.build(AP, regex="q+").check(40), ["regex 'q+'", "no title", "vocabulary"]),
    (lambda: Constraint.build(AP, regex="[ab]+", ban=["a", "b"]).check(40), ["regex and ban together", "no title"]),
    (lambda: Constraint.build(AP, regex="a{50}").check(40), ["shortest title", "50 characters", "max_len (40)"]),
    (lambda: Constraint.build(AP, regex="a{40}").check(40), ["40 characters", "at most 39", "at least 41"]),
    (lambda: Constraint.build(AP, min_length=41).check(40), ["min_length 41", "41 characters", "max_len"]),
    (lambda: Constraint.build(AP, regex=r"\bAP\b"), ["word boundary", "\\b", "spell it out"]),
    (lambda: Constraint.build(AP, regex=r"(?<=a)b"), ["cannot compile", "lookbehind"]),
    (lambda: Constraint.build(AP, regex="(a"), ["not a regular expression"]),
    (lambda: Constraint.build(AP, regex="A.*").check(40, ("A", "b")), ["prompts 'b'", "cannot begin", "character 1"]),
    (lambda: Constraint.build(AP, regex="A.*", ban=["PP"]).check(40, ("APP",)), ["'APP'", "character 3"]),
    (lambda: Constraint.build(AP, regex="A.{0,3}|a.{30}").check(30, ("ab",)), ["'ab'", "needs 29 more", "max_len"]),
    (lambda: Constraint.build(AP, regex="A.{0,3}|a.{29}").check(30, ("ab",)), ["'ab'", "needs 28 more", "at most 29"]),
    (lambda: Constraint.build(AP, ban=["a", ""]), ["ban", "non-empty"]),
    (lambda: Constraint.build(AP, stop="(AP)"), ["stop", "list"]),
    (lambda: Constraint.build(AP, min_length=-1), ["min_length", "integer"]),
], ids=["matches-nothing", "together-nothing", "too-long", "no-room-for-eos", "min-length", "word-boundary",
        "lookbehind", "syntax", "prompt", "prompt-ban", "prompt-too-long", "prompt-no-room-for-eos", "empty-ban",
        "stop-not-list", "negative-length"])
def test_what_cannot_be_compiled_or_satisfied_is_refused_in_one_line(make, words):
    message = refusal(make)
    for word in words:
        assert word.lower() in message.lower(), (word, message)


def test_too_many_states_are_refused(monkeypatch):
    monkeypatch.setattr(automata, "MAX_STATES", 50)
    assert "more than 50 automaton states" in refusal(lambda: Automaton.from_regex("(a|b)*a(a|b){6}", SMALL))
    words = ["".join(w) for w in itertools.product("abc", repeat=4)]  # a trie of 121 nodes
    assert "more than 50" in refusal(lambda: Automaton.from_banned(words, SMALL))
    cycles = [Automaton.from_regex(f"(.{{{k}}})*", SMALL) for k in (7, 8)]  # 8 and 9 states; 56 pairs
    assert "more than 50" in refusal(lambda: intersect(*cycles))


def test_prompt_state_is_where_the_prompt_leaves_the_automaton():
    a = Automaton.from_regex("Ab*", AP)
    assert prompt_state(a, ids(AP, "Abb")) == a.advance(0, ids(AP, "Abb")) != a.dead
    with pytest.raises(InvalidParameter):
        Automaton.min_length(True, AP)
