"""metrics.csv and a self-contained report.html for a sample directory, or for several runs side by side.

A sample directory holds everything a report needs: samples.csv (or samples.parquet), run.json, and
reference.json.xz (the training titles novelty is measured against, and the held-out titles of the reference
row). So a report works from any folder, offline, with neither TensorFlow nor the corpus; `train_data` replaces
the training titles (through toolkit.data, which imports TensorFlow only for a `tfds:` source).

Everything is computed before anything is written, and each file is written atomically, so bad input leaves no
half-written report. Every text that comes from the samples, the titles or run.json is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import lzma
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from eval import plots
from eval.metrics import BOOTSTRAP, CONFIDENCE, CURVE, METRICS, metrics_table
from eval.novelty import NEAR_COPY_CAP, NEAR_COPY_THRESHOLD, TrainingTitles
from toolkit.config import TrainConfig
from toolkit.data import load_corpus
from toolkit.files import UsageError, atomic_path, exclusive, write_text

SAMPLE_FILES = ("samples.csv", "samples.parquet")
REFERENCE_FILE = "reference.json.xz"
SAMPLE_COLUMNS = ("temperature", "text", "finished")  # the columns of samples.csv the metrics read (and logprob)
SHOWN = 8  # random samples shown per temperature
REPEATED = 5  # most repeated outputs shown per temperature
TABLES = {
    "Diversity": ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "duplicate_rate", "zipf"),
    "Novelty": ("novelty", "copy_rate", "near_copy_rate", "novel_3gram_rate"),
    "Distance to real titles": ("length_ks", "length_wasserstein", "js_char_bigrams", "js_words"),
    "Repetition, length, likelihood": ("repetition_rate", "seq_rep_2", "mean_length", "finished_rate", "bpc"),
}
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:90em;padding:0 1.2em;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}.tables{display:flex;flex-wrap:wrap;gap:0 2.5em}
.tables>div{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px}
th,td{padding:.25em .5em;border-bottom:1px solid #e4e4e4;vertical-align:top}th{font-weight:600;text-align:right}
td{text-align:right;font-variant-numeric:tabular-nums}td:first-child,th:first-child,.label{text-align:left}
td small{display:block;color:#777;font-size:11px;white-space:nowrap}tr.reference{background:#eef3fb}
.facts td,.samples td,.samples th{text-align:left}.samples td{font-family:ui-monospace,monospace;font-size:12.5px}
.samples td:last-child,.samples th:last-child{text-align:right;font-family:inherit}.near{color:#b00;font-weight:600}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:90%}dt{font-family:monospace}
dd{margin:0}.muted{color:#777}svg{max-width:100%;height:auto}figure{margin:.5em 0 1.5em}
figcaption{color:#555;font-size:90%;max-width:60em}"""


@dataclass(frozen=True)
class ScoredRun:
    """A sample directory read and scored: what both kinds of report are made of."""

    name: str
    directory: Path
    samples: pd.DataFrame
    info: dict  # run.json; empty when there is none
    train: TrainingTitles  # the training titles novelty was measured against
    val: list[str]  # the reference titles
    training: str  # where the training titles came from, for the reader
    table: pd.DataFrame  # metrics_table: one row per temperature, then the reference row


def read_samples(sample_dir: Path) -> pd.DataFrame:
    """samples.csv or samples.parquet (the newer, if both are there), checked; empty texts stay ''."""
    found = [sample_dir / name for name in SAMPLE_FILES if (sample_dir / name).is_file()]
    if not found:
        raise UsageError(f"no samples.csv or samples.parquet in {sample_dir}; run `cli.py sample-batch --out "
                         f"{sample_dir}` first")
    path = max(found, key=lambda p: p.stat().st_mtime)
    try:
        if path.suffix == ".csv":
            samples = pd.read_csv(path, keep_default_na=False, dtype={"prompt": str, "text": str})
        else:
            samples = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty; rerun `cli.py sample-batch`") from None
    except Exception as e:  # pandas and pyarrow raise many types for a damaged file
        raise UsageError(f"cannot read {path}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                         "; rerun `cli.py sample-batch`") from None
    missing = [c for c in SAMPLE_COLUMNS if c not in samples]
    if missing:
        raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}; pass samples written by "
                         "`cli.py sample-batch`")
    if samples.empty:
        raise UsageError(f"{path} holds no samples; rerun `cli.py sample-batch` with --n 1 or more")
    checked = {}
    for column in ("temperature", "logprob"):
        if column in samples:
            checked[column] = pd.to_numeric(samples[column], errors="coerce")
            if checked[column].isna().any():
                bad = samples[column][checked[column].isna()].iloc[0]
                raise UsageError(f"{path}: {column} {bad!r} is not a number; fix the file or rerun "
                                 "`cli.py sample-batch`")
    if not pd.api.types.is_bool_dtype(samples["finished"]):
        raise UsageError(f"{path}: column finished must hold only true or false; rerun `cli.py sample-batch`")
    return samples.assign(text=samples["text"].fillna("").astype(str), **checked)


