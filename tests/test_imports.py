"""Imports sit at the top of their module, so that the package's dependency graph reads from the
tops of its files (issue 26).  An import left inside a function says why on its line or the line
above, in a ``# lazy: <why>`` comment (one comment covers a block of consecutive imports): an
optional heavy library (cupy, astra, bokeh, matplotlib, an h5py plugin), ``xrdct --help`` kept
fast, or an import cycle.  ``xrdct --help`` imports none of the heavy libraries, and every module
imports on its own in a fresh interpreter (no cycle depends on which module comes first)."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xrdct_dask"
LAZY = re.compile(r"#\s*lazy:\s*\S")  # `# lazy: <why>`: the reason must be there, not just the word
# what `xrdct --help` must not import: the run's libraries (seconds of start-up) and the display's
HEAVY = ("dask", "distributed", "zarr", "pyFAI", "bokeh", "matplotlib", "numba", "h5py", "fabio", "scipy", "xraydb",
         "tornado")


def _comment_lines(text: str) -> set[int]:
    """Lines holding a ``# lazy: <why>`` comment (tokens: a ``# lazy:`` inside a string is no comment)."""
    return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type == tokenize.COMMENT and LAZY.match(tok.string)}


def _inner_import_blocks(tree: ast.Module) -> list[list[ast.stmt]]:
    """Runs of consecutive import statements made inside a function or a class body, at any depth
    (imports at module level, in its ``if`` / ``try`` blocks too, are not inner)."""
    blocks: list[list[ast.stmt]] = []

    def visit(node: ast.AST, inner: bool) -> None:
        # statements sit only in statement lists (a body, an else, a handler's or a case's body)
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            value = getattr(node, field, None)
            if not isinstance(value, list):
                continue
            if inner:
                run: list[ast.stmt] = []
                for stmt in [*value, None]:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        run.append(stmt)
                    elif run:
                        blocks.append(run)
                        run = []
            for child in value:
                visit(child, inner or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))

    visit(tree, False)
    return blocks


def unexplained_imports(text: str) -> list[tuple[int, str]]:
    """``(line, source)`` of every import inside a function or class of module source ``text``
    without a ``# lazy: <why>`` comment on its own line, on an earlier line of its block of
    consecutive imports, on the comment lines just above the block, or on the line just above
    them (``if gpu:  # lazy: ...``)."""
    blocks = _inner_import_blocks(ast.parse(text))
    if not blocks:
        return []
    lines = text.splitlines()
    said = _comment_lines(text)
    out = []
    for block in blocks:
        above = block[0].lineno - 1
        while above > 1 and lines[above - 1].lstrip().startswith("#"):
            above -= 1  # the comment lines just above the block, and the line above them
        for stmt in block:  # a comment covers its own import and those after it in the block
            if not said & set(range(above, (stmt.end_lineno or stmt.lineno) + 1)):
                out.append((stmt.lineno, lines[stmt.lineno - 1].strip()))
    return out


def test_the_check_flags_an_inner_import_without_a_reason_only():
    """The checker itself, on a made-up module: an inner import with no comment, or with a comment
    that gives no reason, or a reason given only further down its block, is flagged by line; one
    with a reason (its own line, the comment lines above its block, a block's head line) and the
    module-level ones (plain, in ``try``, in ``if``) are not."""
    src = textwrap.dedent('''\
        import os
        try:
            import cupy
        except ImportError:
            cupy = None

        def f(gpu):
            import json
            x = "# lazy: not a comment"; import re
            import glob  # lazy:
            import shutil  # lazy: a reason
            if gpu:  # lazy: cupy is optional
                from cupyx import scipy
            # lazy: import cycle a -> b
            # (the comment may run on)
            from a import b
            from c import d

            from e import f
            return json

        class C:
            import uuid
    ''')
    assert unexplained_imports(src) == [(8, "import json"), (9, 'x = "# lazy: not a comment"; import re'),
                                        (10, "import glob  # lazy:"), (23, "import uuid")]


def test_every_import_inside_a_function_says_why_it_is_lazy():
    """Every import inside a function or class of the package (each module parsed with ast) has its
    ``# lazy: <why>`` comment; the failure names each file:line, to hoist it to the top of its
    module or to say why it cannot be there."""
    found = [f"{path.relative_to(ROOT)}:{line}: {src}" for path in sorted(PACKAGE.rglob("*.py"))
             for line, src in unexplained_imports(path.read_text())]
    assert not found, "imports inside functions without a `# lazy: <why>` comment:\n" + "\n".join(found)


def test_help_imports_none_of_the_heavy_libraries():
    """``xrdct --help`` (the typer app, in a fresh interpreter) imports none of :data:`HEAVY`: the
    commands import the library inside themselves, and the modules the CLI imports at its top
    (config, errors, view.console) keep their heavy imports lazy."""
    code = ("import sys; from xrdct_dask.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout and res.stdout.rstrip().endswith("HEAVY []"), res.stdout[-2000:]


# Imports every module of the package first and alone, each in a child forked from an interpreter
# that holds only the third-party modules the package imports (so that a child runs the package's
# own code only); prints one line per module that fails.
_FRESH = r'''
import importlib, json, os, subprocess, sys, traceback
from pathlib import Path
root = Path(sys.argv[1])
names = [".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
         for p in sorted(root.rglob("*.py"))]
code = ("import importlib, json, sys\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n        importlib.import_module(name)\n    except Exception:\n        pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if not m.startswith('xrdct_dask'))))")
third = subprocess.run([sys.executable, "-c", code, json.dumps(names)], capture_output=True, text=True, check=True)
for m in json.loads(third.stdout.splitlines()[-1]):
    try:
        importlib.import_module(m)
    except Exception:
        pass
assert not any(m.startswith("xrdct_dask") for m in sys.modules)
for name in names:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
        except BaseException:
            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())
            os._exit(1)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        msg = fh.read()
    if os.waitpid(pid, 0)[1]:
        print(f"FAILED {name}: {msg}")
print(f"imported {len(names)} modules")
'''


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module of the package, imported first and alone in a fresh interpreter, imports: no
    import cycle of top-level imports depends on which module of it is imported first (a hoisted
    import that closes a cycle fails here for one of the orders).  Slow: ~150 modules, a fork and
    an import each (about a minute of CPU)."""
    res = subprocess.run([sys.executable, "-c", _FRESH, str(PACKAGE)], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FAILED" not in res.stdout and f"imported {len(list(PACKAGE.rglob('*.py')))} modules" in res.stdout, \
        res.stdout
