"""Command line: a thin typer layer over toolkit/, exporters/ and eval/ (parse, call, print).

Heavy imports (TensorFlow) happen inside the commands that need them: `sample-batch` and `report` run on
machines with onnxruntime alone.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape  # typer's own dependency

from toolkit.config import TrainConfig
from toolkit.files import UsageError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter; errors still raise

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train character-level title generators, export them to ONNX, sample in batches, "
                       "and score the samples.")

D = TrainConfig()  # the defaults, shown in --help
# The one table from the library's parameter names to flags, where a flag has another name than `--` + the name
# (a library message names its parameters; the user sees the flags of the command that ran).
FLAGS = {"temperatures": "--temps", "prompts": "--prompt", "fmt": "--format", "min_length": "--min-len"}
COMMAND_FLAGS = {"pipeline": {"out": "--name"}}  # pipeline's runs/NAME and reports/NAME are its `out`s


def flag(name: str, command: str | None = None) -> str:
    """The flag that sets the library's parameter `name` in `command`."""
    return COMMAND_FLAGS.get(command or "", {}).get(name) or FLAGS.get(name) or "--" + name.replace("_", "-")


@app.callback()
def _root() -> None:
    """Keep subcommands subcommands, even while the app has one."""


def _opt(help_text: str, default: object = None, metavar: str | None = None, *names: str) -> typer.Option:
    """An option whose parameter default is None (so a resumed run can tell a flag from a default) but whose
    --help shows the real default, escaped: typer reads help as rich markup, where `[default: x]` is a tag. `names`
    spell the flag out where typer's derived name differs between its versions (one letter: `--n`)."""
    return typer.Option(*names, help=f"{help_text} {escape(f'[default: {default}]')}" if default is not None else
                        help_text, show_default=False, metavar=metavar)


def _flag(help_text: str) -> typer.Option:
    """A --x/--no-x flag, shown without typer's `<bool>` type label."""
    return typer.Option(help=help_text, metavar="")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, history, config, vocabulary.",
                                      metavar="DIR")] = Path("runs/default"),
    data: Annotated[str | None, _opt("ag_news:test (bundled), tfds:NAME, an AG News .csv, or a .txt with one title "
                                     "per line (.gz/.xz too).", D.data, "SOURCE")] = None,
    val_data: Annotated[str | None, _opt("Explicit validation file (instead of the hash split).",
                                         metavar="FILE")] = None,
    field: Annotated[str | None, _opt("What to train on; validation is on held-out titles (descriptions for "
                                      "description).", D.field, "title|description|both")] = None,
    val_fraction: Annotated[float | None, _opt("Share of a single file held out for validation, in (0, 1).",
                                               D.val_fraction, "FRACTION")] = None,
    seq_len: Annotated[int | None, _opt("Longer texts are cut into chunks of this many characters.",
                                        D.seq_len, "N")] = None,
    cell: Annotated[str | None, _opt("Recurrent cell.", D.cell, "lstm|gru")] = None,
    layers: Annotated[int | None, _opt("Stacked recurrent layers.", D.layers, "N")] = None,
    units: Annotated[int | None, _opt("Units per recurrent layer.", D.units, "N")] = None,
    embedding_dim: Annotated[int | None, _opt("Embedding size; 0 for the notebook's one-hot input.",
                                              D.embedding_dim, "N")] = None,
    dropout: Annotated[float | None, _opt("Dropout after each recurrent layer, in [0, 1).", D.dropout,
                                          "RATE")] = None,
    tie: Annotated[bool | None, _opt("Tie the output layer to the input embedding (the logits through its "
                                     "transpose).", D.tie, "")] = None,
    weight_drop: Annotated[float | None, _opt("DropConnect on each recurrent matrix (one mask a batch), in [0, 1).",
                                              D.weight_drop, "RATE")] = None,
    epochs: Annotated[int | None, _opt("Epochs in all (a resumed run may raise it).", D.epochs, "N")] = None,
    batch_size: Annotated[int | None, _opt("Sequences per batch.", D.batch_size, "N")] = None,
    lr: Annotated[float | None, _opt("Peak Adam learning rate, in (0, 1]; a cosine takes it to a tenth.", D.lr,
                                     "RATE")] = None,
    seed: Annotated[int | None, _opt("Random seed, 0 to 2**32 - 1.", D.seed, "N")] = None,
    condition: Annotated[str | None, _opt("class: learn each title's class from the data's labels, so that "
                                          "`sample-batch --classes` can ask for one; auto: class where the data "
                                          "has labels.", D.condition, "none|class|auto")] = None,
    condition_via: Annotated[str | None, _opt("How the class reaches the model: added to every step's input (the "
                                              "one export supports) or made its initial state.", D.condition_via,
                                              "input|state")] = None,
    label_dropout: Annotated[float | None, _opt("Share of training sequences shown \"no class\" (so the model also "
                                                "samples without one), in [0, 1).", D.label_dropout, "RATE")] = None,
    resume: Annotated[bool, _flag("Continue the run in --out from its last completed epoch.")] = False,
    overwrite: Annotated[bool, _flag("Replace the run in --out once the new run has completed an "
                                                 "epoch (only a charlm run, and only one that holds nothing "
                                                 "else).")] = False,
) -> None:
    """Train a character model; writes last.keras, best.keras, history.csv, config.json, vocab.json,
    reference.json.xz."""
    flags = {k: v for k, v in locals().items() if k not in ("out", "resume", "overwrite")}
    from toolkit.config import resolve_config

    config = resolve_config(out, flags, resume=resume, overwrite=overwrite)  # before TensorFlow loads, so
    _train(out, config, resume=resume, overwrite=overwrite)  # bad input fails fast