def read_info(sample_dir: Path) -> dict:
    """run.json, or {} when there is none."""
    path = sample_dir / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path} ({e}); rerun `cli.py sample-batch`") from None
    if not isinstance(info, dict) or not isinstance(info.get("train_config", {}), dict):
        raise UsageError(f"{path} is not a run.json from `cli.py sample-batch`; rerun it")
    bpc = info.get("reference_bpc")
    if bpc is not None and (isinstance(bpc, bool) or not isinstance(bpc, int | float)):
        raise UsageError(f"{path}: reference_bpc {bpc!r} is not a number; rerun `cli.py sample-batch`")
    return info


def read_reference(sample_dir: Path) -> dict[str, list[str]] | None:
    """reference.json.xz: {"train_titles": [...], "val_titles": [...]}, or None when there is none."""
    path = sample_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with lzma.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path} ({e}); rerun `cli.py sample-batch`, or pass --train-data") from None
    keys = ("train_titles", "val_titles")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) and all(isinstance(t, str) for t in data[k])
                                             for k in keys):
        raise UsageError(f"{path} is not a reference file (lists of strings train_titles and val_titles); rerun "
                         "`cli.py sample-batch`")
    if not data["val_titles"]:
        raise UsageError(f"{path} holds no val_titles, so there is no reference to compare with; rerun "
                         "`cli.py sample-batch` on a model trained with held-out titles")
    return {k: data[k] for k in keys}


def titles(sample_dir: Path, info: dict, train_data: str | None) -> tuple[list[str], list[str], str]:
    """(training titles, reference titles, where the training titles came from).

    From reference.json.xz; `train_data` replaces the training titles (its training split, by run.json's
    val_fraction), and gives the reference titles too where the directory has no reference.json.xz.
    """
    reference = read_reference(sample_dir)
    if train_data is None:
        if reference is None:
            raise UsageError(f"{sample_dir} has no {REFERENCE_FILE}, so the training titles are unknown; pass "
                             "--train-data (the --data the model was trained on)")
        train = reference["train_titles"]
        return train, reference["val_titles"], f"{REFERENCE_FILE} ({len(train):,} titles)"
    config = TrainConfig.from_dict(info.get("train_config", {}))
    corpus = load_corpus(train_data, "title", config.val_fraction, None)
    val = reference["val_titles"] if reference else corpus.val
    return corpus.train_titles, val, f"{train_data} ({len(corpus.train_titles):,} titles)"


@dataclass(frozen=True)
class _Read:
    directory: Path
    samples: pd.DataFrame
    info: dict
    train: list[str]
    val: list[str]
    training: str

    @property
    def smallest(self) -> int:
        return min(len(self.val), int(self.samples.groupby("temperature").size().min()))


def _read(sample_dir: Path, train_data: str | None) -> _Read:
    sample_dir = Path(sample_dir)
    samples, info = read_samples(sample_dir), read_info(sample_dir)
    return _Read(sample_dir, samples, info, *titles(sample_dir, info, train_data))


def _score(read: _Read, name: str, size: int) -> ScoredRun:
    train = TrainingTitles(read.train)
    table = metrics_table(read.samples, train, read.val, size=size, reference_bpc=read.info.get("reference_bpc"))
    return ScoredRun(name, read.directory, read.samples, read.info, train, read.val, read.training, table)


def score(sample_dir: Path, train_data: str | None = None, name: str | None = None,
          size: int | None = None) -> ScoredRun:
    """Read a sample directory and compute its metrics table (groups scored at `size`, default the smallest)."""
    read = _read(sample_dir, train_data)
    return _score(read, name or Path(sample_dir).resolve().name, read.smallest if size is None else size)


