"""The documentation site (docs/) follows the code: every workflow key, every command and option,
every public module, every store array and every error is in it, and it builds without a warning.

The quick tests check the generated sources (docs/_ext/xrdct_docs.py) against the code, walked
here independently of the generator: the pydantic schema, the typer app, the package's modules,
the store layout, the error classes.  The slow one runs the real Sphinx build, warnings as errors,
without executing the notebooks (tests/test_notebooks.py does), and reads the built pages.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import xrdct_docs  # noqa: E402  (docs/_ext is not a package)


def schema_keys() -> dict[str, object]:
    """``{dotted key: default}`` of every leaf of the workflow schema (``...`` when required), walked
    from the pydantic models themselves (not from their JSON schema, which the generator reads)."""
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from xrdct_dask import Workflow

    out: dict[str, object] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if inspect.isclass(ann) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            if field.default is PydanticUndefined and field.default_factory is None:
                out[prefix + name] = ...
            else:
                out[prefix + name] = field.get_default(call_default_factory=True)

    walk(Workflow, "")
    return out


def page_rows(text: str) -> dict[str, str]:
    """``{key: its table row}`` of the generated workflow-key page."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| ``([\w.]+)`` \|.*$", text, flags=re.M)}


def test_every_workflow_key_is_on_the_workflow_page_with_its_default():
    """Each leaf of the schema has one row, no row names a key the schema lacks, and each row shows
    the key's default as YAML writes it (or says it is required)."""
    import yaml

    keys = schema_keys()
    rows = page_rows(xrdct_docs.workflow_keys_page())
    assert len(keys) > 90  # the walk saw the whole schema (inputs ... compute)
    assert set(rows) == set(keys), (set(keys) ^ set(rows))
    for key, default in keys.items():
        if default is ...:
            assert "**required**" in rows[key], key
            continue
        plain = default.value if hasattr(default, "value") else default
        plain = list(plain) if isinstance(plain, tuple) else plain
        shown = yaml.safe_dump(plain, default_flow_style=True).strip().removesuffix("...").strip()
        assert f"``{shown}``" in rows[key], (key, shown, rows[key])


def test_allowed_values_of_choices_and_unit_are_on_the_workflow_page():
    """A Literal choice lists its values; integrate.unit (checked by a validator) lists RADIAL_UNITS."""
    from xrdct_dask.config import RADIAL_UNITS

    rows = page_rows(xrdct_docs.workflow_keys_page())
    assert all(xrdct_docs.md_text(u, True) in rows["integrate.unit"] for u in RADIAL_UNITS)
    for value in ("raster", "snake", "interlaced"):
        assert value in rows["scan.order"]
    assert r"\> 0" in rows["scan.nz"] and r"\> 1" in rows["scan.nomega"]


def cli_tree() -> dict[str, list[str]]:
    """``{command line: [its option strings]}`` of every command of the typer app, walked here."""
    import typer

    from xrdct_dask.cli import app

    out: dict[str, list[str]] = {}

    def walk(cmd, path: str) -> None:
        out[path] = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "xrdct")
    return out


def cli_sections(text: str) -> dict[str, str]:
    """The generated CLI page cut at its command headings: ``{"xrdct run": its section}``."""
    parts = re.split(r"^#+ `?(xrdct[\w -]*?)`?$", text, flags=re.M)
    return {parts[k].strip(): parts[k + 1] for k in range(1, len(parts), 2)}


def test_every_cli_command_and_option_is_on_the_cli_page():
    tree = cli_tree()
    sections = cli_sections(xrdct_docs.cli_page())
    assert {"xrdct run", "xrdct watch", "xrdct cluster list", "xrdct cluster script"} <= set(tree)
    assert set(sections) == set(tree), set(tree) ^ set(sections)
    for command, options in tree.items():
        missing = [o for o in options if f"`{o}" not in sections[command] and f" {o}" not in sections[command]]
        assert not missing, (command, missing)


def test_api_reference_has_a_page_for_every_public_module():
    """Every module of the package without a leading underscore in its name (walked here with
    pkgutil) has its page, with an automodule of itself, and is in the API index."""
    import xrdct_dask

    modules = {"xrdct_dask"} | {m.name for m in pkgutil.walk_packages(xrdct_dask.__path__, "xrdct_dask.")
                                if not any(p.startswith("_") for p in m.name.split("."))}
    pages = xrdct_docs.api_pages()
    assert {name.removesuffix(".rst") for name in pages if name != "index.md"} == modules
    for mod in modules:
        assert f".. automodule:: {mod}\n" in pages[f"{mod}.rst"]
        assert re.search(rf"^{re.escape(mod)}$", pages["index.md"], flags=re.M), mod
    assert "xrdct_dask.integrate._cupy" not in modules and "xrdct_dask.store.layout" in modules


