"""`report`: metrics.csv and a self-contained report.html for a sample directory, or for several runs side by side.

Reading and scoring are eval.scoring's, the page eval.html's; here, the writes. Everything is computed before
anything is written, each file is written atomically, and a metrics.csv or report.html that charlm did not write is
never overwritten, so bad input leaves no half-written report and loses nothing of a user's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eval import html
from eval.scoring import ScoredRun, read, score_read, scored_size
from eval.stream import SUBSET
from toolkit import sampledir
from toolkit.files import UsageError, atomic_paths, clear_stale, exclusive


def score(sample_dir: Path, train_data: str | None = None, name: str | None = None, size: int | None = None,
          subset: int = SUBSET) -> ScoredRun:
    """Read a sample directory and compute its metrics table (groups scored at `size`, default the smallest)."""
    return score_read(read(sample_dir, train_data, name, subset), size)


def write_report(sample_dir: Path, train_data: str | None = None, size: int | None = None,
                 subset: int = SUBSET) -> tuple[Path, Path]:
    """Score one sample directory; writes metrics.csv and report.html into it and returns their paths.

    The directory is locked meanwhile, so a sample-batch writing it cannot leave a report of other samples."""
    sample_dir = Path(sample_dir)
    if not sample_dir.is_dir():
        raise UsageError(f"{sample_dir} is not a directory of samples; run `cli.py sample-batch --out {sample_dir}` "
                         "first")
    with exclusive(sample_dir):
        sampledir.check_report_dir(sample_dir)
        clear_stale(sample_dir)
        run = score(sample_dir, train_data, size=size, subset=subset)
        return _write(sample_dir, run.table, html.page([run], run.table))


def write_comparison(sample_dirs: Sequence[Path], out: Path, train_data: str | None = None,
                     size: int | None = None, subset: int = SUBSET) -> tuple[Path, Path]:
    """Score several sample directories at one common size; writes one metrics.csv (with a `run` column) and one
    report.html whose tables and plots put the runs side by side into `out`, and returns their paths."""
    dirs = [Path(d) for d in sample_dirs]
    if not dirs:
        raise UsageError("nothing to compare; pass one or more sample directories")
    out = sampledir.check_comparison_out(out, dirs)
    names = [d.resolve().name for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    reads = [read(d, train_data, name, subset) for d, name in zip(dirs, names, strict=True)]
    size = scored_size(reads, size)
    runs = [score_read(r, size) for r in reads]
    table = pd.concat([r.table.assign(run=r.name)[["run", *r.table.columns]] for r in runs], ignore_index=True)
    with exclusive(out):
        sampledir.check_comparison_out(out, dirs)  # again: it may have changed meanwhile
        clear_stale(out)
        return _write(out, table, html.page(runs, table))


def _write(out: Path, table: pd.DataFrame, page: str) -> tuple[Path, Path]:
    csv_path, html_path = out / sampledir.METRICS, out / sampledir.REPORT
    with atomic_paths(csv_path, html_path) as (csv_tmp, html_tmp):  # both written, then both renamed
        table.to_csv(csv_tmp, index=False)
        html_tmp.write_text(page, encoding="utf-8")
    return csv_path, html_path
