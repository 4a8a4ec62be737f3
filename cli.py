"""Command line: a thin typer layer over toolkit/, exporters/ and eval/ (parse, call, print).

Heavy imports (TensorFlow) happen inside the commands that need them: `sample-batch` and `report` run on
machines with onnxruntime alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from toolkit.config import TrainConfig
from toolkit.files import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train character-level title generators, export them to ONNX, sample in batches, "
                       "and score the samples.")

D = TrainConfig()  # the defaults, shown in --help


@app.callback()
def _root() -> None:
    """Keep subcommands subcommands, even while the app has one."""


def _opt(help_text: str, default: object = None) -> typer.Option:
    return typer.Option(help=f"{help_text} [default: {default}]" if default is not None else help_text,
                        show_default=False)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, history, config, vocabulary.")] = Path(
        "runs/default"),
    data: Annotated[str | None, _opt("tfds:NAME, an AG News .csv, or a .txt with one title per line.",
                                     D.data)] = None,
    val_data: Annotated[str | None, _opt("Explicit validation file (instead of the hash split).")] = None,
    field: Annotated[str | None, _opt("title, description or both.", D.field)] = None,
    val_fraction: Annotated[float | None, _opt("Share of a single file held out for validation.",
                                               D.val_fraction)] = None,
    seq_len: Annotated[int | None, _opt("Longer texts are cut into chunks of this many characters.",
                                        D.seq_len)] = None,
    cell: Annotated[str | None, _opt("lstm or gru.", D.cell)] = None,
    layers: Annotated[int | None, _opt("Stacked recurrent layers.", D.layers)] = None,
    units: Annotated[int | None, _opt("Units per recurrent layer.", D.units)] = None,
    embedding_dim: Annotated[int | None, _opt("Embedding size; 0 for the notebook's one-hot input.",
                                              D.embedding_dim)] = None,
    dropout: Annotated[float | None, _opt("Dropout after each recurrent layer.", D.dropout)] = None,
    epochs: Annotated[int | None, _opt("Epochs in all (a resumed run may raise it).", D.epochs)] = None,
    batch_size: Annotated[int | None, _opt("Sequences per batch.", D.batch_size)] = None,
    lr: Annotated[float | None, _opt("Adam learning rate.", D.lr)] = None,
    seed: Annotated[int | None, _opt("Random seed.", D.seed)] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last completed epoch.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run in --out.")] = False,
) -> None:
    """Train a character model; writes last.keras, best.keras, history.csv, config.json, vocab.json."""
    flags = {k: v for k, v in locals().items() if k not in ("out", "resume", "overwrite")}
    from toolkit.train import resolve_config
    from toolkit.train import train as fit

    config = resolve_config(out, flags, resume=resume, overwrite=overwrite)

    try:
        history = fit(config, out, resume=resume, log=typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: completed epochs are saved in {out}; continue with "
                   f"`python cli.py train --out {out} --resume`", err=True)
        raise typer.Exit(130) from None
    if history:
        best = min(history, key=lambda row: row["val_bpc"])
        typer.echo(f"done: {len(history)} epochs in {out}; best validation {best['val_bpc']:.3f} bits per "
                   f"character (epoch {int(best['epoch'])})")


def main() -> None:
    """Run the app; any usage error becomes one line on stderr and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # click's parse errors (typer vendors click)
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except UsageError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
