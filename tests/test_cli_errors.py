"""The command line maps the package's errors to one line in one place (``cli._Commands``).

Every error a user can fix (an :class:`~xrdct_dask.errors.XrdctError`, or a file that exists, is
missing or cannot be written) ends a command with one red ``error:`` line and exit status 2, from
whatever command and whatever depth it is raised; no command catches them itself."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from xrdct_dask import cli, errors


def _caught_names(node: ast.ExceptHandler) -> list[str]:
    t = node.type
    elts = t.elts if isinstance(t, ast.Tuple) else [t] if t is not None else []
    return [e.attr if isinstance(e, ast.Attribute) else getattr(e, "id", "") for e in elts]


def _commands(cmd):
    """A click command and every command below it."""
    yield cmd
    for sub in getattr(cmd, "commands", {}).values():
        yield from _commands(sub)


def test_no_command_catches_the_packages_errors_itself():
    """Only ``_Commands.invoke`` has an ``except`` naming an XrdctError class: the tuples each
    command once caught (and kept in step by hand) are gone."""
    ours = {n for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.XrdctError)}
    ours |= {"ViewError", "CenterPictureError"}
    # the CLI is a package (a module per group of commands): every one of its modules is read, and
    # every command's function is defined in one of them
    files = sorted(Path(cli.__file__).parent.glob("*.py"))
    defined_in = {c.callback.__module__ for c in _commands(typer.main.get_command(cli.app)) if c.callback}
    assert len(defined_in) > 1 and defined_in <= {f"{cli.__name__}.{f.stem}" for f in files}, defined_in
    where = []
    for fn in (n for f in files for n in ast.walk(ast.parse(f.read_text()))):
        if isinstance(fn, (ast.FunctionDef, ast.ClassDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and set(_caught_names(node)) & ours:
                    where.append(fn.name)
    assert set(where) <= {"_Commands", "invoke", "cluster_list"}, where  # cluster list prints a bad profile and goes on


@pytest.mark.parametrize("args, says", [
    (["center", "{tmp}/nothing.zarr"], "is not a run store of xrdct-dask"),      # CenterPictureError
    (["export", "{tmp}/nothing.zarr", "{tmp}/out.h5"], "nothing.zarr"),          # ExportError
    (["plan", "{tmp}/missing.yaml"], "missing.yaml"),                            # FileNotFoundError / WorkflowError
    (["cluster", "script", "--profile", "no-such-profile"], "no-such-profile"),  # ProfileError
    (["run", "{tmp}/missing.yaml", "--set", "scan.nz=2"], "missing.yaml"),       # WorkflowError
])
def test_a_users_error_is_one_line_and_exit_2_from_any_command(tmp_path, args, says):
    r = CliRunner().invoke(cli.app, [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2, (r.output, r.exception)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.output


def test_the_export_exists_error_names_the_command_lines_option():
    err = errors.ExportExistsError("/data/run.h5")
    assert "--overwrite" in cli.one_line(err) and "overwrite=True" in str(err)
