"""Everything a sampling run needs, in one frozen dataclass: `sample_batch`, `generate`, `pipeline` and run.json
all take or record this one object. A new control touches its processor (with its entry in processors.CHAIN), its
test and one CLI option: nothing here. A control that names characters (the title constraint, the logit bias) is
built over the model's vocabulary by `SampleConfig.bind`, once the model is loaded and before anything is written."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.files import UsageError
from toolkit.sampledir import ANY, row_groups
from toolkit.sampling.draw import MAX_ROWS, MAX_STEPS
from toolkit.sampling.processors import (
    MIN_TEMPERATURE,
    InvalidParameter,
    MinP,
    Processor,
    Temperature,
    TopK,
    TopP,
    describe,
    from_knobs,
    guided,
)
from toolkit.sampling.processors import bind as bind_processors
from toolkit.vocab import Vocab

MAX_TEMPERATURES = 1000


@dataclass(frozen=True)
class SampleConfig:
    """n samples at each temperature (and each class, for a class-conditional model); rows are temperature-major,
    then class, and prompts cycle within a group (toolkit.sampledir.row_groups)."""

    temperatures: tuple[float, ...] = (0.3, 1.0, 1.8)
    n: int = 1000
    prompts: tuple[str, ...] = ("",)  # "" = no prompt
    max_len: int = 128  # characters per sample, prompt included
    seed: int = 0
    processors: tuple[Processor, ...] = (Temperature(),)  # in order; the reserved-id ban always comes first
    classes: tuple[str, ...] = ()  # the classes asked for, n rows each ("any": no class); () for no classes

    def __post_init__(self) -> None:
        temps = self.temperatures
        if not temps or len(temps) > MAX_TEMPERATURES:
            raise InvalidParameter("temperatures", f"must hold 1 to {MAX_TEMPERATURES} values", temps)
        for t in temps:
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not (
                    t == 0 or t >= MIN_TEMPERATURE):
                raise InvalidParameter("temperatures", f"must each be 0 (greedy) or a finite number of at least "
                                       f"{MIN_TEMPERATURE}", t)
        if not isinstance(self.classes, tuple) or not all(isinstance(c, str) and c for c in self.classes) or len(
                set(self.classes)) < len(self.classes):
            raise InvalidParameter("classes", "must be distinct class names", self.classes)
        for name, value, high in (("n", self.n, MAX_ROWS // len(temps) // self.groups),
                                  ("max_len", self.max_len, MAX_STEPS)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise InvalidParameter(name, f"must be an integer from 1 to {high:,}", value)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise InvalidParameter("seed", "must be an integer from 0 to 2^64 - 1", self.seed)
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise InvalidParameter("prompts", "must be one or more strings", self.prompts)
        long = [p for p in self.prompts if len(p) >= self.max_len]
        if long:
            raise InvalidParameter("prompts", f"must be shorter than max_len ({self.max_len})", long[0])
        if sum(isinstance(p, Temperature) for p in self.processors) != 1:
            raise InvalidParameter("processors", "must hold Temperature() exactly once", self.processors)
        kept = [p.state.name for p in self.processors if getattr(p, "state", None) is not None]
        if len(set(kept)) < len(kept):  # their states would share one tensor
            raise InvalidParameter("processors", "must hold each processor with a state once (one Constraint: "
                                   "combine its parts in it)", self.processors)
        filters = [i for i, p in enumerate(self.processors) if isinstance(p, Temperature | TopK | TopP | MinP)]
        if any(getattr(p, "before_filters", False) and i > filters[0] for i, p in enumerate(self.processors)):
            raise InvalidParameter("processors", "must put a Constraint before Temperature and the filters (which "
                                   "could leave a row only ids it disallows)", self.processors)

    @property
    def groups(self) -> int:
        """Groups of n rows per temperature: one per class asked for, else one."""
        return max(1, len(self.classes))

    @property
    def rows(self) -> int:
        return self.n * len(self.temperatures) * self.groups

    def _groups(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return row_groups(np.asarray(rows), self.n, self.groups, len(self.prompts))

    def row_temperatures(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.temperatures, np.float64)[self._groups(rows)[0]]

    def row_classes(self, rows: np.ndarray) -> np.ndarray:
        """Index into `classes` of each row (0 where there are none)."""
        return self._groups(rows)[1]

    def row_prompts(self, rows: np.ndarray) -> np.ndarray:
        """Index into `prompts` of each row."""
        return self._groups(rows)[2]

    def class_ids(self, names: tuple[str, ...]) -> np.ndarray:
        """The model's id of each class asked for, given the model's class names (`ANY`: their number, "no class");
        no classes asked for: "no class" alone."""
        for asked, name in ((self.classes, "classes"), (guided(self.processors), "guidance")):
            if asked and not names:
                raise UsageError(f"{{{name}}} needs a class-conditional model, and this one has no classes; leave "
                                 f"{{{name}}} out, or sample a model trained with {{condition}} class", name,
                                 "condition")
        unknown = [c for c in self.classes if c != ANY and c not in names]
        if unknown:
            raise InvalidParameter("classes", f"must name the model's classes ({', '.join(names)}) or {ANY}",
                                   unknown[0])
        ids = {name: i for i, name in enumerate(names)} | {ANY: len(names)}
        return np.array([ids[c] for c in self.classes] or [len(names)], np.int64)

    def bind(self, vocab: Vocab) -> SampleConfig:
        """This config over a model's vocabulary: the processors that name characters built on its characters
        (processors.bind), and each processor's `check` of this run passed: a constraint that no title within
        max_len satisfies, or that a prompt breaks, is refused in one line. Call it once the model is loaded, before
        anything is sampled or written."""
        bound = bind_processors(self.processors, vocab)
        config = self if bound == self.processors else dataclasses.replace(self, processors=bound)
        for p in config.processors:
            if hasattr(p, "check"):
                p.check(self.max_len, self.prompts)
        return config

    def prompt_ids(self, vocab: Vocab) -> list[list[int]]:
        """The prompts as ids; a character the model never saw is refused (prompts must be exact)."""
        return [vocab.encode_known(p, "prompt") for p in self.prompts]

    def to_dict(self) -> dict:
        return {"temperatures": list(self.temperatures), "n": self.n, "prompts": list(self.prompts),
                "max_len": self.max_len, "seed": self.seed, "processors": [describe(p) for p in self.processors],
                "classes": list(self.classes)}


def sampling_config(temperatures: tuple[float, ...] | list[float], n: int = 1000, prompts: tuple[str, ...] = (),
                    max_len: int = 128, seed: int = 0, classes: tuple[str, ...] = (), **knobs: object) -> SampleConfig:
    """The config a command line describes: `knobs` as processors.KNOBS names them (top_k, top_p, min_p,
    presence_penalty, frequency_penalty, regex, ban, min_length, stop, logit_bias, ...), each at its "off" value
    (0; 1 for top_p; None or empty for the constraint's and the bias's) leaving its control out; processors in
    processors.CHAIN's order. The constraint and the bias are checked here as far as they can be without a model
    (a pattern that cannot be compiled, an amount out of range), and built over its vocabulary by `bind`."""
    return SampleConfig(tuple(temperatures), n, tuple(prompts) or ("",), max_len, seed, from_knobs(**knobs),
                        tuple(classes))


def parse_classes(text: str | None) -> tuple[str, ...]:
    """'Sports,World' -> ('Sports', 'World'); None -> () (every class of a conditional model)."""
    if text is None:
        return ()
    names = tuple(c.strip() for c in text.split(","))
    if not all(names):
        raise UsageError(f"{{classes}} {text!r} is not a comma-separated list of class names; e.g. {{classes}} "
                         "Sports,World", "classes")
    return names


def parse_temperatures(text: str) -> tuple[float, ...]:
    """'0.3,1.0,1.8' -> (0.3, 1.0, 1.8); a part 'start:stop:step' is a sweep with both ends included."""
    temps: list[float] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            numbers = [float(x) for x in part.split(":")]
        except ValueError:
            raise UsageError(f"{{temperatures}} {text!r} is not a comma-separated list of numbers or start:stop:step "
                             "ranges; e.g. {temperatures} 0.3,1.0,1.8 or {temperatures} 0.2:2.0:0.1",
                             "temperatures") from None
        if len(numbers) == 1:
            temps += numbers
        elif len(numbers) == 3 and all(map(math.isfinite, numbers)) and numbers[2] > 0 and numbers[0] <= numbers[1]:
            start, stop, step = numbers
            span = (stop - start) / step  # inf or beyond any count when the step is tiny against the range
            if not span < MAX_TEMPERATURES:
                raise UsageError(f"{{temperatures}} {part} gives more than {MAX_TEMPERATURES:,} temperatures; at most "
                                 f"{MAX_TEMPERATURES} in all: take a larger step", "temperatures")
            count = math.floor(span + 1e-9) + 1
            if len(temps) + count > MAX_TEMPERATURES:
                raise UsageError(f"{{temperatures}} {part} gives {count:,} temperatures; at most {MAX_TEMPERATURES} in "
                                 "all", "temperatures")
            temps += [round(start + i * step, 10) for i in range(count)]
        else:
            raise UsageError(f"{{temperatures}} range {part!r} must be start:stop:step with start <= stop and step > 0",
                             "temperatures")
    if not temps:
        raise UsageError("{temperatures} is empty; give at least one temperature, e.g. {temperatures} 1.0",
                         "temperatures")
    return tuple(temps)


def parse_logit_bias(texts: tuple[str, ...] | list[str]) -> tuple[tuple[str, float], ...]:
    """['a=2.5', '==-1', ',=3'] -> (('a', 2.5), ('=', -1.0), (',', 3.0)): each CHAR=X split at its last '=', so
    that the character may be '=' (or ',': values are never split at commas)."""
    pairs = []
    for text in texts:
        char, equals, amount = text.rpartition("=")
        try:
            value = float(amount)
        except ValueError:
            value = None
        if not equals or not char or value is None:
            raise UsageError(f"{{logit_bias}} {text!r} is not CHAR=X (a character, '=', then a number from -100 to "
                             "100); e.g. {logit_bias} 'a=-5' or {logit_bias} '==2'", "logit_bias")
        pairs.append((char, value))
    return tuple(pairs)


def read_ban_file(path: str | Path) -> tuple[str, ...]:
    """The strings a ban file lists: one per line, UTF-8 (a byte-order mark allowed); line ends are not part of a
    string (spaces are), and empty lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{{ban_file}} {path} does not exist; pass a text file with one string to ban per line",
                         "ban_file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{{ban_file}} {path} is not UTF-8 text (byte {e.start:,} cannot be decoded); save it as "
                         "UTF-8", "ban_file") from None
    except OSError as e:
        raise UsageError(f"cannot read {{ban_file}} {path} ({e.strerror or e}); pass a readable text file",
                         "ban_file") from None
    strings = tuple(line.removesuffix("\r") for line in text.split("\n") if line.removesuffix("\r"))
    if not strings:
        raise UsageError(f"{{ban_file}} {path} lists no strings; write one string to ban per line", "ban_file")
    return strings