def _train(out: Path, config: TrainConfig, *, resume: bool, overwrite: bool, again: str | None = None,
           corpus=None) -> None:
    """Train (the checks done) on `corpus` (default: config.data loaded); `again` is the command that continues
    after Ctrl-C."""
    from toolkit.data import TFDS_SCHEME, load_corpus

    if config.data.startswith(TFDS_SCHEME):  # TFDS loads TensorFlow: quietly, first
        _import_tensorflow()
    corpus = corpus or load_corpus(config.data, config.field, config.val_fraction, config.val_data)
    _import_tensorflow()
    from toolkit.train import Interrupted
    from toolkit.train import train as fit

    try:
        history = fit(config, out, resume=resume, overwrite=overwrite, log=typer.echo, corpus=corpus)
    except Interrupted as e:
        again = again or f"python cli.py train --out {out} --resume"
        typer.echo(f"interrupted: {e.epochs} completed epoch{'s' * (e.epochs > 1)} saved in {out}; continue with "
                   f"`{again}`" if e.epochs else
                   f"interrupted before the first epoch completed: nothing was written, {out} is as it was",
                   err=True)
        raise typer.Exit(130) from None
    if history:
        best = min(history, key=lambda row: row["val_bpc"])
        typer.echo(f"done: {len(history)} epochs in {out}; best validation {best['val_bpc']:.3f} bits per "
                   f"character (epoch {int(best['epoch'])})")


@app.command("export-onnx")
def export_onnx(
    run: Annotated[Path, typer.Argument(help="Run directory made by `train`.", metavar="RUN")],
    out: Annotated[Path | None, _opt("Output .onnx file (an existing file is replaced only if charlm exported it).",
                                     "RUN/model.onnx, or RUN/model.fp16.onnx with --fp16", "FILE")] = None,
    checkpoint: Annotated[str, _opt("best (lowest validation bits per character) or last.", "best",
                                    "best|last")] = "best",
    opset: Annotated[int, _opt("ONNX opset, 13 to 26.", 17, "N")] = 17,
    fp16: Annotated[bool, _flag("Half-precision weights for GPUs; float32 at the boundary.")] = False,
) -> None:
    """Export one step of the model to ONNX, verified against Keras; writes MODEL.onnx and MODEL.verify.json."""
    from exporters.onnx import check_arguments, export

    check_arguments(run, checkpoint, opset, out, fp16)  # before TensorFlow loads, so bad input fails fast
    _import_tensorflow()
    result = export(run, out, checkpoint=checkpoint, opset=opset, fp16=fp16)
    typer.echo(f"wrote {result.path}: max |logit difference| vs Keras {result.max_abs_diff:.2e} "
               f"(tolerance {result.tolerance:g})")


