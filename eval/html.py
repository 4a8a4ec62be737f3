"""report.html: one self-contained page (tables, inline SVG figures, samples, the runs' facts) for one scored sample
directory or several side by side. Every text that comes from the samples, the titles or run.json is
HTML-escaped."""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd

from eval import plots
from eval.metrics import BOOT_SUBSAMPLES, BOOTSTRAP, CONFIDENCE, CURVE, METRICS, STREAMED, TABLES
from eval.novelty import NEAR_COPY_CAP, NEAR_COPY_THRESHOLD, TrainingTitles
from eval.scoring import ScoredRun, length_histograms
from eval.stream import EVERY
from eval.usefulness import AUGMENT, REAL, SECTIONS, Usefulness, recommend
from toolkit.sampledir import GENERATOR

MAX_DETAILED = 12  # temperatures shown one by one (length panels, samples); more are thinned evenly
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
figcaption{color:#555;font-size:90%;max-width:60em}p.recommend{font-size:110%;background:#f3f8ef;padding:.5em .8em;
border-left:4px solid #5a9a3a}"""


def page(runs: list[ScoredRun], table: pd.DataFrame, useful: dict[str, Usefulness] | None = None) -> str:
    """The whole report of one run (`table` its metrics) or of several side by side (`table` with a `run` column);
    a conditional model's samples are one run per class (`table` with a `class` column), shown like a comparison
    but with each class's samples. `useful`: per run (directory), its usefulness figures; the page opens with the
    recommended temperature."""
    tables = {r.name: r.table for r in runs}
    by_class = len({r.read.directory for r in runs}) == 1 and runs[0].read.label is not None
    useful = useful or {}
    body = [*([_recommendation_html(useful), _summary_html(runs), _usefulness_html(useful)] if useful else
              [_summary_html(runs)]),
            _figure(plots.frontier(tables), FRONTIER_CAPTION), _tables_html(table),
            _figure(plots.trends(tables), TRENDS_CAPTION)]
    if len(runs) == 1:
        run = runs[0]
        body.append(_figure(plots.lengths(length_histograms(run.read), run.read.val, MAX_DETAILED), LENGTHS_CAPTION))
    body.append(_figure(plots.novelty_curve(tables, MAX_DETAILED), CURVE_CAPTION))
    if len(runs) == 1 or by_class:
        body += [_samples_html(run, f"class {run.read.label}: " if by_class else "") for run in runs]
    body.append(_facts_html(runs[:1] if by_class else runs))
    title = f"Samples: {runs[0].name}" if len(runs) == 1 else \
        f"Samples: {runs[0].read.source}, by class" if by_class else \
        f"Comparison: {', '.join(r.name for r in runs)}"
    return _page(title, body)


def thin(values: list, most: int) -> list:
    """At most `most` of `values`, evenly spaced, the first and the last included."""
    if len(values) <= most:
        return list(values)
    return [values[i] for i in np.unique(np.linspace(0, len(values) - 1, most).round().astype(int))]


def _page(title: str, body: list[str]) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}<meta name="viewport" '
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
    streamed = ", ".join(m.name for m in STREAMED)
    subset = runs[0].read.subset
    scope = ("every text of each group" if subset >= EVERY else
             f"a seeded random <b>subset of at most {subset:,} texts a group</b> (the scored column; --subset)")
    parts = [f"Counted over <b>every sample</b>: {streamed} (with {CONFIDENCE:.0%} normal intervals) and the "
             f"samples column. Every other figure is scored on {scope}, split into disjoint "
             f"subsamples of <b>{size:,}</b> texts (the smallest group unless --size says otherwise) and averaged; "
             f"its intervals are {CONFIDENCE:.0%} half-sample bootstrap intervals ({BOOTSTRAP} replicates, seeded, on "
             f"{BOOT_SUBSAMPLES} subsamples, scaled to all of them). Near-copies: within normalised edit distance "
             f"<b>{NEAR_COPY_THRESHOLD:g}</b> of a training title, searched in up to {NEAR_COPY_CAP:,} texts a "
             "group."]
    for run in runs:
        prefix = f"{html.escape(run.name)}: " if len(runs) > 1 else ""
        parts.append(f"{prefix}novelty against {html.escape(run.read.training)}; reference: {len(run.read.val):,} "
                     "held-out titles.")
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
    lead = [c for c in ("run", "class") if c in table]
    parts = []
    for title, names in TABLES.items():
        head = "".join(f"<th class=label>{h}</th>" for h in [*lead, "group"]) + "".join(
            f"<th>{h}</th>" for h in [*(["samples"] if not parts else []), *names])
        rows = []
        for _, row in table.iterrows():
            cells = [f"<td class=label>{html.escape(str(row[c]))}</td>" for c in [*lead, "group"]]
            if not parts:
                cells.append(f"<td>{int(row['samples']):,}<small>{int(row['scored']):,} scored</small></td>")
            cells += [_cell(row[n], row[f"{n}_lo"], row[f"{n}_hi"]) for n in names]
            rows.append(f"<tr{' class=reference' if row['group'] == 'reference' else ''}>{''.join(cells)}</tr>")
        parts.append(f"<div><h3>{title}</h3><table><tr>{head}</tr>{''.join(rows)}</table></div>")
    legend = "".join(f"<dt>{name}</dt><dd>{html.escape(text)}</dd>" for name, text in METRICS.items())
    curve = (f"<dt>{CURVE[min(CURVE)]} … {CURVE[max(CURVE)]}</dt><dd>share of the character n-grams (n = "
             f"{min(CURVE)} to {max(CURVE)}, with multiplicity) found in no training title (metrics.csv and the "
             "novelty curve)</dd>")
    return (f"<h2>Metrics</h2><div class=tables>{''.join(parts)}</div><details><summary>Definitions</summary><dl>"
            "<dt>reference</dt><dd>the held-out titles: real text, scored like a temperature</dd><dt>samples</dt>"
            "<dd>texts in the group, duplicates included; under it, the texts of its subset the subset metrics "
            f"read</dd>{legend}{curve}</dl></details>")