def write_report(sample_dir: Path, train_data: str | None = None, size: int | None = None) -> tuple[Path, Path]:
    """Score one sample directory; writes metrics.csv and report.html into it and returns their paths.

    The directory is locked meanwhile, so a sample-batch writing it cannot leave a report of other samples."""
    sample_dir = Path(sample_dir)
    if not sample_dir.is_dir():
        raise UsageError(f"{sample_dir} is not a directory of samples; run `cli.py sample-batch --out {sample_dir}` "
                         "first")
    with exclusive(sample_dir):
        run = score(sample_dir, train_data, size=size)
        tables = {run.name: run.table}
        body = [_summary_html([run]), _figure(plots.frontier(tables), FRONTIER_CAPTION), _tables_html(run.table),
                _figure(plots.trends(tables), TRENDS_CAPTION),
                _figure(plots.lengths(run.samples, run.val), LENGTHS_CAPTION),
                _figure(plots.novelty_curve(tables), CURVE_CAPTION), _samples_html(run), _facts_html([run])]
        return _write(sample_dir, run.table, _page(f"Samples: {run.name}", body))


def write_comparison(sample_dirs: Sequence[Path], out: Path, train_data: str | None = None,
                     size: int | None = None) -> tuple[Path, Path]:
    """Score several sample directories at one common size; writes one metrics.csv (with a `run` column) and one
    report.html whose tables and plots put the runs side by side into `out`, and returns their paths."""
    dirs = [Path(d) for d in sample_dirs]
    if not dirs:
        raise UsageError("nothing to compare; pass one or more sample directories")
    if Path(out).resolve() in {d.resolve() for d in dirs}:
        raise UsageError(f"--out {out} is one of the compared directories and would overwrite its report; "
                         "choose another directory")
    names = [d.resolve().name for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    reads = [_read(d, train_data) for d in dirs]
    if size is None:  # one size for every group of every run: comparable figures
        size = min(r.smallest for r in reads)
    runs = [_score(r, name, size) for r, name in zip(reads, names, strict=True)]
    table = pd.concat([r.table.assign(run=r.name)[["run", *r.table.columns]] for r in runs], ignore_index=True)
    tables = {r.name: r.table for r in runs}
    body = [_summary_html(runs), _figure(plots.frontier(tables), FRONTIER_CAPTION), _tables_html(table),
            _figure(plots.trends(tables), TRENDS_CAPTION), _figure(plots.novelty_curve(tables), CURVE_CAPTION),
            _facts_html(runs)]
    with exclusive(out):
        return _write(Path(out), table, _page(f"Comparison: {', '.join(names)}", body))


def _write(out: Path, table: pd.DataFrame, page: str) -> tuple[Path, Path]:
    csv_path, html_path = out / "metrics.csv", out / "report.html"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    write_text(html_path, page)
    return csv_path, html_path


def _page(title: str, body: list[str]) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


FRONTIER_CAPTION = ("Each temperature's diversity (distinct-2) against its distance to real titles (Jensen-Shannon "
                    "divergence of word distributions), with 95% intervals; the star is the held-out real titles, "
                    "whose distance is that between two halves of them (what chance alone gives). The best "
                    "temperatures lie up and to the left, near the star.")
TRENDS_CAPTION = ("Metrics against temperature with 95% intervals. Dotted lines and bands: the reference (held-out "
                  "real titles) and its interval.")
LENGTHS_CAPTION = "Length in characters: each temperature's samples (line) against the reference titles (grey)."
CURVE_CAPTION = ("Share of each group's character n-grams that occur in no training title, for n = 4 to 20, with "
                 "95% bands: a model that copies long stretches of training titles stays low as n grows.")


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _summary_html(runs: list[ScoredRun]) -> str:
    table = runs[0].table
    size = int(table["size"].iloc[0])
    parts = [f"Every group is scored on disjoint random subsamples of <b>{size:,}</b> texts (the smallest group "
             "unless --size says otherwise), averaged where a group holds several; intervals are "
             f"{CONFIDENCE:.0%} half-sample bootstrap intervals ({BOOTSTRAP} replicates, seeded). Near-copies: "
             f"within normalised edit distance <b>{NEAR_COPY_THRESHOLD:g}</b> of a training title, searched in up "
             f"to {NEAR_COPY_CAP:,} texts a group."]
    for run in runs:
        prefix = f"{html.escape(run.name)}: " if len(runs) > 1 else ""
        parts.append(f"{prefix}novelty against {html.escape(run.training)}; reference: {len(run.val):,} held-out "
                     "titles.")
    return "<p>" + "<br>".join(parts) + "</p>"


def _cell(value: float, lo: float, hi: float) -> str:
    if math.isnan(value):
        return "<td>–</td>"
    interval = "" if math.isnan(lo) else f"<small>{_number(lo)} – {_number(hi)}</small>"
    return f"<td>{_number(value)}{interval}</td>"


def _number(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.1f}"
    return f"{x:.3g}" if abs(x) >= 0.001 or x == 0 else f"{x:.6f}".rstrip("0")


def _tables_html(table: pd.DataFrame) -> str:
    """One table per theme: each cell is the estimate over its interval; the reference rows set apart."""
    lead = ["run"] if "run" in table else []
    parts = []
    for title, names in TABLES.items():
        head = "".join(f"<th class=label>{h}</th>" for h in [*lead, "group"]) + "".join(
            f"<th>{h}</th>" for h in [*(["samples"] if not parts else []), *names])
        rows = []
        for _, row in table.iterrows():
            cells = [f"<td class=label>{html.escape(str(row[c]))}</td>" for c in [*lead, "group"]]
            if not parts:
                cells.append(f"<td>{int(row['samples']):,}</td>")
            cells += [_cell(row[n], row[f"{n}_lo"], row[f"{n}_hi"]) for n in names]
            rows.append(f"<tr{' class=reference' if row['group'] == 'reference' else ''}>{''.join(cells)}</tr>")
        parts.append(f"<div><h3>{title}</h3><table><tr>{head}</tr>{''.join(rows)}</table></div>")
    legend = "".join(f"<dt>{name}</dt><dd>{html.escape(text)}</dd>" for name, text in METRICS.items())
    curve = (f"<dt>{CURVE[min(CURVE)]} … {CURVE[max(CURVE)]}</dt><dd>share of the character n-grams (n = "
             f"{min(CURVE)} to {max(CURVE)}, with multiplicity) found in no training title (metrics.csv and the "
             "novelty curve)</dd>")
    return (f"<h2>Metrics</h2><div class=tables>{''.join(parts)}</div><details><summary>Definitions</summary><dl>"
            "<dt>reference</dt><dd>the held-out titles: real text, scored like a temperature</dd><dt>samples</dt>"
            f"<dd>texts in the group, duplicates included</dd>{legend}{curve}</dl></details>")


def _samples_html(run: ScoredRun) -> str:
    """Per temperature, a few random samples (seeded, so reports are stable) and the most repeated outputs, each
    beside its nearest training title."""
    parts = ["<h2>Samples and their nearest training titles</h2><p class=muted>Distance: normalised edit distance "
             f"to the nearest training title; red at or below {NEAR_COPY_THRESHOLD:g} (a near-copy).</p>"]
    for t, group in run.samples.groupby("temperature", sort=True):
        shown = group.sample(n=min(SHOWN, len(group)), random_state=0)
        counts = group["text"].value_counts().head(REPEATED)
        counts = counts[counts > 1]
        rows = [_sample_row(run.train, r.text, "" if r.finished else " <span class=muted>(unfinished)</span>")
                for r in shown.itertuples()]
        repeated = [_sample_row(run.train, text, "", f"{n} × ") for text, n in counts.items()]
        parts.append(f"<h3>T={t:g}</h3><table class=samples><tr><th>sample</th><th>nearest training title</th>"
                     f"<th>distance</th></tr>{''.join(rows)}</table><h4>Most repeated</h4>"
                     + (f"<table class=samples>{''.join(repeated)}</table>" if repeated
                        else "<p class=muted>No text repeats.</p>"))
    return "\n".join(parts)


def _sample_row(train: TrainingTitles, text: str, note: str, prefix: str = "") -> str:
    title, distance = train.nearest(text)
    near = " class=near" if distance <= NEAR_COPY_THRESHOLD else ""
    return (f"<tr><td>{prefix}{_text_html(text)}{note}</td><td>{_text_html(title)}</td>"
            f"<td{near}>{distance:.2f}</td></tr>")


def _text_html(text: str) -> str:
    return html.escape(text) if text else "<span class=muted>(empty)</span>"


def _fact(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6g}"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _facts_html(runs: list[ScoredRun]) -> str:
    """What run.json says (model, provider, speed, sampling and training settings), one column per run."""
    facts = {}
    for run in runs:
        info = {k: v for k, v in run.info.items() if k not in ("train_config", "sampling")}
        for key in ("sampling", "train_config"):
            if isinstance(run.info.get(key), dict):
                info |= {f"{key}.{k}": v for k, v in run.info[key].items()}
        facts[run.name] = {"directory": str(run.directory), "novelty against": run.training,
                           **{k: _fact(v) for k, v in info.items()}}
    table = pd.DataFrame(facts).fillna("")
    note = "" if all(r.info for r in runs) else '<p class="muted">No run.json: only the samples are known.</p>'
    return f'<h2>Runs</h2>{note}<div class="facts">{table.to_html(border=0)}</div>'