# The title constraint's options, shared by sample-batch and pipeline.
Regex = Annotated[str | None, _opt("Only titles the whole of which match this regular expression (Python's syntax; "
                                   "no word boundaries, backreferences or lookbehinds).", metavar="PATTERN")]
Ban = Annotated[list[str] | None, _opt("Never a title that contains this string (repeatable).", metavar="STRING")]
BanFile = Annotated[Path | None, _opt("More strings to ban, one per line (UTF-8).", metavar="FILE")]
Stop = Annotated[list[str] | None, _opt("End the sample right after this string, which it keeps (repeatable).",
                                        metavar="STRING")]
MinLen = Annotated[int, _opt("No end of title before N characters, prompt included; 0 is off.", 0, "N")]
MustFinish = Annotated[bool, _flag("Every sample ends within --max-len with a title the constraint allows: a character "
                                  "after which the shortest allowed ending would not fit is removed too (so a long "
                                  "title's last characters are forced).")]
LogitBias = Annotated[list[str] | None, _opt("Add X (-100 to 100) to the logit of the character CHAR, split at the "
                                             "last = (so '==2' biases '='); repeatable.", metavar="CHAR=X")]


@app.command("sample-batch")
def sample_batch(
    model: Annotated[Path, _opt("Exported .onnx file.", "runs/default/model.onnx", "FILE")] = Path(
        "runs/default/model.onnx"),
    n: Annotated[int, _opt("Samples per temperature (and class).", 1000, "N", "--n")] = 1000,
    temps: Annotated[str, _opt("Temperatures: a comma-separated list, or start:stop:step for a sweep (0 is greedy: "
                               "the likeliest character, drawn among ties).", "0.3,1.0,1.8", "LIST")] = "0.3,1.0,1.8",
    out: Annotated[Path, _opt("Directory for the samples, run.json and the reports: new, empty, or an earlier "
                              "sample directory (replaced whole).", "reports/default", "DIR")] = Path(
        "reports/default"),
    prompt: Annotated[list[str] | None, _opt("Start every sample with this text (repeatable: samples cycle through "
                                             "the prompts).", metavar="TEXT")] = None,
    max_len: Annotated[int, _opt("Longest sample, in characters, prompt included.", 128, "N")] = 128,
    batch_size: Annotated[int | None, _opt("Rows per chunk; bounds memory for any --n.",
                                           "1024 on CPU, 65536 on CUDA", "N")] = None,
    top_k: Annotated[int, _opt("Sample from the k likeliest characters only (ties with the k-th kept); 0 is off.", 0,
                               "K")] = 0,
    top_p: Annotated[float, _opt("Nucleus sampling: the likeliest characters until their probability reaches P, "
                                 "with every character tied with the last one kept; 1 is off.", 1.0, "P")] = 1.0,
    min_p: Annotated[float, _opt("Drop characters less likely than this times the likeliest; 0 is off.", 0.0,
                                 "P")] = 0.0,
    presence_penalty: Annotated[float, _opt("Subtract this from the logit of every character the sample already "
                                            "drew, -2 to 2.", 0.0, "X")] = 0.0,
    frequency_penalty: Annotated[float, _opt("Subtract this times the number of times the sample drew a character, "
                                             "-2 to 2.", 0.0, "X")] = 0.0,
    regex: Regex = None,
    ban: Ban = None,
    ban_file: BanFile = None,
    stop: Stop = None,
    min_len: MinLen = 0,
    must_finish: MustFinish = False,
    logit_bias: LogitBias = None,
    classes: Annotated[str | None, _opt("A class-conditional model's classes to sample, comma-separated, --n each "
                                        "per temperature (any: no class).", "every class of a conditional model",
                                        "LIST")] = None,
    guidance: Annotated[float, _opt("Classifier-free guidance of a conditional model: the logits without a class "
                                    "plus W times (with the class minus without), 0 to 10; 1 is off.", 1.0,
                                    "W")] = 1.0,
    seed: Annotated[int, _opt("Same seed, same samples, whatever --batch-size.", 0, "N")] = 0,
    device: Annotated[str, _opt("auto uses CUDA when it really works.", "auto", "auto|cuda|cpu")] = "auto",
    tf32: Annotated[bool, _flag("Allow TF32 matrix products on CUDA: faster, logits within ~1e-2 of CPU "
                                "instead of ~1e-5 (no effect on CPU).")] = False,
    fmt: Annotated[str, typer.Option("--format", help=f"Parquet for millions of rows. {escape('[default: csv]')}",
                                     show_default=False, metavar="csv|parquet")] = "csv",
    report: Annotated[bool, _flag("Also write metrics.csv and report.html.")] = True,
    train_data: Annotated[str | None, _opt("Training titles for novelty, instead of the run's reference.json.xz.",
                                           metavar="SOURCE")] = None,
    shard: Annotated[str | None, _opt("Sample only the I-th of N equal, contiguous parts of the run these options "
                                      "describe (1/4 to 4/4); `report` scores the shards' directories as one run. "
                                      "No report is written for a shard.", metavar="I/N")] = None,
    ray: Annotated[str | None, _opt("Sample on Ray actors: local (a Ray started here) or a cluster's address (auto: "
                                    "the one `ray start` runs here). Needs " + escape('pip install -e ".[ray]"') +
                                    "; same rows as without.", metavar="local|ADDRESS")] = None,
    workers: Annotated[int | None, _opt("Ray actors (one GPU each where the cluster has GPUs).",
                                        "the cluster's GPUs, else its CPUs", "N")] = None,
) -> None:
    """Sample N texts at each temperature, all in one batch, on onnxruntime; writes samples, run.json and reports."""
    from toolkit.data import check_source
    from toolkit.sampledir import Shard
    from toolkit.sampling.config import parse_classes, parse_temperatures, sampling_config

    config = sampling_config(parse_temperatures(temps), n, tuple(prompt or ()), max_len, seed,
                             parse_classes(classes), top_k=top_k,
                             top_p=top_p, min_p=min_p, presence_penalty=presence_penalty,
                             frequency_penalty=frequency_penalty, guidance=guidance,
                             **_constraint(regex, ban, ban_file, stop, min_len, must_finish, logit_bias))
    part = Shard.parse(shard) if shard is not None else None
    if train_data is not None:
        check_source(train_data)  # before sampling, not after
    _sample(model, out, config, device=device, batch_size=batch_size, tf32=tf32, fmt=fmt, shard=part, ray=ray,
            workers=workers, report=_report_into(out, train_data) if report and part is None else None)
    if part is not None:
        typer.echo(f"shard {part} of the run; once every shard is written, `python cli.py report DIR...` (their "
                   "directories, or the one directory holding them) scores them as one run")


