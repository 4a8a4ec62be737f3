"""`sample-batch`: n samples at each temperature from an exported model, in bounded chunks, to samples.csv.

Needs numpy and onnxruntime only: no TensorFlow.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit.files import UsageError, atomic_path, write_text
from toolkit.runtime import OnnxStep, check_device
from toolkit.sampling import generate

COLUMNS = ("sample_id", "temperature", "prompt", "text", "length", "finished", "seed")


def parse_temperatures(text: str) -> list[float]:
    """'0.3,1.0,1.8' -> [0.3, 1.0, 1.8]; 0 means greedy."""
    try:
        temps = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--temps {text!r} is not a comma-separated list of numbers; e.g. --temps 0.3,1.0,1.8") \
            from None
    if not temps:
        raise UsageError("--temps is empty; give at least one temperature, e.g. --temps 1.0")
    if any(not math.isfinite(t) or t < 0 for t in temps):
        raise UsageError(f"--temps {text!r} has a negative or infinite temperature; use 0 (greedy) or more")
    return temps


def check_arguments(*, n: int, temps: Sequence[float], max_len: int = 128, batch_size: int | None = None,
                    top_k: int = 0, top_p: float = 1.0, device: str = "auto") -> None:
    """Refuse bad sampling arguments before any work (`pipeline` calls this before it trains)."""
    for name, value in (("--n", n), ("--max-len", max_len), ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be a positive integer, not {value}")
    if top_k < 0:
        raise UsageError(f"--top-k must be 0 (off) or positive, not {top_k}")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p must lie in (0, 1], not {top_p}")
    if not temps:
        raise UsageError("no temperatures given; e.g. --temps 0.3,1.0,1.8")
    check_device(device)


@dataclass(frozen=True)
class SampleRun:
    model: str
    provider: str
    rows: int
    characters: int
    seconds: float
    temperatures: list[float]
    n: int
    prompts: list[str]
    max_len: int
    top_k: int
    top_p: float
    seed: int
    batch_size: int

    @property
    def chars_per_second(self) -> float:
        return self.characters / self.seconds if self.seconds else 0.0


def sample_batch(model: Path, out: Path, *, n: int, temps: Sequence[float], prompts: Sequence[str] = (),
                 max_len: int = 128, batch_size: int | None = None, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 device: str = "auto", progress: Callable[[int, int], None] | None = None,
                 step: OnnxStep | None = None) -> SampleRun:
    """Write `out`/samples.csv and `out`/run.json; rows are temperature-major, prompts cycle within a temperature.

    Every row's draws depend only on (seed, sample_id), so any --batch-size gives the same samples. By default
    a chunk is 1,024 rows on CPU (its gates stay in cache) and 65,536 on CUDA (a GPU needs wide steps).
    `progress(rows_done, characters_done)` is called after each chunk.
    """
    check_arguments(n=n, temps=temps, max_len=max_len, batch_size=batch_size, top_k=top_k, top_p=top_p,
                    device=device)
    step = step or OnnxStep(model, device)
    batch_size = batch_size or (65_536 if step.on_gpu else 1024)
    prompts = list(prompts) or [""]
    prompt_ids = [step.vocab.encode_known(p, "prompt") for p in prompts]
    if max(map(len, prompt_ids)) >= max_len:
        raise UsageError(f"a prompt is as long as --max-len {max_len}; raise --max-len or shorten the prompt")
    total = n * len(temps)
    row_temps = np.repeat(np.asarray(temps, np.float64), n)  # float64: the CSV shows 0.3, not 0.30000001
    row_prompts = np.arange(total) % n % len(prompts)
    characters = 0
    started = time.perf_counter()
    with atomic_path(Path(out) / "samples.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for first in range(0, total, batch_size):
            rows = np.arange(first, min(first + batch_size, total))
            batch = generate(step, row_temps[rows], [prompt_ids[i] for i in row_prompts[rows]], max_len=max_len,
                             seed=seed, first_row=first, k=top_k, p=top_p)
            texts = step.vocab.decode_rows(batch.ids)
            lengths = np.char.str_len(texts)
            characters += int(lengths.sum())
            writer.writerows(zip(rows.tolist(), row_temps[rows].tolist(), (prompts[i] for i in row_prompts[rows]),
                                 texts.tolist(), lengths.tolist(), batch.finished.tolist(), [seed] * rows.size,
                                 strict=True))
            if progress:
                progress(int(rows[-1]) + 1, characters)
        seconds = time.perf_counter() - started
    run = SampleRun(str(model), step.provider, total, characters, seconds, [float(t) for t in temps], n, prompts,
                    max_len, top_k, top_p, seed, batch_size)
    write_text(Path(out) / "run.json", json.dumps({
        **asdict(run), "chars_per_second": run.chars_per_second, "train_config": step.config,
        "data_fingerprint": step.metadata.get("data_fingerprint", "")}, indent=2))
    return run
