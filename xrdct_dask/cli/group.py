"""The command group every command of ``xrdct`` runs in, and what the commands share: the one
place that maps the package's errors to one line (:class:`_Commands`, :data:`USER_ERRORS`),
``--version``, logging, and the Ctrl-C of a command that runs work."""

from __future__ import annotations

import contextlib
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from xrdct_dask.errors import ExportExistsError, XrdctError
from xrdct_dask.view.console import show_messages

# what a command may raise that is the user's to fix: one red line and exit status 2 (-v adds the
# traceback).  Everything else is a bug and keeps its traceback.
USER_ERRORS = (XrdctError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError)


def one_line(err: BaseException) -> str:
    """The message a user reads for ``err``, in the command line's spelling of options."""
    if isinstance(err, ExportExistsError):
        return err.hint("--overwrite")
    return str(err)


class _Commands(TyperGroup):
    """The command group: maps the errors of every command to one line (:data:`USER_ERRORS`), in
    this one place, instead of a ``try``/``except`` of its own in each command."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if logging.getLogger().isEnabledFor(logging.INFO):  # -v: where it came from too
                logging.getLogger(__package__).info("traceback", exc_info=err)
            _fail(one_line(err))


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_Commands,
                  help="XRD-CT / PDF-CT reduction: simulate a scan, run a workflow, look at the result.")


def _version(value: bool) -> None:
    if value:
        try:
            v = version("xrdct-dask")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        typer.echo(f"xrdct-dask {v} ({Path(__file__).resolve().parents[1]})")  # the package's folder
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the installed version and where it is, then exit")] = False,
) -> None:
    pass


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_messages()  # the run's own messages (dashboard, tasks kept, summary) on stdout
    for noisy in ("distributed", "silx", "pyFAI"):  # keep their INFO chatter off the terminal
        logging.getLogger(noisy).setLevel(logging.INFO if verbose and noisy == "distributed" else logging.ERROR)


def _interrupted() -> None:
    typer.secho("interrupted: what is marked done is kept; run the same command to resume", fg="yellow", err=True)
    raise typer.Exit(130)


@contextlib.contextmanager
def _until_ctrl_c():
    """The body of a command that runs work: a Ctrl-C at any moment of it (its imports, the start of
    the workers, the stages) stops it with the one line saying how to resume, exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted()
