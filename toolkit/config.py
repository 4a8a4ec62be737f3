"""Everything a run needs, in one dataclass: rebuild, resume and export read it back from config.json."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from toolkit.data import FIELDS
from toolkit.files import UsageError, write_text
from toolkit.rundir import CONFIG, check_out

CELLS = ("lstm", "gru")
# What the model is told besides the text: nothing, each title's class, or (auto) the class where the data has labels,
# decided when training reads the data (the run's config.json records what was decided)
CONDITIONS = ("none", "class", "auto")
VIA = ("input", "state")  # how a class reaches the model: added to the first layer's input, or its initial state
# Inclusive bounds of the integer options, generous for any GPU: an 8,192-unit LSTM layer is already 1 GiB of
# recurrent weights (3 GiB with Adam's state). Past them sizes overflow TensorFlow's int32 shapes or any memory.
INT_LIMITS = {"seq_len": (1, 16_384), "layers": (1, 16), "units": (1, 8_192), "embedding_dim": (0, 8_192),
              "epochs": (1, 100_000), "batch_size": (1, 65_536), "seed": (0, 2**32 - 1)}  # seed: numpy's range
# name: (low, high, low excluded, high excluded, as the error says it). An Adam learning rate above 1 only diverges.
FLOAT_LIMITS = {"val_fraction": (0.0, 1.0, True, True, "(0, 1), both excluded"),
                "dropout": (0.0, 1.0, False, True, "[0, 1): 1 would drop everything"),
                "weight_drop": (0.0, 1.0, False, True, "[0, 1): 1 would drop everything"),
                "lr": (0.0, 1.0, True, False, "(0, 1]"),
                "label_dropout": (0.0, 1.0, False, True, "[0, 1): 1 would never show a class")}


@dataclass(frozen=True)
class TrainConfig:
    data: str = "ag_news:test"  # bundled, so a fresh install runs offline; tfds:ag_news_subset has 120,000 rows
    val_data: str | None = None
    field: str = "title"  # title | description | both
    val_fraction: float = 0.1  # held out by a stable hash when the source has no validation split
    seq_len: int = 256  # longer texts are cut into chunks of this many characters
    cell: str = "lstm"  # lstm | gru
    layers: int = 1
    units: int = 384
    embedding_dim: int = 64  # 0: one-hot input, as in the notebook
    tie: bool = False  # the logits through the input embedding (weight tying)
    dropout: float = 0.1
    weight_drop: float = 0.1  # DropConnect on each recurrent matrix, one mask a batch
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3  # peak: cosine decay to a tenth over the epochs
    seed: int = 0
    condition: str = "none"  # none | class: learn p(text | class), the data's labels | auto: class if labelled
    condition_via: str = "input"  # input | state (see VIA; docs/benchmarks.md says why input is the default)
    label_dropout: float = 0.1  # share of training sequences shown "no class", so the model samples without one

    def __post_init__(self) -> None:
        checks = [  # (holds, message, the parameters it names)
            (self.field in FIELDS, f"{{field}} must be one of {', '.join(FIELDS)}, not {self.field!r}", ("field",)),
            (self.cell in CELLS, f"{{cell}} must be one of {', '.join(CELLS)}, not {self.cell!r}", ("cell",)),
            (self.condition in CONDITIONS, f"{{condition}} must be one of {', '.join(CONDITIONS)}, not "
                                           f"{self.condition!r}", ("condition",)),
            (self.condition_via in VIA, f"{{condition_via}} must be one of {', '.join(VIA)}, not "
                                        f"{self.condition_via!r}", ("condition_via",)),
            (isinstance(self.data, str) and self.data != "", f"{{data}} must name a source, not {self.data!r}",
             ("data",)),
            (self.val_data is None or isinstance(self.val_data, str), f"{{val_data}} must be a path, not "
                                                                      f"{self.val_data!r}", ("val_data",)),
            (isinstance(self.tie, bool), f"{{tie}} must be true or false, not {self.tie!r}", ("tie",)),
            (not self.tie or self.embedding_dim != 0, "{tie} needs an embedding ({embedding_dim} above 0): one-hot "
                                                      "input has no vectors to share", ("tie", "embedding_dim")),
        ]
        for name, (low, high) in INT_LIMITS.items():
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
            checks.append((ok, f"{{{name}}} must be an integer from {low} to {high:,}, not {value!r}", (name,)))
        for name, (low, high, open_low, open_high, text) in FLOAT_LIMITS.items():
            value = getattr(self, name)
            ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                  and (low < value if open_low else low <= value) and (value < high if open_high else value <= high))
            checks.append((ok, f"{{{name}}} must lie in {text}, not {value!r}", (name,)))
        for ok, message, params in checks:
            if not ok:
                raise UsageError(message, *params)

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def save_run_config(path: Path, config: TrainConfig, **extra: object) -> None:
    """config.json: the training config plus facts about the run (vocabulary size, data fingerprint)."""
    write_text(path, json.dumps({"config": config.to_dict(), **extra}, indent=2))


def load_run_config(run_dir: Path) -> tuple[TrainConfig, dict]:
    """Read a run's config.json; a missing or broken one is a usage error naming the directory."""
    path = Path(run_dir) / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainConfig.from_dict(data["config"]), data
    except FileNotFoundError:
        raise UsageError(f"{run_dir} is not a training run (no {CONFIG}); pass a directory made by "
                         "`cli.py train`") from None
    except (json.JSONDecodeError, KeyError, TypeError, UsageError) as e:  # UsageError: a setting out of range
        raise UsageError(f"{path} is corrupt ({e}); retrain or restore the run") from None


def check_resume(saved: TrainConfig, wanted: dict[str, object]) -> None:
    """A resumed run keeps its config: any setting that differs from the saved one, except --epochs, is refused."""
    for name, value in wanted.items():
        if name != "epochs" and value is not None and getattr(saved, name) != value:
            raise UsageError(f"{{{name}}} {value} contradicts the run's config ({getattr(saved, name)}); drop "
                             "the flag or train into a new {out}", name, "out")


def resolve_config(out: Path, overrides: dict[str, object], *, resume: bool, overwrite: bool) -> TrainConfig:
    """The config of this run: defaults plus flags for a new run, the saved config for a resumed one.

    Runs `train`'s checks of the output directory and of the flags before any data is read, so a refused run
    fails fast and writes nothing.
    """
    out = check_out(out, resume=resume, overwrite=overwrite)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        saved, _ = load_run_config(out)
        check_resume(saved, overrides)
        return saved.replace(**{k: v for k, v in overrides.items() if k == "epochs"})
    return TrainConfig(**overrides)
