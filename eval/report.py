"""metrics.csv and a self-contained report.html for a sample directory, or for several runs side by side.

Everything is computed before anything is written, and each file is written atomically, so bad input leaves no
half-written report. Every text that comes from the samples or run.json is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from eval.metrics import METRICS, metrics_table
from toolkit.config import TrainConfig
from toolkit.data import load_corpus
from toolkit.files import UsageError, atomic_path, write_text

SAMPLE_COLUMNS = ("temperature", "text", "finished")  # the columns of samples.csv the metrics read
SHOWN = 8  # random samples shown per temperature
REPEATED = 5  # most repeated outputs shown per temperature
PANELS = {
    "diversity": ("distinct_1", "distinct_2", "distinct_3", "self_bleu"),
    "novelty": ("novelty", "novel_3gram_rate"),
    "repetition": ("repetition_rate", "seq_rep_2", "duplicate_rate"),
}
REFERENCE_STYLE = "background:#eef3fb;font-weight:600"
LINE_STYLES = ("-", "--", "-.", (0, (1, 1)))  # one per run in a comparison; colours tell the metrics apart
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:92em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:12.5px}th,td{padding:.2em .45em;border-bottom:1px solid #ddd}
td{text-align:right}td:first-child,th:first-child,.facts td{text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;font-size:90%}dt{font-family:monospace}
dd{margin:0}.samples li{font-family:monospace;white-space:pre-wrap}.muted{color:#888}svg{max-width:100%;height:auto}"""


@dataclass(frozen=True)
class ScoredRun:
    """A sample directory read and scored: what both kinds of report are made of."""

    name: str
    directory: Path
    samples: pd.DataFrame
    info: dict  # run.json; empty when there is none
    training: str  # the training titles novelty was measured against, for the reader
    table: pd.DataFrame  # metrics_table: one row per temperature, then the reference row


def read_samples(sample_dir: Path) -> pd.DataFrame:
    """samples.csv, checked; empty prompts and texts stay '' (pandas would read them as NaN)."""
    path = sample_dir / "samples.csv"
    if not path.is_file():
        raise UsageError(f"no samples.csv in {sample_dir}; run `cli.py sample-batch --out {sample_dir}` first")
    try:
        samples = pd.read_csv(path, keep_default_na=False, dtype={"prompt": str, "text": str})
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty; rerun `cli.py sample-batch`") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise UsageError(f"cannot read {path}: {str(e).strip().splitlines()[0]}; rerun `cli.py sample-batch`") from None
    missing = [c for c in SAMPLE_COLUMNS if c not in samples]
    if missing:
        raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}; pass a samples.csv written by "
                         "`cli.py sample-batch`")
    if samples.empty:
        raise UsageError(f"{path} holds no samples; rerun `cli.py sample-batch` with --n 1 or more")
    temperature = pd.to_numeric(samples["temperature"], errors="coerce")
    if temperature.isna().any():
        bad = samples["temperature"][temperature.isna()].iloc[0]
        raise UsageError(f"{path}: temperature {bad!r} is not a number; fix the file or rerun `cli.py sample-batch`")
    if not pd.api.types.is_bool_dtype(samples["finished"]):
        raise UsageError(f"{path}: column finished must hold only True or False; rerun `cli.py sample-batch`")
    return samples.assign(temperature=temperature)


def read_info(sample_dir: Path) -> dict:
    """run.json, or {} when there is none: metrics need it only for the training titles."""
    path = sample_dir / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path} ({e}); rerun `cli.py sample-batch`") from None
    if not isinstance(info, dict) or not isinstance(info.get("train_config", {}), dict):
        raise UsageError(f"{path} is not a run.json from `cli.py sample-batch`; rerun it")
    return info


def score(sample_dir: Path, train_data: str | None = None, name: str | None = None) -> ScoredRun:
    """Read a sample directory and compute its metrics table.

    Training titles come from run.json's train_config (data, val_fraction, val_data); `train_data` replaces its
    data, keeping its val_fraction but not its val_data, which belonged to the replaced source.
    """
    sample_dir = Path(sample_dir)
    samples, info = read_samples(sample_dir), read_info(sample_dir)
    if train_data is None and "train_config" not in info:
        raise UsageError(f"{sample_dir} has no run.json with a train_config, so the training titles are unknown; "
                         "pass --train-data (the --data the model was trained on)")
    config = TrainConfig.from_dict(info.get("train_config", {}))
    source = train_data or config.data
    corpus = load_corpus(source, "title", config.val_fraction, None if train_data else config.val_data)
    table = metrics_table(samples, corpus.train_titles, corpus.val)
    return ScoredRun(name or sample_dir.resolve().name, sample_dir, samples, info,
                     f"{source} ({len(corpus.train_titles):,} titles)", table)


def write_report(sample_dir: Path, train_data: str | None = None) -> tuple[Path, Path]:
    """Score one sample directory; writes metrics.csv and report.html into it and returns their paths."""
    run = score(sample_dir, train_data)
    body = [_metrics_html(run.table), _plot_svg([run]), _samples_html(run.samples), _facts_html([run])]
    return _write(Path(sample_dir), run.table, _page(f"Samples: {run.name}", body))