def _samples_html(run: ScoredRun, heading: str = "") -> str:
    """Per temperature (at most MAX_DETAILED of them, evenly spaced), a few random samples (seeded, so reports are
    stable) and the most repeated outputs over every sample, each beside its nearest training title."""
    temperatures = sorted(run.shown)
    chosen = thin(temperatures, MAX_DETAILED)
    note = (f" Shown for {len(chosen)} of the {len(temperatures):,} temperatures, evenly spaced."
            if len(chosen) < len(temperatures) else "")
    parts = [f"<h2>{html.escape(heading)}Samples and their nearest training titles</h2><p class=muted>Distance: "
             "normalised edit distance "
             f"to the nearest training title; red at or below {NEAR_COPY_THRESHOLD:g} (a near-copy).{note}</p>"]
    train = run.read.train
    for t in chosen:
        rows = [_sample_row(train, text, "" if finished else " <span class=muted>(unfinished)</span>")
                for text, finished in run.shown[t]]
        repeated = [_sample_row(train, text, "", f"{n:,} × ") for text, n in run.repeated.get(t, [])]
        parts.append(f"<h3>T={t:g}</h3><table class=samples><tr><th>sample</th><th>nearest training title</th>"
                     f"<th>distance</th></tr>{''.join(rows)}</table><h4>Most repeated (over every sample)</h4>"
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
        info = {k: v for k, v in run.read.info.items() if k not in ("train_config", "sampling")}
        for key in ("sampling", "train_config"):
            if isinstance(run.read.info.get(key), dict):
                info |= {f"{key}.{k}": v for k, v in run.read.info[key].items()}
        facts[run.name] = {"directory": str(run.read.directory), "novelty against": run.read.training,
                           **{k: _fact(v) for k, v in info.items()}}
    table = pd.DataFrame(facts).fillna("")
    note = "" if all(r.read.info for r in runs) else '<p class="muted">No run.json: only the samples are known.</p>'
    return f'<h2>Runs</h2>{note}<div class="facts">{table.to_html(border=0)}</div>'


def recommendation(useful: dict[str, Usefulness]):
    """The recommended temperature of one run, or across runs (each group named `RUN T=...`)."""
    prefix = len(useful) > 1
    return recommend([c for name, u in useful.items() for c in u.recommend(f"{name} " if prefix else "")])


def _recommendation_html(useful: dict[str, Usefulness]) -> str:
    best = recommendation(useful)
    if best is None:
        why = "; ".join(s for u in useful.values() for s in u.skipped) or "no figure to rank the temperatures by"
        return f"<p class=recommend>No recommendation: {html.escape(why)}.</p>"
    basis = ("TSTR: a classifier trained on each temperature's titles, tested on real held-out titles"
             if best.figure.startswith("TSTR") else "MAUVE against real held-out titles")
    return f"<p class=recommend><b>{html.escape(best.sentence())}</b> <span class=muted>By {basis}.</span></p>"


def _group(temperature) -> str:
    return "real" if temperature == REAL else f"T={float(temperature):g}"


def _section_table(table: pd.DataFrame, section: str, figures: list[str], lead: list[str],
                   names: dict[str, str] | None = None) -> str:
    part = table[table["section"] == section]
    if part.empty:
        return ""
    keys = [*lead, "temperature"]
    head = "".join(f"<th class=label>{'group' if k == 'temperature' else k}</th>" for k in keys) + "".join(
        f"<th>{f}</th>" for f in figures) + "<th>texts</th>"
    rows = []
    for key, rows_of in part.groupby(keys, sort=False):
        cells = [f"<td class=label>{html.escape(_group(v) if k == 'temperature' else str(v))}</td>"
                 for k, v in zip(keys, key, strict=True)]
        if names and key[-1] in names:
            cells[-1] = f"<td class=label>{html.escape(names[key[-1]])}</td>"
        by_figure = {r.figure: r for r in rows_of.itertuples()}
        cells += [_cell(by_figure[f].value, by_figure[f].lo, by_figure[f].hi) if f in by_figure else "<td>–</td>"
                  for f in figures]
        cells.append(f"<td>{int(rows_of['texts'].max()):,}</td>")
        rows.append(f"<tr{' class=reference' if key[-1] == REAL else ''}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _fidelity_table(table: pd.DataFrame, lead: list[str]) -> str:
    """Class fidelity as one row per class (and run): the judge's accuracy on real titles, then each temperature."""
    part = table[table["section"] == "fidelity"]
    if part.empty:
        return ""
    temperatures = [t for t in dict.fromkeys(part["temperature"]) if t != REAL]
    head = "".join(f"<th class=label>{k}</th>" for k in [*lead, "class"]) + "<th>real titles</th>" + "".join(
        f"<th>T={float(t):g}</th>" for t in temperatures)
    rows = []
    for key, group in part.groupby([*lead, "class"], sort=False):
        cells = [f"<td class=label>{html.escape(str(v))}</td>" for v in key]
        by_t = {r.temperature: r for r in group.itertuples()}
        cells += [_cell(by_t[t].value, by_t[t].lo, by_t[t].hi) if t in by_t else "<td>–</td>"
                  for t in [REAL, *temperatures]]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _usefulness_html(useful: dict[str, Usefulness]) -> str:
    """Class fidelity and its confusion matrices, TSTR and augmentation, MAUVE and precision/recall, and what was
    skipped."""
    many = len(useful) > 1
    table = pd.concat([u.table.assign(run=name) for name, u in useful.items()], ignore_index=True)
    lead = ["run"] * many
    parts = ["<h2>Usefulness</h2>"]
    fidelity = _fidelity_table(table, lead)
    if fidelity:
        parts.append(f"<h3>Class fidelity</h3><p class=muted>{html.escape(SECTIONS['fidelity'])}, with "
                     f"{CONFIDENCE:.0%} Wilson intervals. The judge (TF-IDF over character 1-5-grams and logistic "
                     "regression, trained on the run's training titles) never sees the generator; its accuracy on "
                     "the real held-out titles of each class (the column `real titles`) is the ceiling.</p>"
                     + fidelity)
        matrices = []
        for name, use in useful.items():
            for t, matrix in use.confusion.items():
                head = "<th class=label>asked \\ judged</th>" + "".join(
                    f"<th>{html.escape(str(c))}</th>" for c in matrix.columns)
                body = "".join(f"<tr><td class=label>{html.escape(str(asked))}</td>"
                               + "".join(f"<td>{x:.0%}</td>" for x in row) + "</tr>"
                               for asked, row in zip(matrix.index, matrix.to_numpy(), strict=True))
                matrices.append(f"<div><h4>{html.escape(name + ' ' if many else '')}T={t:g}</h4><table><tr>{head}"
                                f"</tr>{body}</table></div>")
        parts.append("<p class=muted>Confusion: the share of each asked class's samples the judge assigns to each "
                     f"class.</p><div class=tables>{''.join(matrices)}</div>")
    tstr = _section_table(table, "tstr", ["accuracy", "macro_f1"], lead, {REAL: "real (TRTR)"})
    if tstr:
        parts.append(f"<h3>Train on synthetic, test on real</h3><p class=muted>{html.escape(SECTIONS['tstr'])}: "
                     "the same classifier as the judge, trained on an equal number of titles of each class (the "
                     "row `real (TRTR)`: as many real training titles), tested on every held-out title; "
                     f"{CONFIDENCE:.0%} bootstrap intervals over the test titles.</p>" + tstr)
        augment = _section_table(table, "augment", ["accuracy", "macro_f1"], lead,
                                 {REAL: f"{AUGMENT:.0%} of the real titles alone"})
        parts.append(f"<h4>Augmentation: {AUGMENT:.0%} of the real training titles, alone and with each "
                     "temperature's titles</h4>" + augment)
    mauve = _section_table(table, "mauve", ["mauve", "precision", "recall"], [*lead, "class"],
                           {REAL: "reference"})
    if mauve:
        parts.append("<h3>MAUVE and precision/recall</h3><p class=muted>On TF-IDF character 1-4-gram features "
                     "reduced by SVD (fitted on the training titles): MAUVE (Pillutla et al. 2021; 1 is "
                     "indistinguishable from real titles) and k-nearest-neighbour precision (the share of samples "
                     "that fall among real titles) and recall (the share of real titles the samples cover; "
                     "Kynkäänniemi et al. 2019), each against one half of the held-out titles; the row `reference` "
                     "compares the two halves: what chance gives at that size.</p>" + mauve)
    skipped = [f"{html.escape(name + ': ' if many else '')}{html.escape(s)}" for name, u in useful.items()
               for s in u.skipped]
    if skipped:
        parts.append("<p class=muted>Skipped: " + "; ".join(skipped) + ".</p>")
    return "\n".join(parts)
