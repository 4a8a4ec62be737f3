"""A sample directory read and scored: its samples streamed once in bounded chunks (toolkit.sampledir checks them
against run.json), its titles, and the metrics table of eval.metrics; what both kinds of report are made of.

Samples of a class-conditional model are read as one Read per class (in run.json's order), each with its own
reference row: that class's held-out titles ("any", no class: every held-out title), so that a class's samples are
compared with real titles of their class.

A directory holds everything a report needs: samples.csv (or samples.parquet), run.json, and reference.json.xz
(the training titles novelty is measured against, and the held-out titles of the reference row). So a report works
from any folder, offline, with neither TensorFlow nor the corpus; `train_data` replaces the training titles
(through toolkit.data, which imports TensorFlow only for a `tfds:` source).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eval.constraints import Promises
from eval.metrics import STREAMED, Group, normal_quantile, score
from eval.novelty import TrainingTitles
from eval.stream import SUBSET, GroupStream, Streams, reference_stream, text_hashes
from eval.usefulness import SECTIONS, Usefulness, usefulness
from toolkit import sampledir, titles
from toolkit.config import TrainConfig
from toolkit.data import load_corpus
from toolkit.files import UsageError

SHOWN = 8  # random samples shown per temperature


@dataclass(frozen=True)
class Read:
    """A sample directory streamed: per group its GroupStream (temperature order), and the titles."""

    name: str  # the run's name in tables and plots: its directory's, or its class
    source: str  # the directory's name, as the user knows it
    run: sampledir.Run  # where its samples are: one directory, or its shards'
    info: dict  # run.json; empty when there is none
    label: str | None  # the class of a conditional model's samples; None: samples without classes
    streams: list[GroupStream]
    reference: GroupStream
    train: TrainingTitles
    val: list[str]
    real: titles.Titles  # the training titles novelty is measured against and every held-out title, with labels
    training: str  # where the training titles came from, for the reader
    logprob: bool
    subset: int

    @property
    def directory(self) -> Path:
        """The run's home: its sample directory, or the directory of its shards."""
        return self.run.home

    @property
    def smallest(self) -> int:
        """The fewest texts a group (the reference included) offers the subset metrics."""
        return min(len(s.texts) for s in [*self.streams, self.reference])


@dataclass(frozen=True)
class ScoredRun:
    """A sample directory read and scored."""

    read: Read
    table: object  # pandas DataFrame: metrics_table's rows
    repeated: dict[float, list[tuple[str, int]]]  # per temperature: the most repeated texts over every sample
    shown: dict[float, list[tuple[str, bool]]]  # per temperature: a few random samples (text, finished)

    @property
    def name(self) -> str:
        return self.read.name


def training_titles(sample_dir: Path, info: dict, train_data: str | None) -> tuple[titles.Titles, str]:
    """(the training titles and the held-out titles, with their labels where known; where the training titles came
    from).

    From reference.json.xz; `train_data` replaces the training titles (its training split, by run.json's
    val_fraction), and gives the reference titles too where the directory has no reference.json.xz.
    """
    reference = sampledir.read_titles(sample_dir, info)
    if train_data is None:
        if reference is None:
            raise UsageError(f"{sample_dir} has no {titles.FILE}, so the training titles are unknown; pass "
                             "{train_data} (the data the model was trained on)", "train_data")
        return reference, f"{titles.FILE} ({len(reference.train):,} titles)"
    config = TrainConfig.from_dict(info.get("train_config", {}))
    corpus = load_corpus(train_data, "title", config.val_fraction, None)
    held_out = reference or titles.Titles([], corpus.val, corpus.classes, None, corpus.val_labels or None)
    labels = corpus.train_title_labels if corpus.classes and tuple(corpus.classes) == tuple(held_out.classes) else None
    real = titles.Titles(corpus.train_titles, held_out.val, held_out.classes if labels else (), labels,
                         held_out.val_labels if labels else None)
    return real, f"{train_data} ({len(corpus.train_titles):,} titles)"


def class_titles(held_out: titles.Titles, label: str) -> list[str]:
    """The held-out titles of one class (every one for ANY, or where the titles carry no labels)."""
    if label == sampledir.ANY or not held_out.classes or held_out.val_labels is None or \
            label not in held_out.classes:
        return held_out.val
    index = held_out.classes.index(label)
    return [t for t, i in zip(held_out.val, held_out.val_labels, strict=True) if i == index]


def read(sample_dir: Path | sampledir.Run, train_data: str | None = None, name: str | None = None,
         subset: int = SUBSET, seed: int = 0) -> list[Read]:
    """Stream a run's samples once (bounded memory, whatever their number): a sample directory's, or a
    sampledir.Run's (the shards of one run, one after another). One Read named `name` (default: the directory's
    name), or one per class, named by its class, for samples with classes."""
    run = sampledir.Run.of(sample_dir)
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
        raise UsageError(f"{{subset}} must be a positive number of texts, not {subset!r}", "subset")
    samples = run.samples()  # checks the columns before the titles are read
    held_out, training = training_titles(samples.directory, samples.info, train_data)
    train = TrainingTitles(held_out.train)
    logprob = "logprob" in samples.names
    promises = Promises.of(samples.info)
    by_class = sampledir.CLASS in samples.names
    streams: dict[str | None, Streams] = {}
    for batch in samples.chunks(("temperature", "text", "finished", "logprob", *([sampledir.CLASS] * by_class))):
        temperature = batch.column("temperature").to_numpy()
        texts = np.asarray(batch.column("text").to_pylist(), object)
        finished = batch.column("finished").to_numpy(zero_copy_only=False)
        logprobs = batch.column("logprob").to_numpy() if logprob else None
        labels = np.asarray(batch.column(sampledir.CLASS).to_pylist() if by_class else [None] * len(texts), object)
        for label in dict.fromkeys(labels.tolist()):  # in the file's order
            rows = labels == label
            streams.setdefault(label, Streams(train, subset, seed, promises=promises)).add(
                temperature[rows], texts[rows].tolist(), finished[rows], None if logprobs is None else logprobs[rows])
    base = name or run.home.resolve().name
    reads = []
    for label, stream in streams.items():
        val = held_out.val if label is None else class_titles(held_out, label)
        reads.append(Read(base if label is None else label, base, run, samples.info, label, stream.groups(),
                          reference_stream(val, train, subset, seed, promises), train, val, held_out, training, logprob,
                          subset))
    return reads