def _constraint(regex: str | None, ban: list[str] | None, ban_file: Path | None, stop: list[str] | None,
                min_len: int, must_finish: bool, logit_bias: list[str] | None) -> dict:
    """The knobs of the title constraint and the logit bias (processors.Constraint, LogitBias) from their flags;
    the ban file is read now, before anything else."""
    from toolkit.sampling.config import parse_logit_bias, read_ban_file

    return dict(regex=regex, ban=tuple(ban or ()) + (read_ban_file(ban_file) if ban_file is not None else ()),
                stop=tuple(stop or ()), min_length=min_len, must_finish=must_finish,
                logit_bias=parse_logit_bias(logit_bias or ()))


def _report_into(out: Path, train_data: str | None, announce: str | None = None):
    """The report of a new sample directory, written into it before it replaces `out` (and titled by `out`)."""
    def write(directory: Path) -> None:
        from eval.report import write_report

        if announce:
            typer.echo(announce)
        write_report(directory, train_data, name=out.resolve().name)

    return write


def _sample(model: Path, out: Path, config, report=None, **options) -> None:
    from toolkit.sampling.batch import sample_batch as run_batch

    run = run_batch(model, out, config, progress=_progress_bar(), finish=report, **options)
    where = f"{run.provider} on {run.workers} Ray actors" if run.backend == "ray" else run.provider
    typer.echo(f"{where}: {run.rows:,} samples, {run.characters:,} characters in {run.seconds:.2f} s "
               f"({run.chars_per_second:,.0f} characters/s) -> {out / f'samples.{run.format}'}")
    if report:
        typer.echo(f"wrote {out / 'metrics.csv'} and {out / 'report.html'}")


