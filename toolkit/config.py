"""Everything a run needs, in one dataclass: rebuild, resume and export read it back from config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from toolkit.data import FIELDS
from toolkit.files import UsageError, write_text

CELLS = ("lstm", "gru")


@dataclass(frozen=True)
class TrainConfig:
    data: str = "ag_news:test"  # bundled, so a fresh install runs offline; tfds:ag_news_subset has 120,000 rows
    val_data: str | None = None
    field: str = "title"  # title | description | both
    val_fraction: float = 0.1  # held out by a stable hash when the source has no validation split
    seq_len: int = 256  # longer texts are cut into chunks of this many characters
    cell: str = "lstm"  # lstm | gru
    layers: int = 1
    units: int = 256
    embedding_dim: int = 64  # 0: one-hot input, as in the notebook
    dropout: float = 0.1
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3  # peak: cosine decay to a tenth over the epochs
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.field in FIELDS, f"--field must be one of {', '.join(FIELDS)}, not {self.field!r}"),
            (self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, not {self.cell!r}"),
            (0 < self.val_fraction < 1, f"--val-fraction must lie strictly between 0 and 1, not {self.val_fraction}"),
            (0 <= self.dropout < 1, f"--dropout must lie in [0, 1), not {self.dropout}"),
            (self.lr > 0, f"--lr must be positive, not {self.lr}"),
            (self.embedding_dim >= 0, f"--embedding-dim must be 0 (one-hot) or positive, not {self.embedding_dim}"),
        ]
        for name in ("seq_len", "layers", "units", "epochs", "batch_size"):
            value = getattr(self, name)
            checks.append((value > 0, f"--{name.replace('_', '-')} must be a positive integer, not {value}"))
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

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
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainConfig.from_dict(data["config"]), data
    except FileNotFoundError:
        raise UsageError(f"{run_dir} is not a training run (no config.json); pass a directory made by "
                         "`cli.py train`") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is corrupt ({e}); retrain or restore the run") from None


def resolve_config(out: Path, overrides: dict[str, object], *, resume: bool, overwrite: bool) -> TrainConfig:
    """The config of this run: defaults plus flags for a new run, the saved config for a resumed one.

    Checks the output directory before any data is read, so a refused run writes nothing.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        if not (out / "last.keras").is_file():
            raise UsageError(f"{out} has no checkpoint to resume; run without --resume to start a new run")
        saved, _ = load_run_config(out)
        for name, value in overrides.items():
            if name != "epochs" and getattr(saved, name) != value:
                raise UsageError(f"--{name.replace('_', '-')} {value} contradicts the run's config "
                                 f"({getattr(saved, name)}); drop the flag or train into a new --out")
        return saved.replace(**{k: v for k, v in overrides.items() if k == "epochs"})
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "config.json").exists():
            raise UsageError(f"--out {out} is not empty and holds no run; choose an empty or new directory")
        if not overwrite:
            raise UsageError(f"{out} already holds a run; pass --resume to continue it or --overwrite "
                             "to replace it")
    return TrainConfig(**overrides)
