"""The character vocabulary: reserved ids first, then every character of the training texts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from toolkit.files import UsageError, write_text

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
BREAK = "\x1e"  # leads a training text that continues a finished title: it starts with <eos>, not <bos>
MAX_UNKNOWN = 0.01  # share of validation characters outside the vocabulary beyond which validation means little


@dataclass(frozen=True)
class Vocab:
    """Ids 0-3 are padding, begin-of-title, end-of-title and unknown; characters follow in code-point order."""

    chars: tuple[str, ...]

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocab:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        seen.discard(BREAK)
        return cls(tuple(sorted(seen)))

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    @cached_property
    def index(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars, start=len(SPECIALS))}

    @cached_property
    def table(self) -> np.ndarray:
        """Id -> character as a numpy array; specials map to '' so that decoding drops them."""
        return np.array([""] * len(SPECIALS) + list(self.chars), dtype="<U1")

    def encode(self, text: str) -> list[int]:
        """Characters to ids; a character outside the vocabulary becomes <unk>."""
        return [self.index.get(ch, UNK) for ch in text]

    def encode_known(self, text: str, what: str = "text") -> list[int]:
        """Characters to ids, refusing characters the model never saw (prompts must be exact)."""
        unknown = sorted({ch for ch in text if ch not in self.index})
        if unknown:
            raise UsageError(f"{what} {text!r} has characters outside the model's vocabulary: {unknown!r}")
        return self.encode(text)

    def check_known(self, texts: Iterable[str]) -> None:
        """Refuse validation texts whose characters the training texts mostly never show: each would be <unk>, so
        bits per character on them would look normal and mean little (the bundled split has 0.013%)."""
        total = unknown = 0
        for text in texts:
            text = text.removeprefix(BREAK)
            total += len(text)
            unknown += sum(ch not in self.index for ch in text)
        if total and unknown / total > MAX_UNKNOWN:
            raise UsageError(f"{unknown / total:.1%} of the validation texts' characters never occur in the training "
                             f"texts (at most {MAX_UNKNOWN:.0%} may): each would be <unk> and the validation figure "
                             "would mean little; pass {val_data} in the training texts' alphabet", "val_data")

    def decode_rows(self, ids: np.ndarray) -> np.ndarray:
        """Decode a [rows, steps] id matrix at once (rows must hold nothing but padding after <eos>)."""
        chars = self.table[ids]  # reserved ids are '', which numpy stores as NUL and strips at the end
        return np.ascontiguousarray(chars).view(f"<U{ids.shape[1]}").ravel()

    @cached_property
    def utf8(self) -> tuple[np.ndarray, np.ndarray]:
        """Id -> its character's UTF-8 bytes as a [size, widest] uint8 table, and each one's byte count (0 for the
        reserved ids)."""
        encoded = [b""] * len(SPECIALS) + [ch.encode("utf-8") for ch in self.chars]
        table = np.zeros((self.size, max(map(len, encoded))), np.uint8)
        for i, raw in enumerate(encoded):
            table[i, :len(raw)] = np.frombuffer(raw, np.uint8)
        return table, np.array([len(raw) for raw in encoded], np.uint8)

    def utf8_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode a [rows, steps] id matrix (nothing but padding after <eos>) to Arrow's layout of strings: int32
        offsets [rows + 1] into one buffer of UTF-8 bytes. No Python string is made, so a million rows take a
        fraction of a second; `decode_rows` gives the same texts as numpy strings."""
        table, sizes = self.utf8
        ids = np.ascontiguousarray(ids)
        if table.shape[1] == 1:  # every character is one byte: most corpora
            row_bytes = np.count_nonzero(ids, axis=1)
            data = table[:, 0][ids[ids != PAD]]
        else:
            per_id = sizes[ids]
            row_bytes = per_id.sum(axis=1, dtype=np.int64)
            data = table[ids][np.arange(table.shape[1]) < per_id[..., None]]
        offsets = np.zeros(ids.shape[0] + 1, np.int64)
        np.cumsum(row_bytes, out=offsets[1:])
        return offsets.astype(np.int32), data

    def to_json(self) -> str:
        return json.dumps({"specials": dict(zip(SPECIALS, range(len(SPECIALS)), strict=True)),
                           "chars": list(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("specials") != dict(zip(SPECIALS, range(len(SPECIALS)),
                                                                          strict=True)):
            raise ValueError("reserved ids differ from this toolkit's (<pad>=0, <bos>=1, <eos>=2, <unk>=3)")
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(
                set(chars)) < len(chars):
            raise ValueError("chars must be a list of distinct single characters")
        return cls(tuple(chars))

    def save(self, path: Path) -> None:
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Vocab:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