@app.command()
def report(
    sample_dirs: Annotated[list[Path], typer.Argument(help="Directories written by sample-batch: each a run, a shard "
                                                            "(the shards of one run are scored as one), or a "
                                                            "directory holding one run's shards.", metavar="DIR...")],
    out: Annotated[Path | None, _opt("Where a comparison of several directories goes.", metavar="DIR")] = None,
    train_data: Annotated[str | None, _opt("Training titles for novelty, instead of the run's reference.json.xz.",
                                           metavar="SOURCE")] = None,
    size: Annotated[int | None, _opt("Texts per subsample: every group is scored at this size.", "the smallest group",
                                     "N")] = None,
    subset: Annotated[int | None, _opt("Texts per group (a seeded random subset) that the metrics not counted over "
                                       "every sample read; 0 reads them all.", "10000", "N")] = None,
) -> None:
    """Score samples into metrics.csv and report.html; several runs give a side-by-side comparison. Its cost is
    bounded whatever the number of samples: see --subset."""
    from eval.report import write_comparison, write_report
    from eval.stream import EVERY, SUBSET
    from toolkit.sampledir import runs

    if subset is not None and subset < 0:
        raise UsageError(f"{{subset}} must be 0 (every text) or a positive number of texts, not {subset}", "subset")
    subset = SUBSET if subset is None else subset or EVERY
    given = runs(sample_dirs)  # the shards of a run grouped into it, checked complete and disjoint
    if len(given) > 1 and out is None:
        raise UsageError(f"comparing {len(given)} runs needs {{out}} DIR for the comparison report (to score the "
                         "shards of one run as one, pass only that run's shards)", "out")
    paths = (write_report(given[0], train_data, size, subset) if out is None
             else write_comparison(given, out, train_data, size, subset))
    typer.echo("wrote " + " and ".join(map(str, paths)))


