"""What a run's title constraint promised, judged independently of the automaton that enforced it: Python's `re`
for `--regex` (the whole title must match) and plain substring search for `--ban` (the strings, `--ban-file`'s
included, as run.json records them). The report's `regex_match_rate` and `banned_rate` columns."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Promises:
    """The pattern every finished title must fullmatch (None: none) and the strings no title may contain."""

    regex: str | None = None
    ban: tuple[str, ...] = ()

    @classmethod
    def of(cls, info: dict) -> Promises | None:
        """From run.json's sampling processors; None for a run without a pattern or banned strings."""
        processors = (info.get("sampling") or {}).get("processors") or []
        for p in processors:
            if isinstance(p, dict) and p.get("name") == "Constraint" and (p.get("regex") is not None or p.get("ban")):
                return cls(p.get("regex"), tuple(p.get("ban") or ()))
        return None

    def match(self, texts: list[str]) -> np.ndarray | None:
        """1 where a text fullmatches the pattern (None without one)."""
        if self.regex is None:
            return None
        pattern = re.compile(self.regex)
        return np.fromiter((pattern.fullmatch(t) is not None for t in texts), np.float64, len(texts))

    def banned(self, texts: list[str]) -> np.ndarray | None:
        """1 where a text contains a banned string (None without any)."""
        if not self.ban:
            return None
        return np.fromiter((any(b in t for b in self.ban) for t in texts), np.float64, len(texts))
