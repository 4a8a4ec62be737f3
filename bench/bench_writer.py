"""The writer's ceiling: how many rows per second one process turns into samples.parquet (or .csv), the work the
driver of a `--ray` run does for every row whatever the number of GPUs. Chunks of `--rows` rows shaped like the main
job's samples (titles of the lengths `--lengths` gives, drawn from a 90-character vocabulary, padded to 128 ids)
go through `sample_writer` as the engine's would, and the rate is set beside the same chunks' bytes, so that a
projection can compare it with the GPUs' output (docs/benchmarks.md, "Beyond one machine").

    python bench/bench_writer.py --chunks 40 --rows 65536
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.sampling.config import SampleConfig  # noqa: E402
from toolkit.sampling.tensors import Batch  # noqa: E402
from toolkit.sampling.writer import sample_writer  # noqa: E402
from toolkit.vocab import SPECIALS, Vocab  # noqa: E402

VOCAB = Vocab(tuple(chr(c) for c in range(32, 122)))


def chunk(rows: int, max_len: int, mean: float, rng: np.random.Generator) -> tuple[Batch, int]:
    """A chunk of finished titles of about `mean` characters (at most max_len - 1), padded as the engine's are."""
    lengths = np.clip(rng.normal(mean, mean / 3, rows).astype(np.int64), 1, max_len - 1)
    ids = rng.integers(len(SPECIALS), VOCAB.size, (rows, max_len)).astype(np.uint8)
    ids[np.arange(max_len) >= lengths[:, None]] = 0
    return Batch(ids, np.ones(rows, bool), rng.normal(-100, 10, rows).astype(np.float32)), int(lengths.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--rows", type=int, default=65_536, help="rows a chunk (the CUDA default --batch-size)")
    parser.add_argument("--lengths", type=float, default=60.0, help="mean title length, in characters")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    chunks = [chunk(args.rows, 128, args.lengths, rng) for _ in range(4)]
    total = args.chunks * args.rows
    config = SampleConfig((1.0,), total, max_len=128)
    with tempfile.TemporaryDirectory() as tmp, sample_writer(Path(tmp) / "warm.parquet", "parquet", config,
                                                              VOCAB) as write:
        write(np.arange(args.rows), chunks[0][0])  # pyarrow's imports, once a run, not counted
    for fmt in ("parquet", "csv"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"samples.{fmt}"
            characters, started = 0, time.perf_counter()
            with sample_writer(path, fmt, config, VOCAB) as write:
                for i in range(args.chunks):
                    batch, chars = chunks[i % len(chunks)]
                    write(np.arange(i * args.rows, (i + 1) * args.rows), batch)
                    characters += chars
            seconds = time.perf_counter() - started
            size = path.stat().st_size
        print(f"{fmt}: {total:,} rows in {seconds:.2f} s = {total / seconds / 1e6:.2f} M rows/s, "
              f"{characters / seconds / 1e6:.1f} M characters/s, {size / 2**20:.0f} MiB written "
              f"({size / total:.1f} bytes a row)", flush=True)


if __name__ == "__main__":
    main()