@app.command()
def pipeline(
    data: Annotated[str | None, _opt("Training data, as for `train --data`.", D.data, "SOURCE")] = None,
    name: Annotated[str, _opt("Run name: writes runs/NAME and reports/NAME.", "default", "NAME")] = "default",
    field: Annotated[str | None, _opt("What to train on (validation is on titles).", D.field,
                                      "title|description|both")] = None,
    epochs: Annotated[int | None, _opt("Training epochs.", D.epochs, "N")] = None,
    cell: Annotated[str | None, _opt("Recurrent cell.", D.cell, "lstm|gru")] = None,
    layers: Annotated[int | None, _opt("Stacked recurrent layers.", D.layers, "N")] = None,
    units: Annotated[int | None, _opt("Units per recurrent layer.", D.units, "N")] = None,
    embedding_dim: Annotated[int | None, _opt("Embedding size; 0 for one-hot.", D.embedding_dim, "N")] = None,
    condition: Annotated[str | None, _opt("class: learn each title's class, and sample each; auto: class where the "
                                          "data has labels (measured in docs/benchmarks.md).", "auto",
                                          "none|class|auto")] = None,
    classes: Annotated[str | None, _opt("Classes to sample, as for `sample-batch --classes`.", "every class",
                                        "LIST")] = None,
    n: Annotated[int, _opt("Samples per temperature (and class).", 1000, "N", "--n")] = 1000,
    temps: Annotated[str, _opt("Temperatures, as for `sample-batch --temps`.", "0.3,1.0,1.8", "LIST")] = "0.3,1.0,1.8",
    max_len: Annotated[int, _opt("Longest sample, in characters.", 128, "N")] = 128,
    regex: Regex = None,
    ban: Ban = None,
    ban_file: BanFile = None,
    stop: Stop = None,
    min_len: MinLen = 0,
    must_finish: MustFinish = False,
    logit_bias: LogitBias = None,
    seed: Annotated[int | None, _opt("Seed of training and sampling.", D.seed, "N")] = None,
    device: Annotated[str, _opt("Sampling device.", "auto", "auto|cuda|cpu")] = "auto",
    resume: Annotated[bool, _flag("Continue a job that stopped: training from its last epoch (or not at all, once "
                                  "done), the export unless it is newer than the best checkpoint, then sampling and "
                                  "the report.")] = False,
    overwrite: Annotated[bool, _flag("Replace runs/NAME if it exists.")] = False,
) -> None:
    """The main job in one go: train -> export-onnx -> sample-batch -> report. Every stage's settings, the device,
    both output folders and the data are checked before training starts."""
    from toolkit.pipeline import plan
    from toolkit.sampling.config import parse_classes, parse_temperatures, sampling_config

    flags = dict(data=data, field=field, epochs=epochs, cell=cell, layers=layers, units=units,
                 embedding_dim=embedding_dim, seed=seed, condition=condition)
    sampling = dict(temperatures=parse_temperatures(temps), n=n, seed=seed or 0, classes=parse_classes(classes),
                    max_len=max_len, **_constraint(regex, ban, ban_file, stop, min_len, must_finish, logit_bias))
    early = sampling_config(**sampling)  # bad sampling flags are refused before anything else
    job = plan(name, flags, device=device, resume=resume, overwrite=overwrite, classes=sampling["classes"],
               sampling=early)  # a constraint against the vocabulary the model will have, before training
    config = sampling_config(**(sampling | {"seed": job.config.seed if seed is None else seed}))
    if job.train:
        typer.echo(f"[1/4] train -> {job.run_dir}")
        _train(job.run_dir, job.config, resume=resume, overwrite=overwrite,
               again=f"python cli.py pipeline --name {name} --resume", corpus=job.corpus)
    else:
        typer.echo(f"[1/4] train: {job.run_dir} has completed its {job.config.epochs} epochs")
    if job.export:
        typer.echo(f"[2/4] export-onnx -> {job.model}")
        export_onnx(job.run_dir)
    else:
        typer.echo(f"[2/4] export-onnx: {job.model} is newer than the best checkpoint")
    typer.echo(f"[3/4] sample-batch -> {job.report_dir}")
    _sample(job.model, job.report_dir, config, device=device,
            report=_report_into(job.report_dir, None, f"[4/4] report -> {job.report_dir / 'report.html'}"))


def _import_tensorflow() -> None:
    """Import TensorFlow with file descriptor 2 silenced: its C++ start-up lines reach it during the import,
    before any setting (TF_CPP_MIN_LOG_LEVEL included) applies. An import error is raised after it is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _progress_bar():
    """A one-line bar on stderr (rows done, characters per second), drawn only on a terminal."""
    started = time.perf_counter()

    def show(rows: int, total: int, chars: int) -> None:
        if sys.stderr.isatty():
            done = int(30 * rows / total)
            end = "\n" if rows == total else ""
            sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {rows:,}/{total:,} rows, "
                             f"{chars / (time.perf_counter() - started):,.0f} characters/s{end}")
            sys.stderr.flush()

    return show


def main() -> None:
    """Run the app; any usage error becomes one line on stderr and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # click's parse errors (typer vendors click)
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except UsageError as e:  # the library names its parameters; the user knows the flags
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        typer.echo(f"error: {e.render(lambda name: flag(name, command))}", err=True)
        sys.exit(2)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