def write_comparison(sample_dirs: Sequence[Path], out: Path, train_data: str | None = None) -> tuple[Path, Path]:
    """Score several sample directories; writes one metrics.csv (with a `run` column) and one report.html whose
    plots overlay the runs into `out`, and returns their paths."""
    dirs = [Path(d) for d in sample_dirs]
    if not dirs:
        raise UsageError("nothing to compare; pass one or more sample directories")
    if Path(out).resolve() in {d.resolve() for d in dirs}:
        raise UsageError(f"--out {out} is one of the compared directories and would overwrite its report; "
                         "choose another directory")
    names = [d.resolve().name for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    runs = [score(d, train_data, name) for d, name in zip(dirs, names, strict=True)]
    table = pd.concat([r.table.assign(run=r.name)[["run", *r.table.columns]] for r in runs], ignore_index=True)
    body = [_metrics_html(table), _plot_svg(runs), _facts_html(runs)]
    return _write(Path(out), table, _page(f"Comparison: {', '.join(names)}", body))


def _write(out: Path, table: pd.DataFrame, page: str) -> tuple[Path, Path]:
    csv_path, html_path = out / "metrics.csv", out / "report.html"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    write_text(html_path, page)
    return csv_path, html_path


def _page(title: str, body: list[str]) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


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
        info = {k: v for k, v in run.info.items() if k != "train_config"}
        info |= {f"train_config.{k}": v for k, v in run.info.get("train_config", {}).items()}
        facts[run.name] = {"directory": str(run.directory), "novelty against": run.training,
                           **{k: _fact(v) for k, v in info.items()}}
    table = pd.DataFrame(facts).fillna("")
    note = "" if all(r.info for r in runs) else '<p class="muted">No run.json: only the samples are known.</p>'
    return f'<h2>Runs</h2>{note}<div class="facts">{table.to_html(border=0)}</div>'


def _metrics_html(table: pd.DataFrame) -> str:
    """The metrics table (pandas Styler: escaped, three decimals, – where undefined, the reference row set apart)
    and the definitions."""
    styled = (table.drop(columns="temperature").style
              .format(precision=3, na_rep="–", escape="html", thousands=",")
              .hide(axis="index")
              .apply(lambda row: [REFERENCE_STYLE if row["group"] == "reference" else ""] * len(row), axis=1))
    legend = "".join(f"<dt>{name}</dt><dd>{html.escape(text)}</dd>" for name, text in METRICS.items())
    return (f"<h2>Metrics</h2>{styled.to_html()}<dl><dt>reference</dt><dd>the held-out validation titles: real "
            f"text, scored like a temperature</dd>{legend}</dl>")


def _plot_svg(runs: list[ScoredRun]) -> str:
    """Metrics against temperature as inline SVG: a colour per metric, a line style per run, and the reference
    values (validation titles) as dotted horizontal lines."""
    fig = Figure(figsize=(4.4 * len(PANELS), 3.8), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    for ax, (title, names) in zip(axes, PANELS.items(), strict=True):
        for j, run in enumerate(runs):
            by_temperature = run.table[run.table["group"] != "reference"]
            reference = run.table[run.table["group"] == "reference"].iloc[0]
            for i, name in enumerate(names):
                ax.plot(by_temperature["temperature"], by_temperature[name], color=f"C{i}",
                        linestyle=LINE_STYLES[j % len(LINE_STYLES)], marker="o", markersize=4,
                        label=name if j == 0 else None)
                if not math.isnan(reference[name]):
                    ax.axhline(reference[name], color=f"C{i}", linestyle=":", linewidth=1)
        ax.set(title=title, xlabel="temperature", ylim=(-0.02, 1.02))
        ax.legend(fontsize="small")
    if len(runs) > 1:
        handles = [Line2D([], [], color="0.3", linestyle=LINE_STYLES[j % len(LINE_STYLES)], label=run.name)
                   for j, run in enumerate(runs)]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(runs), 4))
    svg = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, and searchable
        fig.savefig(svg, format="svg", metadata={"Date": None})
    text = svg.getvalue()
    return ("<h2>Metrics against temperature</h2><p class=\"muted\">Dotted lines: the reference (validation "
            f"titles).</p>{text[text.index('<svg'):]}")


def _samples_html(samples: pd.DataFrame) -> str:
    """Per temperature, a few random samples (seeded, so reports are stable) and the most repeated outputs."""
    parts = ["<h2>Samples</h2>"]
    for t, group in samples.groupby("temperature", sort=True):
        shown = group.sample(n=min(SHOWN, len(group)), random_state=0)
        items = "".join(f"<li>{_text_html(r.text)}{'' if r.finished else ' <span class=muted>(unfinished)</span>'}"
                        f"</li>" for r in shown.itertuples())
        counts = group["text"].value_counts().head(REPEATED)
        counts = counts[counts > 1]
        repeated = "".join(f"<li>{n} × {_text_html(text)}</li>" for text, n in counts.items())
        parts.append(f"<h3>T={t:g}</h3><ul class=samples>{items}</ul><h4>Most repeated</h4>"
                     + (f"<ul class=samples>{repeated}</ul>" if repeated else "<p class=muted>No text repeats.</p>"))
    return "\n".join(parts)


def _text_html(text: str) -> str:
    return html.escape(text) if text else "<span class=muted>(empty)</span>"