def usefulness_of(reads: list[Read], seed: int = 0, sections: Collection[str] = tuple(SECTIONS)) -> Usefulness:
    """The usefulness figures (eval.usefulness) of one directory's Reads: its groups' subsets, judged."""
    groups = {(r.label, s.temperature): s.texts for r in reads for s in r.streams}
    return usefulness(groups, {r.label: r.val for r in reads}, reads[0].real, seed, sections)


def score_read(run: Read, size: int | None = None, seed: int = 0) -> ScoredRun:
    """The metrics table of a streamed directory, and what the report shows beside it."""
    groups: list[Group] = [stream_group(s, run.logprob) for s in run.streams]
    reference = stream_group(run.reference, False, "reference")
    bpc = run.info.get("reference_bpc")
    if run.label is not None and run.label != sampledir.ANY:  # the class's titles given their class, where known
        bpc = (run.info.get("reference_bpc_by_class") or {}).get(run.label, math.nan)
    table = score(groups, reference, run.train, size=size, reference_bpc=bpc, seed=seed)
    rng = np.random.default_rng(seed)
    shown = {}
    for s in run.streams:
        pick = np.sort(rng.choice(len(s.texts), min(SHOWN, len(s.texts)), replace=False)) if s.texts else []
        shown[s.temperature] = [(s.texts[i], bool(s.finished[i])) for i in pick]
    return ScoredRun(run, table, _repeated(run), shown)


def _repeated(run: Read) -> dict[float, list[tuple[str, int]]]:
    """The most repeated texts of each group with their counts over every sample; a text the subset does not hold
    is found by a second pass over the samples (only then)."""
    wanted = {s.temperature: s.repeated() for s in run.streams}
    known: dict[int, str] = {}
    for s in run.streams:
        known |= dict(zip(map(int, text_hashes(s.texts)), s.texts, strict=True))
    missing = {h for pairs in wanted.values() for h, _ in pairs if h not in known}
    if missing:
        for batch in run.run.samples().chunks(("text",)):
            texts = batch.column("text").to_pylist()
            hashes = text_hashes(texts)
            for i in np.flatnonzero(np.isin(hashes, np.fromiter(missing, np.uint64))):
                known[int(hashes[i])] = texts[i]
    return {t: [(known[h], n) for h, n in pairs if h in known] for t, pairs in wanted.items()}


def length_histograms(run: Read) -> dict[float, np.ndarray]:
    """Per temperature, how many samples have each length (index = characters), over every sample."""
    return {s.temperature: s.lengths for s in run.streams}


def scored_size(reads: list[Read], size: int | None) -> int:
    """One size for every group of every run: comparable figures."""
    return min(r.smallest for r in reads) if size is None else size


def metrics_table(samples: pd.DataFrame, train: TrainingTitles | Sequence[str], val_titles: Sequence[str], *,
                  size: int | None = None, reference_bpc: float | None = None, seed: int = 0,
                  subset: int | None = None) -> pd.DataFrame:
    """One row per temperature (columns `temperature`, `text`, `finished`, optionally `logprob`, of samples.csv),
    sorted, then a `reference` row for the held-out titles, so a reader sees which temperature looks like real
    text. Each metric has `_lo` and `_hi` columns: its confidence interval. `size` is the common subsample size
    (default: the smallest group); `subset` the texts per group the subset metrics read (default eval.stream's)."""
    train = train if isinstance(train, TrainingTitles) else TrainingTitles(train)
    logprob = "logprob" in samples
    streams = Streams(train, subset or SUBSET, seed)
    streams.add(samples["temperature"].to_numpy(np.float64), samples["text"].astype(str).tolist(),
                samples["finished"].to_numpy(bool), samples["logprob"].to_numpy(np.float64) if logprob else None)
    groups = [stream_group(s, logprob) for s in streams.groups()]
    reference = stream_group(reference_stream(list(val_titles), train, subset or SUBSET, seed), False, "reference")
    return score(groups, reference, train, size=size, reference_bpc=reference_bpc, seed=seed)


def stream_group(stream, logprob: bool, label: str | None = None) -> Group:
    """A Group of an eval.stream.GroupStream: its subset, its number of samples and its streamed metrics."""
    z = normal_quantile()
    streamed = {m.name: stream.sums[m.name].interval(z, 1.0 if m.bounded else math.inf)
                for m in STREAMED if m.name in stream.sums}
    return Group(label or f"T={stream.temperature:g}", stream.temperature if label is None else math.nan,
                 stream.texts, stream.finished, stream.logprob if logprob else None, stream.rows, streamed)