def test_store_page_lists_every_array_of_both_pdf_orders():
    """The store page's arrays are those a store of either PDF order can have (array_specs with the
    stage table's markers and every optional array switched on), each with the units create_store
    gives it."""
    from xrdct_dask.pipeline.stages import Sizes, marker_specs
    from xrdct_dask.store import VARIABLE_ATTRS, array_specs
    from xrdct_dask.store.budget import Layout

    layout = Layout(omega_chunk=2, q_chunk=2, q_sub=2, y_chunk=2, r_chunk=2, budget=2**26)
    paths = set()
    for order in ("recon-then-pdf", "pdf-then-recon"):
        wf = xrdct_docs._example_workflow(order)
        markers = marker_specs(wf, Sizes.of(wf, nq=4, nr=4, layout=layout))
        switches = {n: True if p.default is False else 2 for n, p in inspect.signature(array_specs).parameters.items()
                    if p.default is False or (type(p.default) is int and p.default == 0 and n != "aux_channels")}
        paths |= {s.path for s in array_specs(nz=1, nomega=4, nx=4, nq=4, nr=4, layout=layout, markers=markers,
                                              aux_channels=3, **switches)}
    assert {"reduced/intensity", "recon/intensity", "pdf/G", "pdf/G_sinogram", "tasks/integrate"} <= paths
    text = xrdct_docs.store_page()
    listed = set(re.findall(r"^\| ``([\w/]+)`` \|", text, flags=re.M))
    assert listed == paths, listed ^ paths
    for (group, name), (units, _) in ((k, v) for k, v in VARIABLE_ATTRS.items() if isinstance(k, tuple)):
        row = next(r for r in text.splitlines() if r.startswith(f"| ``{group}/{name}``"))
        assert f"| {xrdct_docs.md_text(units, True)} |" in row, (group, name, row)
    assert "| ``NaN`` |" in text  # the float arrays' fill


def test_errors_page_lists_every_error_class_with_what_to_do():
    """Every exception class of xrdct_dask.errors, and every other subclass of its root a module of
    the package defines, has a row (and the troubleshooting page a section, the row's link target);
    the examples are real messages, one line each."""
    import xrdct_dask
    from xrdct_dask import errors

    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, BaseException)
               and c.__module__ == errors.__name__]
    for m in pkgutil.walk_packages(xrdct_dask.__path__, "xrdct_dask."):
        if not any(p.startswith("_") for p in m.name.split(".")):
            module = importlib.import_module(m.name)
            classes += [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, errors.XrdctError)
                        and c.__module__ == m.name]
    text = xrdct_docs.errors_page()
    guide = (DOCS / "guide" / "troubleshooting.md").read_text()
    for c in classes:
        assert f"[{c.__name__}](#error-{c.__name__.lower()})" in text, c
        assert f"(error-{c.__name__.lower()})=\n### {c.__name__}\n" in guide, c
    examples = xrdct_docs.error_examples()
    assert {"WorkflowError", "ProfileError", "PDFParameterError", "CorruptFrameError", "TruncatedFrameError",
            "NotRegularFileError", "StoreExistsError", "ExportError"} <= set(examples)
    assert all("\n" not in m for ms in examples.values() for m in ms)
    assert any("integrate.unit" in m for m in examples["WorkflowError"])


def test_frame_status_page_lists_every_code():
    from xrdct_dask.io.status import FrameStatus

    text = xrdct_docs.frame_status_page()
    for s in FrameStatus:
        assert f"| ``{int(s)}`` | ``{s.name}`` |" in text, s


