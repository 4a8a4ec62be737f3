"""The report's figures as inline SVG: the frontier, metrics against temperature, lengths, the novelty curve.

Every figure takes metrics tables (eval.metrics.metrics_table) of one or more runs, draws each interval as an error
bar or a band, and marks the reference (held-out real titles).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from eval.metrics import CURVE, DISTANCES, TRENDS, UNBOUNDED

FRONTIER = ("js_words", "distinct_2")  # fidelity (x, lower is closer to real titles), diversity (y)
LINE_STYLES = ("-", "--", "-.", (0, (1, 1)))  # one per run in a comparison
MARKERS = ("o", "s", "^", "D")
MAX_LABELS = 15  # temperatures named beside their points on the frontier


def _evenly(n: int, most: int) -> np.ndarray:
    """Indices of at most `most` of n items, evenly spaced, the first and the last included."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int)) if n else np.zeros(0, int)


def svg(fig: Figure) -> str:
    """A figure as an inline <svg> element; text stays text (smaller, and searchable)."""
    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg"):]


def _plain(text: str) -> str:
    """A run's name as matplotlib text: a `$` would start mathtext (and a bad formula would raise)."""
    return text.replace("$", r"\$")


def _errors(rows: pd.DataFrame, name: str) -> np.ndarray:
    """Asymmetric error bars [2, rows] from the _lo and _hi columns (0 where there is no interval)."""
    est = rows[name].to_numpy(float)
    return np.nan_to_num(np.abs(np.stack([est - rows[f"{name}_lo"], rows[f"{name}_hi"] - est]).astype(float)))


def _split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return table[table["group"] != "reference"], table[table["group"] == "reference"].iloc[0]


def frontier(tables: dict[str, pd.DataFrame]) -> str:
    """Diversity (distinct-2) against distance to real titles (JS divergence of word distributions), one point per
    temperature with its intervals, the reference as a star: the best temperatures lie up and to the left."""
    x, y = FRONTIER
    fig = Figure(figsize=(7.2, 4.6), layout="constrained")
    ax = fig.subplots()
    for j, (run, table) in enumerate(tables.items()):
        temps, ref = _split(table)
        colour = f"C{j}"
        ax.errorbar(temps[x], temps[y], xerr=_errors(temps, x), yerr=_errors(temps, y), color=colour,
                    linestyle=LINE_STYLES[j % len(LINE_STYLES)], linewidth=1, marker=MARKERS[j % len(MARKERS)],
                    markersize=5, capsize=2,
                    label=f"{_plain(run)}: temperatures" if len(tables) > 1 else "temperatures")
        labelled = temps.iloc[_evenly(len(temps), MAX_LABELS)]
        for _, row in labelled.iterrows():
            ax.annotate(f"{row['temperature']:g}", (row[x], row[y]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8, color=colour)
        ax.errorbar([ref[x]], [ref[y]], xerr=_errors(ref.to_frame().T, x), yerr=_errors(ref.to_frame().T, y),
                    color=colour, marker="*", markersize=13, capsize=2, linestyle="none",
                    label=f"{_plain(run)}: real titles (reference)" if len(tables) > 1 else "real titles (reference)")
    ax.set(xlabel="← closer to real titles    Jensen-Shannon divergence of word distributions (bits)",
           ylabel="distinct-2    more diverse →", title="Which temperature? Diversity against distance to real titles")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return svg(fig)


def trends(tables: dict[str, pd.DataFrame]) -> str:
    """Metrics against temperature with their intervals: a colour per metric, a line style per run; the
    reference as a dotted line with its interval as a band."""
    panels = {title: names for title, names in TRENDS.items()
              if any(t[n].notna().any() for t in tables.values() for n in names)}
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.3 * cols, 3.3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (title, names) in zip(axes, panels.items(), strict=False):
        for j, table in enumerate(tables.values()):
            temps, ref = _split(table)
            for i, name in enumerate(names):
                ax.errorbar(temps["temperature"], temps[name], yerr=_errors(temps, name), color=f"C{i}",
                            linestyle=LINE_STYLES[j % len(LINE_STYLES)], marker="o", markersize=3.5, capsize=2,
                            label=name if j == 0 else None)
                if not math.isnan(ref[name]):
                    ax.axhline(ref[name], color=f"C{i}", linestyle=":", linewidth=1)
                    if not math.isnan(ref[f"{name}_lo"]):
                        ax.axhspan(ref[f"{name}_lo"], ref[f"{name}_hi"], color=f"C{i}", alpha=0.08, linewidth=0)
        ax.set(title=title, xlabel="temperature")
        if not any(name in UNBOUNDED or name in DISTANCES for name in names):
            ax.set_ylim(-0.02, 1.02)  # shares
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(tables) > 1:
        handles = [Line2D([], [], color="0.3", linestyle=LINE_STYLES[j % len(LINE_STYLES)],
                          label=_plain(run))
                   for j, run in enumerate(tables)]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(tables), 4))
    return svg(fig)


