"""The step contract: what an exported step model's tensors are called, what state it carries per cell, and what
its metadata holds. The exporter writes it, the runtime reads it and the sampling head plugs into it, so the three
cannot drift apart.

A step is `(token [rows] int64, *state) -> (logits [rows, vocab] float32, *state_out)`; each state tensor is
`[layers, rows, units]` float32, and `state_out` names are the state names with `_out` appended. A class-conditional
step also takes `class` [rows] int64 (an index into its metadata's classes; their number is "no class").
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from toolkit import titles
from toolkit.files import UsageError
from toolkit.vocab import SPECIALS, Vocab

TOKEN, LOGITS, CLASS = "token", "logits", "class"
STATES = {"lstm": ("h", "c"), "gru": ("h",)}
STATE_ROW_AXIS = 1  # [layers, rows, units]

# metadata keys
VOCAB, CELL, LAYERS, UNITS, SPECIAL_IDS = "vocab", "cell", "layers", "units", "specials"
CONFIG, FINGERPRINT, CHECKPOINT, PRECISION, REFERENCE = "config", "data_fingerprint", "checkpoint", "precision", \
    "reference"
CLASSES = "classes"  # a conditional step's class names (JSON); absent: unconditional


def out(name: str) -> str:
    return f"{name}_out"


@dataclass(frozen=True)
class StepSpec:
    """What a step model says about itself: enough to run it, sample from it and report on it."""

    cell: str
    layers: int
    units: int
    vocab: Vocab
    config: dict  # the training config, for run.json
    fingerprint: str
    precision: str
    reference: bytes | None  # reference.json.xz: training and held-out titles, as the run wrote them
    classes: tuple[str, ...] = ()  # a conditional step's class names; () unconditional

    @property
    def states(self) -> tuple[str, ...]:
        return STATES[self.cell]

    @property
    def no_class(self) -> int:
        """The class id that says "no class" (the number of classes)."""
        return len(self.classes)

    def metadata(self, checkpoint: str) -> dict[str, str]:
        data = {VOCAB: self.vocab.to_json(), CELL: self.cell, LAYERS: str(self.layers), UNITS: str(self.units),
                SPECIAL_IDS: json.dumps(dict(zip(SPECIALS, range(len(SPECIALS)), strict=True))),
                CONFIG: json.dumps(self.config), FINGERPRINT: self.fingerprint, CHECKPOINT: checkpoint,
                PRECISION: self.precision}
        if self.reference is not None:
            data[REFERENCE] = base64.b64encode(self.reference).decode("ascii")
        if self.classes:
            data[CLASSES] = json.dumps(list(self.classes), ensure_ascii=False)
        return data

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: object) -> StepSpec:
        """Read a model's metadata; anything missing or malformed is a usage error naming the file."""
        if VOCAB not in meta:
            raise UsageError(f"{path} is not a charlm model (no vocabulary in its metadata); export one with "
                             "`python cli.py export-onnx RUN`")
        try:
            spec = cls(meta[CELL], int(meta[LAYERS]), int(meta[UNITS]), Vocab.from_json(meta[VOCAB]),
                       json.loads(meta.get(CONFIG, "{}")), meta.get(FINGERPRINT, ""), meta.get(PRECISION, "float32"),
                       base64.b64decode(meta[REFERENCE], validate=True) if REFERENCE in meta else None,
                       tuple(json.loads(meta[CLASSES])) if CLASSES in meta else ())
            if spec.cell not in STATES or spec.layers < 1 or spec.units < 1 or not isinstance(spec.config, dict):
                raise ValueError(f"cell {spec.cell!r}, {spec.layers} layers of {spec.units} units")
            if not all(isinstance(c, str) and c for c in spec.classes) or len(set(spec.classes)) < len(spec.classes):
                raise ValueError(f"classes {list(spec.classes)!r}")
        except (KeyError, ValueError, TypeError) as e:  # json and base64 errors are ValueErrors
            raise UsageError(f"{path} has damaged charlm metadata ({e}); export the model again") from None
        return spec


def read_reference(spec: StepSpec) -> titles.Titles:
    """The run's titles the model carries."""
    return titles.parse(spec.reference, "the model's reference titles are", "export the model again")
