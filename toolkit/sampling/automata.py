"""Constraints on whole titles as character automata, and the logits processor that enforces them in the sampling
graph.

An `Automaton` is a deterministic finite automaton over a vocabulary's ids: `next` [states, vocab] int32 gives the
state after each id and `accepting` [states] bool says where a title may end. State 0 is the start (a row's state
starts at 0, as every processor state does) and the last state is the one absorbing, non-accepting DEAD state that
every disallowed move leads to: <pad>, <bos> and <unk> always, <eos> wherever the title may not end yet, and every
character after which no title the constraint allows can be completed. <eos> keeps an accepting state (so a finished
row stays where it was, with <eos> still allowed), and a move is allowed exactly where it does not lead to DEAD.
Every automaton this module makes is pruned (each state but DEAD reaches acceptance) and numbered in breadth-first
order from the start; the constructors and `intersect` also minimise, so one language has one table.

The constraints: a regular expression the whole title must match (`from_regex`, compiled with interegular, as
outlines does), strings a title must never contain (`from_banned`: Aho-Corasick over the characters), a minimum
length (`min_length`), stop strings after which only <eos> may follow (`stop`), and any of them at once
(`intersect`: the product automaton, minimised). The processor `Constraint` (toolkit.sampling.processors, where the
chain of processors lists it) applies one to a step's logits: one Gather of an additive 0/-inf table by each row's
state and an Add (with `must_finish`, of `need` compared with the places left), and one Gather of the flattened
`next` table for the state after the step, in numpy and as ONNX nodes that agree bit for bit. This module imports
nothing of the processors: they import it, when a Constraint is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from toolkit.files import InvalidParameter, UsageError
from toolkit.vocab import EOS, SPECIALS, Vocab

__all__ = ["MAX_STATES", "Automaton", "intersect", "prompt_state", "regex_fsm"]

NEG_INF = np.float32(-np.inf)

NEVER = np.iinfo(np.int32).max  # `need` of a disallowed move: more ids than any row may write
MAX_STATES = 100_000  # per automaton: its tables are [states, vocab] float32 and int32 (40 MB each at 100 ids)
FIRST = len(SPECIALS)  # the first character's id: ids below are <pad>, <bos>, <eos>, <unk>


# --- graph helpers over [states, characters] tables ------------------------------------------------------------

def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ranges [start, start + length) one after another."""
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(offsets, lengths) + np.repeat(starts, lengths)