def lengths(histograms: dict[float, np.ndarray], reference: Sequence[str], most: int) -> str:
    """Histograms of length in characters over every sample: each temperature's beside the reference's, one panel
    each, for at most `most` temperatures (evenly spaced, named in the title when some are left out)."""
    temperatures = sorted(histograms)
    shown = [temperatures[i] for i in _evenly(len(temperatures), most)]
    real = np.array([len(t) for t in reference])
    top = max(int(real.max(initial=1)), max((h.size - 1 for h in histograms.values()), default=1))
    bins = np.arange(0, top + 5, max(1, math.ceil(top / 40)))
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.3 * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    for ax, t in zip(axes, shown, strict=False):
        counts = histograms[t]
        ax.hist(real, bins=bins, density=True, color="0.75", label="reference")
        ax.hist(np.arange(counts.size), bins=bins, weights=counts, density=True, histtype="step", linewidth=1.5,
                color="C0", label=f"T={t:g}")
        ax.set_title(f"T={t:g}", fontsize=9)
        ax.legend(fontsize="x-small")
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    left_out = f" ({len(shown)} of {len(temperatures):,} temperatures, evenly spaced)" if len(shown) < len(
        temperatures) else ""
    fig.supxlabel(f"length (characters){left_out}", fontsize=9)
    return svg(fig)


def novelty_curve(tables: dict[str, pd.DataFrame], most: int) -> str:
    """Share of character n-grams absent from the training titles against n, per temperature (at most `most` of
    them a run, evenly spaced), with bands."""
    fig = Figure(figsize=(7.2, 3.8), layout="constrained")
    ax = fig.subplots()
    orders = list(CURVE)
    for j, table in enumerate(tables.values()):
        temps = table[table["group"] != "reference"]
        temps = temps.iloc[_evenly(len(temps), most)]
        colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(len(temps), 1)))
        for colour, (_, row) in zip(colours, [*temps.iterrows()], strict=True):
            _band(ax, orders, row, colour, LINE_STYLES[j % len(LINE_STYLES)], row["group"] if j == 0 else None)
        ref = table[table["group"] == "reference"].iloc[0]
        _band(ax, orders, ref, "black", LINE_STYLES[j % len(LINE_STYLES)], "reference" if j == 0 else None)
    ax.set(xlabel="n (characters)", ylabel="share of n-grams in no training title", ylim=(-0.02, 1.02),
           title="Novelty curve: character n-grams absent from the training titles")
    ax.set_xticks(orders[::2])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    return svg(fig)


def _band(ax, orders: list[int], row: pd.Series, colour, style, label: str | None) -> None:
    names = [CURVE[n] for n in orders]
    ax.plot(orders, row[names].astype(float), color=colour, linestyle=style, marker="o", markersize=3, label=label)
    ax.fill_between(orders, row[[f"{n}_lo" for n in names]].astype(float),
                    row[[f"{n}_hi" for n in names]].astype(float), color=colour, alpha=0.15, linewidth=0)