def test_indented_blocks_of_docstrings_read_as_written():
    """The docstring rewrite: a diagram indented under a prose line becomes a literal block (docutils
    reads it without a warning and keeps its spacing), |x| is not a substitution, and list items,
    numpydoc parameters, explicit literal blocks and simple tables are left as reST has them."""
    import docutils.core
    import docutils.utils

    doc = inspect.cleandoc('''
        The layout:
            run.zarr/
              reduced/intensity   f32 (z, omega, x, q)
        then prose again, with |a - b| <= tol.

        * an item
          continued at its text
        * another, holding a diagram
            a --> b

        ==========  ======
        class       oracle
        ==========  ======
        one         pyFAI
                    (cont.)
        ==========  ======

        Already literal::

            x = 1

        Parameters
        ----------
        npt_rad : int
            radial bins
        ''').splitlines()
    out = xrdct_docs.literal_blocks(doc)
    rst = "\n".join(out)
    warnings = []
    tree = docutils.core.publish_doctree(rst, settings_overrides={"report_level": 5, "halt_level": 5,
                                                                   "warning_stream": False})
    for node in tree.findall(docutils.nodes.system_message):
        warnings.append(node.astext())
    assert not warnings, (warnings, rst)
    literals = [n.astext() for n in tree.findall(docutils.nodes.literal_block)]
    assert "run.zarr/\n  reduced/intensity   f32 (z, omega, x, q)" in literals  # spacing kept
    assert "a --> b" in literals and "x = 1" in literals
    assert "|a - b|" in tree.astext()
    assert out[out.index("Parameters"):] == doc[doc.index("Parameters"):]  # numpydoc's own layout untouched
    assert "  continued at its text" in out and "The layout::" in out


@pytest.mark.parametrize("text", ["sigma-clip: discard |I-<I>| > threshold*sigma", "x | omega",
                                  "slice_{z:04d}/frame_{index:06d}.cbf (see [DEFAULT])",
                                  "a name from `xrdct cluster list`, or ``measurement/<name>``"])
def test_markdown_cells_render_as_written(text):
    """md_text: what MyST (markdown-it) renders from a table cell is the text as written."""
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py comes with the docs extra (myst-nb)")
    MarkdownIt = markdown_it.MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    html = md.render(f"| a |\n|---|\n| {xrdct_docs.md_text(text, table=True)} |\n")
    shown = re.sub(r"<[^>]+>", "", html.split("<tbody>")[1]).strip()
    import html as html_mod

    assert " ".join(html_mod.unescape(shown).split()) == " ".join(text.replace("``", "`").replace("`", "").split())


def test_pages_link_only_to_pages_that_exist():
    """Relative links of the hand-written pages point at files of docs/ or at pages the generator
    writes (the build checks anchors)."""
    generated = {(DOCS / "api" / name).resolve() for name in xrdct_docs.api_pages()}
    broken = []
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts:
            continue
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
            there = (page.parent / target).resolve()
            if not there.exists() and there not in generated and not target.endswith(".ipynb"):
                broken.append(f"{page.relative_to(DOCS)} -> {target}")
            if target.endswith(".ipynb") and not (ROOT / "notebooks" / Path(target).name).exists():
                broken.append(f"{page.relative_to(DOCS)} -> {target}")
    assert not broken, broken


@pytest.mark.slow  # the whole site without the notebooks' execution: ~40 s of CPU
def test_docs_build_without_warnings_and_show_every_key_command_and_module(tmp_path):
    """``sphinx-build -W`` (what ``make docs`` runs, the notebooks not executed) succeeds, and the
    built pages hold every workflow key, every command line and option, and every public module."""
    pytest.importorskip("sphinx", reason="the docs extra (sphinx, myst-nb, numpydoc, pydata-sphinx-theme) is missing")
    env = {**os.environ, "XRDCT_DOCS_EXECUTE": "off", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "html"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]

    def text_of(page: str) -> str:
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (out / page).read_text()))

    workflow = text_of("guide/workflow.html")
    missing = [k for k in schema_keys() if k not in workflow]
    assert not missing, missing
    cli = text_of("reference/cli.html")
    for command, options in cli_tree().items():
        assert command in cli, command
        assert all(o in cli for o in options), (command, [o for o in options if o not in cli])
    import xrdct_dask

    for m in pkgutil.walk_packages(xrdct_dask.__path__, "xrdct_dask."):
        if not any(p.startswith("_") for p in m.name.split(".")):
            assert (out / "api" / f"{m.name}.html").is_file(), m.name
    inventory = (out / "objects.inv").read_bytes()
    assert inventory.startswith(b"# Sphinx inventory version 2")
    for page in ("tutorials/01_attach_and_run.html", "benchmarks.html", "changelog.html", "architecture.html",
                 "guide/store.html", "guide/troubleshooting.html"):
        assert (out / page).is_file(), page
    assert "reduced/intensity" in text_of("guide/store.html")
    assert "scan01.yaml: integrate.unit: must be one of" in text_of("guide/troubleshooting.html")
