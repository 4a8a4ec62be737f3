"""`pipeline`'s plan: every stage's settings, the device, the output folders and the data checked before the first
stage starts, and which stages a resumed job still has to run.

No TensorFlow here: the plan is made, and bad input refused, before any loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import rundir, sampledir
from toolkit.config import TrainConfig, resolve_config
from toolkit.data import TFDS_SCHEME, check_source
from toolkit.files import UsageError
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.processors import over_vocabulary
from toolkit.sampling.runtime import check_device
from toolkit.vocab import Vocab

RUNS, REPORTS = Path("runs"), Path("reports")
CONDITION = "auto"  # a new job learns the class where its data has labels (docs/benchmarks.md, issue 20)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str:
    """A run name is one plain path component: it names runs/NAME and reports/NAME, nothing outside them."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"{{name}} {name!r} must be a plain name (letters, digits, '.', '_', '-', starting with a "
                         "letter or digit), e.g. {name} agnews", "name")
    return name


@dataclass(frozen=True)
class Plan:
    run_dir: Path
    report_dir: Path
    config: TrainConfig
    train: bool  # False: a resumed job whose training has completed its epochs
    resume: bool  # continue the run in run_dir
    export: bool  # False: a resumed job whose model.onnx is newer than its best checkpoint
    # the training data (toolkit.data.Corpus) where the checks loaded it, so that training does not load it again
    corpus: Any = field(default=None, compare=False, repr=False)

    @property
    def model(self) -> Path:
        return self.run_dir / rundir.MODEL


def plan(name: str, overrides: dict[str, object], *, device: str, resume: bool = False, overwrite: bool = False,
         train_data: str | None = None, root: Path = Path(), classes: tuple[str, ...] = (),
         sampling: SampleConfig | None = None) -> Plan:
    """Check everything the four stages need, cheaply, and say which stages run. `overrides` are train's settings
    (None: not given); `classes` those sampling asks for; `sampling` the sampling config, whose title constraint and
    logit bias are checked against the vocabulary the model will have (the run's, or the one training builds from
    the data). Raises UsageError, naming the library's parameters (`out` is runs/NAME and reports/NAME)."""
    check_name(name)
    run_dir, report_dir = root / RUNS / name, root / REPORTS / name
    check_device(device, start=True)
    sampledir.check_out(report_dir)
    if not resume and overrides.get("condition") is None:
        overrides = overrides | {"condition": CONDITION}  # the main job's default: docs/benchmarks.md
    config = resolve_config(run_dir, overrides, resume=resume, overwrite=overwrite)
    done = resume and _epochs(run_dir) >= config.epochs
    for source in (config.data, config.val_data, train_data):
        if source is not None and not (done and source != train_data):
            check_source(source)
    corpus = None
    if config.condition == "class" or classes:
        corpus = _check_classes(config, classes)
    elif config.condition == "auto" and not config.data.startswith(TFDS_SCHEME):  # decided now, not after a load
        corpus = _corpus(config)
        config = config.replace(condition="class" if corpus.classes else "none")
    if sampling is not None and over_vocabulary(sampling.processors):
        vocab, corpus = _vocabulary(run_dir, config, corpus, resume)
        sampling.bind(vocab)
    model = rundir.export_target(run_dir, None)
    fresh = (resume and model.is_file() and (run_dir / rundir.CHECKPOINTS["best"]).is_file()
             and model.stat().st_mtime >= (run_dir / rundir.CHECKPOINTS["best"]).stat().st_mtime)
    return Plan(run_dir, report_dir, config, train=not done, resume=resume, export=not (done and fresh),
                corpus=corpus if not done else None)


def _check_classes(config: TrainConfig, classes: tuple[str, ...]):
    """A conditional job's data has classes, and sampling asks for classes the data has; returns the data."""
    if config.condition == "none":
        raise UsageError("{classes} needs a class-conditional model: leave out {condition} none", "classes",
                         "condition")
    corpus = _corpus(config)
    if not corpus.classes:
        asked = "condition" if config.condition == "class" else "classes"
        raise UsageError(f"{{{asked}}} needs labelled data, and {config.data} has no classes; leave out {{{asked}}} "
                         "or pass labelled data", asked)
    SampleConfig(classes=classes).class_ids(corpus.classes)
    return corpus


def _vocabulary(run_dir: Path, config: TrainConfig, corpus, resume: bool):
    """The vocabulary the job's model will have, and the data where it was loaded for it: a resumed run's own,
    else the one training builds from the training texts."""
    if resume:
        try:
            return Vocab.load(run_dir / rundir.VOCAB), corpus
        except (OSError, ValueError):  # no usable vocabulary saved: training will build it from the data
            pass
    corpus = corpus or _corpus(config)
    return Vocab.build(corpus.train), corpus


def _corpus(config: TrainConfig):
    from toolkit.data import load_corpus

    return load_corpus(config.data, config.field, config.val_fraction, config.val_data)


def _epochs(run_dir: Path) -> int:
    """Epochs the run has completed (the rows of its history)."""
    try:
        return max(len((run_dir / rundir.HISTORY).read_text(encoding="utf-8").splitlines()) - 1, 0)
    except OSError:
        return 0