def _columns(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct columns of a [states, characters] table, in the order they first occur, and each character's
    column among them: characters the automaton treats alike need one column of work."""
    first: dict[bytes, int] = {}
    column = np.array([first.setdefault(c.tobytes(), len(first)) for c in np.ascontiguousarray(chars.T)], np.int64)
    return chars[:, np.unique(column, return_index=True)[1]], column


def _distances(table: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """[states] int64: the fewest characters (the distinct columns `table`) from each state to acceptance (0 where
    accepting), -1 where there is no way: a breadth-first search backwards from the accepting states."""
    n, width = table.shape
    targets = np.sort(table, axis=1)
    distinct = np.ones(targets.shape, bool)
    distinct[:, 1:] = targets[:, 1:] != targets[:, :-1]  # each edge once
    target = targets[distinct]
    source = np.repeat(np.arange(n), distinct.sum(axis=1))[np.argsort(target, kind="stable")]  # grouped by target
    counts = np.bincount(target, minlength=n)
    starts = np.cumsum(counts) - counts
    distance = np.where(accepting, 0, -1).astype(np.int64)
    frontier, level = np.flatnonzero(accepting), 0
    while frontier.size:
        level += 1
        before = source[_ranges(starts[frontier], counts[frontier])]
        frontier = np.unique(before[distance[before] < 0])
        distance[frontier] = level
    return distance


def _coreachable(table: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """[states] bool: the states from which some characters (the distinct columns `table`) reach acceptance."""
    return _distances(table, accepting) >= 0


def _breadth_first(table: np.ndarray, start: int, usable: np.ndarray) -> np.ndarray:
    """The `usable` states reachable from `start` through `usable` states, in breadth-first order (characters in id
    order; `table`, the distinct columns in the order they first occur, gives the same order): the canonical
    numbering."""
    seen = np.zeros(table.shape[0], bool)
    seen[start] = True
    order, frontier = [np.array([start])], np.array([start])
    while frontier.size:
        reached = table[frontier].ravel()
        reached = reached[usable[reached] & ~seen[reached]]
        states, first = np.unique(reached, return_index=True)
        frontier = states[np.argsort(first)]
        seen[frontier] = True
        order.append(frontier)
    return np.concatenate(order)


def _canonical(chars: np.ndarray, accepting: np.ndarray, start: int, vocab_size: int) -> Automaton:
    """The automaton of a character table [states, characters] (any state numbering, any dead states): states that
    cannot reach acceptance merged into DEAD, unreachable ones dropped, the rest in breadth-first order, and the
    reserved ids' columns filled in."""
    table, column = _columns(chars)
    live = _coreachable(table, accepting)
    if not live[start]:
        return Automaton(np.zeros((1, vocab_size), np.int32), np.zeros(1, bool), canonical=True)  # DEAD alone
    order = _breadth_first(table, start, live)
    dead = order.size
    renumber = np.full(chars.shape[0], dead, np.int32)
    renumber[order] = np.arange(dead)
    out = np.full((dead + 1, vocab_size), dead, np.int32)
    out[:dead, FIRST:] = renumber[table[order]][:, column]
    final = np.zeros(dead + 1, bool)
    final[:dead] = accepting[order]
    out[:dead, EOS] = np.where(final[:dead], np.arange(dead), dead)
    return Automaton(out, final, canonical=True)


def _blocks(table: np.ndarray, accepting: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Moore's partition refinement: each state's block of the coarsest partition that separates accepting from
    other states and that every column maps block to block. A round splits blocks by a 64-bit hash of each state's
    block and its successors' (`weights` [columns + 1] uint64: one 1-D sort, not a sort of rows); a hash collision
    could only merge too much, so the result is checked to be such a partition, and computed exactly (sorting rows)
    should it not be."""
    if weights is None:
        weights = np.random.default_rng(0).integers(1, 2**63, table.shape[1] + 1, dtype=np.uint64) | np.uint64(1)
    for exact in (False, True):
        _, block = np.unique(accepting, return_inverse=True)
        count = int(block.max()) + 1
        for _ in range(table.shape[0] + 1):  # Moore needs fewer rounds than states; a colliding hash may not end
            signature = np.concatenate([block[:, None], block[table]], axis=1)
            if exact:
                refined = np.unique(signature, axis=0, return_inverse=True)[1].reshape(-1)
            else:
                refined = np.unique((signature.astype(np.uint64) * weights).sum(axis=1), return_inverse=True)[1]
            if refined.max() + 1 == count:
                break
            block, count = refined.reshape(-1), int(refined.max()) + 1
        member = np.unique(block, return_index=True)[1][block]  # the first state of each state's block
        if (block[table] == block[table[member]]).all() and (accepting == accepting[member]).all():
            return block
    raise AssertionError("partition refinement failed")  # unreachable: the exact round gives such a partition


def _too_many(what: str) -> UsageError:
    return UsageError(f"{what} needs more than {MAX_STATES:,} automaton states; simplify it")


@lru_cache(maxsize=16)
def regex_fsm(pattern: str):
    """interegular's automaton of the whole of `pattern` (a leading ^ and a trailing unescaped $ dropped: they are
    implied); what Python's re or interegular cannot read is refused in one line naming {regex}. Cached: a command
    checks a pattern before the model loads and compiles it again over the vocabulary."""
    import interegular

    if not isinstance(pattern, str):
        raise InvalidParameter("regex", "must be a regular expression", pattern)
    try:
        re.compile(pattern)
    except re.error as e:
        raise UsageError(f"{{regex}} {pattern!r} is not a regular expression ({e}); fix it", "regex") from None
    body = pattern[1:] if pattern.startswith("^") else pattern
    if body.endswith("$") and (len(body) - 1 - len(body[:-1].rstrip("\\"))) % 2 == 0:  # not an escaped $
        body = body[:-1]
    try:
        return interegular.parse_pattern(body).to_fsm()
    except interegular.Unsupported as e:
        if "\\b" in str(e) or "\\B" in str(e):
            raise UsageError(f"{{regex}} {pattern!r} uses a word boundary (\\b or \\B), which the title "
                             "automaton cannot compile (interegular has none); spell it out, e.g. "
                             "'.*\\bWar\\b.*' as '(.*[^A-Za-z0-9_])?War([^A-Za-z0-9_].*)?'", "regex") from None
        raise UsageError(f"{{regex}} {pattern!r} uses what the title automaton cannot compile ({e}); rewrite it "
                         "without word boundaries, backreferences, lookbehinds, or ^ and $ inside", "regex") \
            from None
    except Exception as e:  # interegular's parser raises its own and Python's errors on what it cannot read
        raise UsageError(f"{{regex}} {pattern!r} cannot be compiled to an automaton ({type(e).__name__}: "
                         f"{e}); simplify it", "regex") from None


# --- the automaton ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Automaton:
    """A DFA over a vocabulary's ids (see the module's docstring): state 0 starts, the last state is DEAD."""

    next: np.ndarray  # [states, vocab] int32: the state after each id
    accepting: np.ndarray  # [states] bool: a title may end here (<eos> is allowed)
    canonical: bool = field(default=False, repr=False)  # made by _canonical: pruned and numbered canonically

    def __post_init__(self) -> None:
        if self.next.ndim != 2 or self.next.dtype != np.int32 or self.accepting.shape != self.next.shape[:1] or \
                self.accepting.dtype != bool:
            raise ValueError("an automaton is next [states, vocab] int32 and accepting [states] bool")
        if (self.next[-1] != self.dead).any() or self.accepting[-1]:
            raise ValueError("the last state must be DEAD: absorbing and not accepting")

    @property
    def states(self) -> int:
        return self.next.shape[0]

    @property
    def dead(self) -> int:
        return self.next.shape[0] - 1

    @property
    def vocab_size(self) -> int:
        return self.next.shape[1]

    @cached_property
    def allowed(self) -> np.ndarray:
        """[states, vocab] bool: the ids a row in each state may draw (<eos> only where accepting; never a move
        to DEAD)."""
        return self.next != self.dead

    @cached_property
    def mask(self) -> np.ndarray:
        """[states, vocab] float32: 0 where allowed, -inf where not, to be added to the logits."""
        return np.where(self.allowed, np.float32(0), NEG_INF).astype(np.float32)

    @cached_property
    def distance(self) -> np.ndarray:
        """[states] int64: the fewest characters from each state to an accepting one (-1 from DEAD)."""
        return _distances(self.next[:, FIRST:], self.accepting)

    @cached_property
    def need(self) -> np.ndarray:
        """[states, vocab] int32: the ids a row must still write, from this step's on and its <eos> included, to
        end an allowed title after drawing each id: 1 for an allowed <eos>, 2 + the distance left after a
        character; NEVER for a disallowed move. A row that may write `left` more ids may draw an id where
        need <= left (`Constraint(must_finish=True)`)."""
        after = self.distance[self.next]
        need = np.where(after >= 0, after + 2, NEVER)
        need[:, EOS] = np.where(self.accepting, 1, NEVER)
        return np.where(self.allowed, need, NEVER).astype(np.int32)

    # constructors

    @classmethod
    def from_regex(cls, pattern: str, vocab: Vocab) -> Automaton:
        """Titles the whole of which `pattern` matches (as re.fullmatch; a leading ^ and a trailing $ are allowed).
        Characters the pattern needs that the vocabulary lacks are simply never reached."""
        if not isinstance(pattern, str):
            raise InvalidParameter("regex", "must be a regular expression", pattern)
        fsm = regex_fsm(pattern)
        if len(fsm.states) > MAX_STATES:
            raise _too_many(f"{{regex}} {pattern!r}")
        number = {s: i for i, s in enumerate(sorted(fsm.states))}
        dead = len(number)  # interegular's implicit "oblivion" state
        keys = max(fsm.alphabet.by_transition, default=-1) + 1  # column `keys`: a character with no transition
        by_key = np.full((dead + 1, keys + 1), dead, np.int32)
        for state, moves in fsm.map.items():
            for key, target in moves.items():
                by_key[number[state], key] = number[target]
        key_of = [fsm.alphabet[ch] for ch in vocab.chars]
        chars = by_key[:, [keys if k is None else k for k in key_of]]
        accepting = np.zeros(dead + 1, bool)
        accepting[[number[s] for s in fsm.finals]] = True
        return _canonical(chars, accepting, number[fsm.initial], vocab.size).minimise()

    @classmethod
    def from_banned(cls, strings: tuple[str, ...] | list[str], vocab: Vocab) -> Automaton:
        """Titles that contain none of `strings` (a string with a character outside the vocabulary cannot occur)."""
        table, hit = _aho_corasick(strings, vocab, "ban")
        dead = table.shape[0]
        chars = np.vstack([np.where(hit[table], dead, table), np.full((1, table.shape[1]), dead)]).astype(np.int32)
        return _canonical(chars, np.append(~hit, False), 0, vocab.size).minimise()

    @classmethod
    def stop(cls, strings: tuple[str, ...] | list[str], vocab: Vocab) -> Automaton:
        """Any title, but once it ends with one of `strings` only <eos> may follow: the sample ends there, the
        stop string kept."""
        table, hit = _aho_corasick(strings, vocab, "stop")
        dead = table.shape[0]
        chars = np.vstack([np.where(hit[:, None], dead, table), np.full((1, table.shape[1]), dead)]).astype(np.int32)
        return _canonical(chars, np.append(np.ones(dead, bool), False), 0, vocab.size).minimise()

    @classmethod
    def min_length(cls, n: int, vocab: Vocab) -> Automaton:
        """Titles of at least `n` characters (a prompt's included): <eos> is refused before."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_STATES - 2:
            raise InvalidParameter("min_length", f"must be an integer from 0 to {MAX_STATES - 2:,}", n)
        count = np.minimum(np.arange(n + 1) + 1, n)
        chars = np.repeat(count[:, None], len(vocab.chars), axis=1).astype(np.int32)
        return _canonical(chars, np.arange(n + 1) == n, 0, vocab.size)

    @classmethod
    def anything(cls, vocab: Vocab) -> Automaton:
        """Every title: no constraint."""
        return cls.min_length(0, vocab)

    # what it does

    def minimise(self) -> Automaton:
        """The minimal automaton of the same language (Moore's partition refinement over the distinct columns),
        pruned and numbered canonically."""
        pruned = self if self.canonical else _canonical(self.next[:, FIRST:], self.accepting, 0, self.vocab_size)
        table, _ = _columns(pruned.next[:, FIRST:])
        block = _blocks(table, pruned.accepting)
        first = np.unique(block, return_index=True)[1]  # one state of each block
        chars = block[pruned.next[first, FIRST:]]
        return _canonical(chars, pruned.accepting[first], int(block[0]), self.vocab_size)

    def advance(self, state: int, ids) -> int:
        """The state after `ids` from `state` (DEAD once an id is disallowed)."""
        for i in ids:
            state = int(self.next[state, int(i)])
        return state

    def accepts(self, ids) -> bool:
        """Whether the title of these character ids (no <eos>) is allowed."""
        return bool(self.accepting[self.advance(0, ids)])

    def example(self, state: int = 0) -> list[int] | None:
        """A shortest sequence of characters from `state` to acceptance (breadth first); None from DEAD."""
        if state == self.dead:
            return None
        parent = {state: None}
        frontier, width = np.array([state]), self.vocab_size - FIRST
        while not self.accepting[frontier].any():
            reached = self.next[frontier, FIRST:].ravel()
            states, first = np.unique(reached, return_index=True)
            new = np.array([s not in parent and s != self.dead for s in states.tolist()], bool)
            if not new.any():
                return None
            for s, f in zip(states[new].tolist(), first[new].tolist(), strict=True):
                parent[s] = (int(frontier[f // width]), FIRST + f % width)
            frontier = states[new]
        path, s = [], int(frontier[self.accepting[frontier]][0])
        while parent[s] is not None:
            s, i = parent[s]
            path.append(i)
        return path[::-1]

    def shortest_accepted(self, state: int = 0) -> int | None:
        """The fewest characters from `state` to an accepting state; None if there is none."""
        distance = int(self.distance[state])
        return None if distance < 0 else distance

    def check(self, max_len: int, what: str = "the title constraint", params: tuple[str, ...] = ()) -> None:
        """Refuse an automaton that allows no title, or none that ends within `max_len` ids (at most max_len - 1
        characters, then <eos>); `what` names it in the message, with `params` as UsageError's."""
        shortest = self.shortest_accepted()
        if shortest is None:
            raise UsageError(f"no title made of the model's characters satisfies {what} (a character it needs may be "
                             "missing from the vocabulary); loosen it", *params)
        if shortest >= max_len:
            raise UsageError(f"the shortest title that satisfies {what} has {shortest} characters, and a title that "
                             f"ends within {{max_len}} ({max_len}) has at most {max_len - 1}; raise {{max_len}} to at "
                             f"least {shortest + 1} or loosen it", "max_len", *params)


def _aho_corasick(strings, vocab: Vocab, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The Aho-Corasick automaton of `strings` over the vocabulary's characters: the full transition table
    [nodes, characters] of the trie with its failure links folded in (the textbook construction), and which nodes
    end one of the strings (themselves or through a failure link). Strings with characters outside the vocabulary
    are left out: they can never be emitted."""
    if isinstance(strings, str) or not all(isinstance(s, str) and s for s in strings):
        raise InvalidParameter(name, "must be a list of non-empty strings", strings)
    index = vocab.index
    children: list[dict[int, int]] = [{}]
    terminal = [False]
    for text in strings:
        if not all(ch in index for ch in text):
            continue
        node = 0
        for ch in text:
            c = index[ch] - FIRST
            if c not in children[node]:
                children[node][c] = len(children)
                children.append({})
                terminal.append(False)
            node = children[node][c]
        terminal[node] = True
        if len(children) > MAX_STATES:
            raise _too_many(f"{{{name}}}'s list")
    table = np.zeros((len(children), len(vocab.chars)), np.int32)
    fail = np.zeros(len(children), np.int64)
    hit = np.array(terminal)
    queue, head = [0], 0
    while head < len(queue):
        node = queue[head]
        head += 1
        if node:
            table[node] = table[fail[node]]
            hit[node] |= hit[fail[node]]
        for c, child in children[node].items():
            fail[child] = table[node, c] if node else 0  # before the child overwrites it: delta(fail(node), c)
            table[node, c] = child
            queue.append(child)
    return table, hit


def _product(a: Automaton, b: Automaton) -> Automaton:
    """The product automaton (both must allow each move; accepting where both accept), over the reachable pairs."""
    if a.vocab_size != b.vocab_size:
        raise ValueError(f"automata over different vocabularies ({a.vocab_size} and {b.vocab_size} ids)")
    ta, ia = _columns(a.next[:, FIRST:])
    tb, ib = _columns(b.next[:, FIRST:])
    joint, column = np.unique(np.stack([ia, ib], axis=1), axis=0, return_inverse=True)
    ta, tb, n = ta[:, joint[:, 0]].astype(np.int64), tb[:, joint[:, 1]].astype(np.int64), b.states
    dead = a.dead * n + b.dead
    # the pairs seen so far: a flag per pair where there are at most 2^26, else a sorted array
    flags = np.zeros(a.states * n, bool) if a.states * n <= 2**26 else None
    seen, frontier, codes, moves, count = np.array([0, dead]), np.array([0]), [np.array([0])], [], 2
    if flags is not None:
        flags[seen] = True
    while frontier.size:
        sa, sb = ta[frontier // n], tb[frontier % n]
        reached = np.where((sa == a.dead) | (sb == b.dead), dead, sa * n + sb)
        moves.append(reached)
        if flags is not None:
            frontier = np.unique(reached[~flags[reached]])
            flags[frontier] = True
        else:
            frontier = np.setdiff1d(np.unique(reached), seen, assume_unique=True)
            seen = np.union1d(seen, frontier)
        codes.append(frontier)
        count += frontier.size
        if count > MAX_STATES:
            raise _too_many("the title constraint")
    codes.append(np.array([dead]))
    moves.append(np.full((1, joint.shape[0]), dead))
    code, move = np.concatenate(codes), np.concatenate(moves)
    order = np.argsort(code)
    chars = order[np.searchsorted(code[order], move)][:, column.reshape(-1)]
    accepting = a.accepting[code // n] & b.accepting[code % n]
    return _canonical(chars, accepting, 0, a.vocab_size)


def intersect(*automata: Automaton, minimise: bool = True) -> Automaton:
    """The titles every automaton allows: their product, pruned and (unless `minimise` is False) minimised after
    each factor."""
    if not automata:
        raise ValueError("intersect needs at least one automaton")
    result = automata[0]
    for other in automata[1:]:
        result = _product(result, other)
        if minimise:
            result = result.minimise()
    return result.minimise() if minimise else result


def prompt_state(automaton: Automaton, ids, max_len: int | None = None, text: str | None = None,
                 what: str = "the title constraint", params: tuple[str, ...] = ()) -> int:
    """The state a prompt's ids lead to; a prompt the constraint cannot extend to an allowed title (within
    `max_len` characters, if given) is refused."""
    state, shown = 0, text if text is not None else list(ids)
    for i, token in enumerate(ids):
        state = int(automaton.next[state, int(token)])
        if state == automaton.dead:
            raise UsageError(f"{{prompts}} {shown!r} cannot begin a title that satisfies {what}: it breaks it at "
                             f"character {i + 1}; change the prompt or loosen the constraint", "prompts", *params)
    if max_len is not None:
        rest = automaton.shortest_accepted(state)
        if rest is not None and len(ids) + rest >= max_len:
            raise UsageError(f"{{prompts}} {shown!r} needs {rest} more characters to make a title that satisfies "
                             f"{what}, and one that ends within {{max_len}} ({max_len}) has at most {max_len - 1}; "
                             "raise {max_len} or change the prompt", "prompts", "max_len", *params)
    return state
