"""`report`: metrics.csv, usefulness.csv and a self-contained report.html for a sample directory, or for several
runs side by side.

Reading and scoring are eval.scoring's, the usefulness figures eval.usefulness's, the page eval.html's; here, the
writes. Everything is computed before
anything is written, each file is written atomically, and a metrics.csv or report.html that charlm did not write is
never overwritten, so bad input leaves no half-written report and loses nothing of a user's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eval import html
from eval.scoring import ScoredRun, read, score_read, scored_size, usefulness_of
from eval.stream import SUBSET
from eval.usefulness import Usefulness
from toolkit import sampledir
from toolkit.files import UsageError, atomic_paths, clear_stale, exclusive


def _usefulness_table(useful: dict[str, Usefulness]) -> pd.DataFrame:
    """The runs' usefulness figures as one table, with a `run` column for a comparison."""
    if len(useful) == 1:
        return next(iter(useful.values())).table
    return pd.concat([u.table.assign(run=name)[["run", *u.table.columns]] for name, u in useful.items()],
                     ignore_index=True)


def _table(runs: list[ScoredRun], by_run: bool) -> pd.DataFrame:
    """The runs' tables as one: a `run` column for a comparison, a `class` column for samples with classes."""
    tables = []
    for r in runs:
        lead = {"run": r.read.source} if by_run else {}
        lead |= {"class": r.read.label} if r.read.label is not None else {}
        tables.append(r.table.assign(**lead)[[*lead, *r.table.columns]])
    return pd.concat(tables, ignore_index=True)


def write_report(sample_dir: Path | sampledir.Run, train_data: str | None = None, size: int | None = None,
                 subset: int = SUBSET, name: str | None = None) -> tuple[Path, Path]:
    """Score one run (a sample directory, or a sampledir.Run: the shards of one run); writes metrics.csv,
    usefulness.csv and report.html into its directory (a sharded run's: the directory holding its shards) and
    returns the paths of metrics.csv and report.html. `name` titles the report (default: the directory's name;
    sample-batch gives its --out's, the report being written in the directory that will replace it).

    The directory is locked meanwhile, so a sample-batch writing it cannot leave a report of other samples."""
    run = sampledir.Run.of(sample_dir)
    home = run.home
    with exclusive(home):
        sampledir.check_report_dir(home)
        clear_stale(home)
        reads = read(run, train_data, name, subset)
        size = scored_size(reads, size)
        runs = [score_read(r, size) for r in reads]
        useful = {runs[0].read.source: usefulness_of(reads)}
        table = _table(runs, by_run=False)
        return _write(home, table, _usefulness_table(useful), html.page(runs, table, useful))


def write_comparison(sample_dirs: Sequence[Path | sampledir.Run], out: Path, train_data: str | None = None,
                     size: int | None = None, subset: int = SUBSET) -> tuple[Path, Path]:
    """Score several runs (sample directories, or sampledir.Runs) at one common size; writes one metrics.csv and one
    usefulness.csv (with a `run` column) and one report.html whose tables and plots put the runs side by side into
    `out`, and returns the paths of metrics.csv and report.html."""
    given = [sampledir.Run.of(d) for d in sample_dirs]
    if not given:
        raise UsageError("nothing to compare; pass one or more sample directories")
    compared = [p for r in given for p in dict.fromkeys((r.home, *r.parts))]
    out = sampledir.check_comparison_out(out, compared)
    dirs = [r.home for r in given]
    names = [d.resolve().name for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    per_dir = {name: [r if r.label is None else dataclasses.replace(r, name=f"{name}/{r.label}")
                      for r in read(d, train_data, name, subset)] for d, name in zip(given, names, strict=True)}
    reads = [r for rs in per_dir.values() for r in rs]
    size = scored_size(reads, size)
    runs = [score_read(r, size) for r in reads]
    useful = {name: usefulness_of(rs) for name, rs in per_dir.items()}
    table = _table(runs, by_run=True)
    with exclusive(out):
        sampledir.check_comparison_out(out, compared)  # again: it may have changed meanwhile
        clear_stale(out)
        return _write(out, table, _usefulness_table(useful), html.page(runs, table, useful))


def _write(out: Path, table: pd.DataFrame, useful: pd.DataFrame, page: str) -> tuple[Path, Path]:
    csv_path, useful_path, html_path = out / sampledir.METRICS, out / sampledir.USEFULNESS, out / sampledir.REPORT
    with atomic_paths(csv_path, useful_path, html_path) as (csv_tmp, useful_tmp, html_tmp):  # all written, then
        table.to_csv(csv_tmp, index=False)  # all renamed
        useful.to_csv(useful_tmp, index=False)
        html_tmp.write_text(page, encoding="utf-8")
    return csv_path, html_path
