"""The reference parts of the documentation, generated from the code so that they follow it.

A Sphinx extension (``extensions = ["xrdct_docs"]`` in ``docs/conf.py``) that writes, when the
builder starts and before any source is read:

    docs/_generated/workflow-keys.md   every workflow key: type, allowed values, default, unit and
                                       description, from the pydantic schema (``Workflow``) and the
                                       comments of the documented ``xrdct_dask/data/workflow.yaml``
    docs/_generated/cli.md             every command and option of ``xrdct``, by typer's own
                                       Markdown generator from the typer app ``xrdct_dask.cli:app``
    docs/_generated/store-arrays.md    every array of a run's store: dims, dtype, chunks (symbolic,
                                       from ``store.layout.array_specs``), units and long name (as
                                       ``store.layout.create_store`` writes them into a real store)
    docs/_generated/stages.md          the stage table (``pipeline.stages.STAGES``)
    docs/_generated/errors.md          the error classes of ``xrdct_dask.errors`` with real messages
                                       (each example raised by the package's own code)
    docs/_generated/layers.md          which layers each layer imports (read from the sources)
    docs/api/                          one page per public module (``automodule``), found by
                                       walking the package: a new module is documented unasked
    docs/tutorials/*.ipynb             copies of notebooks/*.ipynb (Sphinx reads sources only
                                       under docs/; the notebooks stay where they are)

Every one of these paths is git-ignored.  A file is rewritten only when its text changes, so an
incremental build re-reads only what changed.  The functions return text and are also what
``tests/test_docs.py`` checks against the schema, the typer app and the package.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
API = DOCS / "api"
TUTORIALS = DOCS / "tutorials"
NOTEBOOKS = ROOT / "notebooks"
PACKAGE = "xrdct_dask"

# The layers in import order (science at the bottom, the CLI on top), as the architecture page
# draws them.  A top-level module or folder not named here is listed after them, so nothing is
# left out of the API reference; the layer table says where it sits.
LAYERS = ("errors", "backend", "resources", "io", "integrate", "sinogram", "recon", "pdf", "config", "simulate",
          "store", "pipeline", "cluster", "view", "runs", "export", "testing", "cli")


# ------------------------------------------------------------------------------------------
# Markdown that MyST reads literally
# ------------------------------------------------------------------------------------------
_CODE = re.compile(r"(`+)(.+?)\1")
_PUNCT = re.compile(r"([\\`*_{}\[\]<>()#+!|~$&])")


def md_text(text: str, table: bool = False) -> str:
    """``text`` as Markdown that renders as written: code spans (single or double backticks, as
    docstrings and comments write them) kept as code, every other character MyST could read as
    markup backslash-escaped (CommonMark allows it before any ASCII punctuation); in a table
    cell ``|`` is escaped inside code spans too (GFM splits cells before it parses spans)."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_PUNCT.sub(r"\\\1", text[pos:m.start()]))
        code = m.group(2).strip()
        out.append(f"``{code.replace('|', chr(92) + '|') if table else code}``")
        pos = m.end()
    out.append(_PUNCT.sub(r"\\\1", text[pos:]))
    return " ".join("".join(out).split())


def md_code(text: str, table: bool = True) -> str:
    """``text`` as one inline code span (``|`` escaped for a table cell)."""
    text = str(text)
    return f"``{text.replace('|', chr(92) + '|') if table else text}``"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GFM table (cells already Markdown)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it holds it already; True when written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


# ------------------------------------------------------------------------------------------
# workflow keys: the pydantic schema, plus the documented YAML's comments
# ------------------------------------------------------------------------------------------
# Units of the keys whose name does not carry one (``_deg``, ``_mm``, ``_px`` do).  The PDF
# section works in PDFgetX3's units (its docstring: Q in 1/Angstrom, r in Angstrom).
UNITS = {
    "integrate.npt_rad": "bins", "integrate.radial_range": "integrate.unit", "integrate.percentile": "%",
    "integrate.clip_threshold": "sigma", "sinogram.center": "px", "sinogram.zinger_threshold": "noise levels",
    "sinogram.stripe_snr": "noise levels", "sinogram.background_columns": "columns",
    "pdf.qmin": "1/Å", "pdf.qmax": "1/Å", "pdf.qmaxinst": "1/Å", "pdf.rpoly": "Å", "pdf.rmin": "Å",
    "pdf.rmax": "Å", "pdf.rstep": "Å", "pdf.lowr_max": "Å", "pdf.r_chunk": "r bins", "pdf.edge_width": "voxels",
    "store.omega_chunk": "omega rows", "store.q_chunk": "q bins", "compute.memory_limit": "bytes (2GB, 1500MB)",
    "compute.task_memory": "bytes (2GB, 1500MB)",
}
_SUFFIX_UNITS = {"_deg": "deg", "_mm": "mm", "_px": "px", "_s": "s"}


@dataclass(frozen=True)
class KeyDoc:
    """One workflow key as the reference shows it."""

    key: str  # dotted: integrate.npt_rad
    type: str  # integer, number, boolean, string, path, [number, number], ... ("or null" where allowed)
    allowed: str  # the values a choice takes, or the bounds of a number ("" if neither)
    default: str  # as YAML writes it; "required" when the key must be given
    unit: str
    description: str


def _schema_type(s: dict, defs: dict) -> tuple[str, list[str]]:
    """(type, allowed values or bounds) of one JSON-schema node."""
    if "$ref" in s:
        return "section", []
    if "anyOf" in s:
        types, allowed = [], []
        for sub in s["anyOf"]:
            t, a = _schema_type(sub, defs)
            types.append(t)
            allowed += a
        return " or ".join(dict.fromkeys(types)), allowed
    if "enum" in s:
        return "choice", [json.dumps(v) if not isinstance(v, str) else v for v in s["enum"]]
    if "const" in s:
        return str(s["const"]), []
    t = s.get("type", "any")
    if t == "string" and s.get("format") == "path":
        t = "path"
    if t == "array":
        items = s.get("prefixItems") or [s.get("items", {})]
        t = "[" + ", ".join(_schema_type(i, defs)[0] for i in items) + "]"
    bounds = [f"{op} {s[k]}" for k, op in (("exclusiveMinimum", ">"), ("minimum", ">="),
                                            ("exclusiveMaximum", "<"), ("maximum", "<=")) if k in s]
    return t, [" and ".join(bounds)] if bounds else []


def yaml_comments(path: Path | None = None) -> dict[str, str]:
    """``{dotted key: comment}`` of the documented workflow YAML (continuation comment lines joined).

    The comment of a section line (``sinogram:  # ...``) is kept under the section's name."""
    if path is None:
        from xrdct_dask.resources import WORKFLOW_TEMPLATE

        path = WORKFLOW_TEMPLATE
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the open sections
    last = None
    for line in path.read_text().splitlines():
        body, _, comment = line.partition("#")
        if not body.strip():  # a comment-only line continues the last key's comment
            if last is not None and comment.strip() and line.startswith(" "):
                out[last] = f"{out.get(last, '')} {comment.strip()}".strip()
            continue
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):", body)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        last = ".".join([k for _, k in stack] + [m.group(2)])
        if comment.strip():
            out[last] = comment.strip()
        if not body.split(":", 1)[1].strip():  # a section: its keys follow, indented
            stack.append((indent, m.group(2)))
    return out


def _yaml_value(v) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def workflow_sections() -> list[tuple[str, str, list[KeyDoc]]]:
    """``[(section, its docstring, [KeyDoc, ...]), ...]`` for every section of the workflow, in
    schema order; nested models (``inputs.positioners``) are sections of their own."""
    from xrdct_dask import Workflow

    schema = Workflow.model_json_schema()
    defs = schema.get("$defs", {})
    comments = yaml_comments()
    sections: list[tuple[str, str, list[KeyDoc]]] = []

    def walk(node: dict, prefix: str, doc: str) -> None:
        keys: list[KeyDoc] = []
        nested = []
        required = set(node.get("required", ()))
        for name, s in node["properties"].items():
            key = f"{prefix}.{name}"
            if "$ref" in s:
                nested.append((defs[s["$ref"].split("/")[-1]], key, s.get("description", "")))
                continue
            t, allowed = _schema_type(s, defs)
            if name in required:
                default = "required"
            else:
                default = _yaml_value(s.get("default"))
            unit = next((u for suf, u in _SUFFIX_UNITS.items() if name.endswith(suf)), UNITS.get(key, ""))
            keys.append(KeyDoc(key, t, ", ".join(allowed), default, unit,
                               s.get("description") or comments.get(key, "")))
        sections.append((prefix, doc, keys))
        for sub, key, d in nested:
            walk(sub, key, sub.get("description") or d or comments.get(key, ""))

    for name, s in schema["properties"].items():
        sub = defs[s["$ref"].split("/")[-1]]
        walk(sub, name, sub.get("description") or comments.get(name, ""))
    return sections


def workflow_keys() -> list[KeyDoc]:
    """Every key of the workflow, dotted, in schema order."""
    return [k for _, _, keys in workflow_sections() for k in keys]


def _allowed_values(key: str, allowed: str) -> str:
    # a key checked by a validator rather than typed as a choice: the values the code accepts
    if key == "integrate.unit":
        from xrdct_dask.config import RADIAL_UNITS

        return ", ".join(RADIAL_UNITS)
    return allowed


def _type_cell(k: KeyDoc) -> str:
    """``integer: > 0``, ``choice: raster, snake, interlaced``, ``number: > 0 [px]``."""
    allowed = _allowed_values(k.key, k.allowed)
    return f"{k.type}{': ' + allowed if allowed else ''}{f' [{k.unit}]' if k.unit else ''}"


def workflow_keys_page() -> str:
    """The workflow-key reference: a table per section (MyST Markdown)."""
    lines = ["<!-- generated by docs/_ext/xrdct_docs.py from xrdct_dask.Workflow: do not edit -->\n"]
    for section, doc, keys in workflow_sections():
        lines.append(f"### `{section}`\n")
        if doc:
            lines.append(md_text(inspect.cleandoc(doc)) + "\n")
        rows = [[md_code(k.key), md_code(k.default) if k.default != "required" else "**required**",
                 md_text(_type_cell(k), True), md_text(k.description, True)] for k in keys]
        lines.append(md_table(["key", "default", "type [unit]", "what it does"], rows))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# CLI: typer's own Markdown generator over the typer app
# ------------------------------------------------------------------------------------------
def cli_command():
    """The click command behind ``xrdct`` (typer builds it from ``xrdct_dask.cli:app``)."""
    import typer

    from xrdct_dask.cli import app

    return typer.main.get_command(app)


def cli_commands(cmd=None, prefix: str = "xrdct") -> list[str]:
    """Every command line of the app: ``["xrdct", "xrdct run", ..., "xrdct cluster list"]``."""
    cmd = cmd or cli_command()
    out = [prefix]
    for name, sub in getattr(cmd, "commands", {}).items():
        out += cli_commands(sub, f"{prefix} {name}")
    return out


def cli_page() -> str:
    """Every command of ``xrdct`` with its usage, arguments, options and defaults (typer's own
    ``typer ... utils docs`` generator), its headings one level down (the page has its title)."""
    import click
    from typer.cli import get_docs_for_click

    cmd = cli_command()
    text = get_docs_for_click(obj=cmd, ctx=click.Context(cmd, info_name="xrdct"), name="xrdct", title="xrdct")
    # typer writes the title as '# xrdct' and the commands as '## `xrdct run`': one level down
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    # a bare <placeholder> in help text (RUN-<digest>.zarr) is inline HTML to MyST: shown as text
    text = "\n".join(_escape_angles(line) for line in text.splitlines())
    return "<!-- generated by docs/_ext/xrdct_docs.py from xrdct_dask.cli:app (typer's docs generator) -->\n\n" + text


def _escape_angles(line: str) -> str:
    if line.startswith(("```", "$ ")):
        return line
    parts = re.split(r"(`+[^`]*`+)", line)
    return "".join(p if p.startswith("`") else p.replace("<", r"\<").replace(">", r"\>") for p in parts)


# ------------------------------------------------------------------------------------------
# API: one page per public module, found by walking the package
# ------------------------------------------------------------------------------------------
def public_modules() -> list[str]:
    """Every importable module of the package without a leading underscore in its dotted name
    (``integrate._cupy`` is an engine behind :class:`~xrdct_dask.integrate.Integrator`)."""
    pkg = importlib.import_module(PACKAGE)
    names = [PACKAGE] + [m.name for m in pkgutil.walk_packages(pkg.__path__, PACKAGE + ".")]
    return sorted(n for n in names if not any(p.startswith("_") for p in n.split(".")))


def layer_of(module: str) -> str:
    """The layer a module belongs to: its first name below the package (``io``, ``store``, ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def api_pages() -> dict[str, str]:
    """``{file name: reST text}`` of the API reference: ``index.md`` and one page per module."""
    modules = public_modules()
    pages: dict[str, str] = {}
    for mod in modules:
        title = f"``{mod}``"
        # :ignore-module-all: a package documents what it defines, not what its __all__ re-exports
        # (documented once, where it is defined)
        pages[f"{mod}.rst"] = (f".. {MARK}: do not edit\n\n{title}\n{'=' * len(title)}\n\n"
                               f".. automodule:: {mod}\n   :members:\n   :show-inheritance:\n"
                               f"   :ignore-module-all:\n")
    order = [PACKAGE, *LAYERS]
    groups: dict[str, list[str]] = {}
    for mod in modules:
        groups.setdefault(layer_of(mod), []).append(mod)
    layers = sorted(groups, key=lambda g: (order.index(g) if g in order else len(order), g))
    lines = ["<!-- generated by docs/_ext/xrdct_docs.py by walking the package: do not edit -->\n",
             "# API reference\n",
             "Every public module of the package (no leading underscore in its name), found by walking it, "
             "grouped by layer from the bottom up (see [the architecture](../architecture.md)); each page is "
             "built from the module's docstrings.\n"]
    for layer in layers:
        lines.append(f"## {layer}\n")
        lines.append("```{toctree}\n:maxdepth: 1\n\n" + "\n".join(groups[layer]) + "\n```\n")
    pages["index.md"] = "\n".join(lines)
    return pages


# ------------------------------------------------------------------------------------------
# the store: array_specs with symbolic sizes, units from a real (tiny) store
# ------------------------------------------------------------------------------------------
class _SymbolicLayout:
    """Block sizes by name, so ``array_specs`` writes its chunks as ``(1, omega_chunk, nx, q_chunk)``."""

    omega_chunk, q_chunk, y_chunk, r_chunk = "omega_chunk", "q_chunk", "y_chunk", "r_chunk"


def _example_workflow(order: str = "recon-then-pdf"):
    from xrdct_dask.config import workflow_from_dict

    return workflow_from_dict({"inputs": {"frames": "frames/frame_{index:06d}.cbf", "poni": "geometry.poni"},
                               "scan": {"nz": 2, "nomega": 8, "nx": 6}, "store": "run.zarr",
                               "pdf": {"order": order}}, base_dir=Path("/data/scan01"))


def _marker_specs(order: str):
    """The stages' done-markers with symbolic counts (``tasks per slice``)."""
    from xrdct_dask.pipeline.stages import stages_of
    from xrdct_dask.store import MarkerSpec

    return [MarkerSpec(st.name, f"{st.name} tasks per slice", st.marker_dim, st.marker == "value", *st.marker_doc)
            for st in stages_of(_example_workflow(order)) if st.marker]


def _flags(fn) -> list[str]:
    """The keyword switches of ``fn`` (``bool``, default False, or a count, default 0 such as
    ``background_rows``): the optional arrays of a store (``pdf_sinograms``, and whatever optional
    arrays come after it), all read from the signature."""
    return [n for n, p in inspect.signature(fn).parameters.items()
            if p.default is False or (type(p.default) is int and p.default == 0 and n != "aux_channels")]


def _switched(fn, on, value=True) -> dict:
    """``fn``'s switches in ``on`` turned on: ``value`` for a bool, for a count its name (symbolic
    sizes) or 2 (a real store)."""
    sig = inspect.signature(fn).parameters
    out = {}
    for f in _flags(fn):
        if f not in on:
            continue
        count = sig[f].default is not False
        out[f] = (f if value == "symbolic" else 2) if count else True
    return out


def _symbolic_specs(order: str, on: set[str]) -> list:
    """``array_specs`` with the sizes by name and the switches in ``on``; ``pdf_sinograms`` only
    where ``order`` is pdf-then-recon (its arrays are that order's).  The texture arrays are those
    of a store with sectors (``nchi``); the other arrays are shown as a store without sectors has them."""
    from xrdct_dask.store import array_specs

    on = {f for f in on if f != "pdf_sinograms" or order == "pdf-then-recon"}
    args = dict(nz="nz", nomega="nomega", nx="nx", nq="nq", nr="nr", layout=_SymbolicLayout(),
                markers=_marker_specs(order), aux_channels="channels", **_switched(array_specs, on, "symbolic"))
    sectors = {sp.path: sp for sp in array_specs(**args, nchi="nchi") if sp.path.startswith("texture/")}
    return [sectors.get(sp.path, sp) for sp in array_specs(**args)]


def store_arrays() -> list[dict]:
    """Every array a run's store can hold: ``path``, ``dims``, ``dtype``, symbolic ``shape`` and
    ``chunks``, ``fill``, ``units``, ``long_name`` and ``only`` (what a store needs to have it:
    ``pdf.order: pdf-then-recon``, or a switch of ``array_specs``; empty for every store)."""
    import numpy as np

    from xrdct_dask.pipeline.stages import Sizes, marker_specs
    from xrdct_dask.store.budget import Layout
    from xrdct_dask.store import array_specs, create_store

    switches = set(_flags(array_specs))
    rows: dict[str, dict] = {}
    for order in ("recon-then-pdf", "pdf-then-recon"):
        wf = _example_workflow(order)
        # a tiny store as a run creates it, every optional array switched on: the units and long
        # names are those create_store writes
        layout = Layout(omega_chunk=4, q_chunk=4, q_sub=4, y_chunk=3, r_chunk=5, budget=2**26)
        sizes = Sizes.of(wf, nq=8, nr=10, layout=layout)
        aux = ["scale", "g_low", "f_top"] if order == "pdf-then-recon" else None
        with tempfile.TemporaryDirectory(prefix="xrdct-docs-") as tmp:
            root = create_store(Path(tmp) / "run.zarr", nz=2, nomega=8, nx=6, radial=np.linspace(1, 40, 8),
                                radial_unit="q_nm^-1", omega_deg=np.linspace(0, 180, 8, endpoint=False),
                                x_mm=np.arange(6.0), z_mm=np.arange(2.0), r_A=np.linspace(0.5, 5, 10),
                                layout=layout, attrs={}, markers=marker_specs(wf, sizes), aux_channels=aux,
                                **_switched(create_store, set(_flags(create_store))),
                                chi_deg=np.array([-90.0, 90.0]), peaks=[{"label": "d = 2 A", "d_angstrom": 2.0}])
            attrs = {f"{g}/{n}": dict(a.attrs) for g, grp in root.groups() for n, a in grp.arrays()}
        base = {sp.path for sp in _symbolic_specs(order, set())}
        needs = {sp.path: f for f in switches for sp in _symbolic_specs(order, {f}) if sp.path not in base}
        for spec in _symbolic_specs(order, switches):
            a = attrs.get(spec.path, {})
            row = rows.setdefault(spec.path, {
                "path": spec.path, "dims": spec.dims, "dtype": spec.dtype, "shape": spec.shape,
                "chunks": spec.chunks, "fill": spec.fill, "units": a.get("units", ""),
                "long_name": a.get("long_name", ""), "orders": [], "switch": needs.get(spec.path)})
            row["orders"].append(order)
            if a.get("long_name") and a["long_name"] not in row["long_name"]:  # a marker of another stage unit
                row["long_name"] = f"{row['long_name']} ({row['orders'][0]}); {a['long_name']} ({order})"
    for row in rows.values():
        if row["switch"] == "pdf_sinograms" or len(row["orders"]) == 1:
            row["only"] = f"pdf.order {row['orders'][0]} only"
        elif row["switch"]:
            row["only"] = f"stores with {row['switch']} only"
        else:
            row["only"] = ""
    return list(rows.values())


def _tuple(t) -> str:
    return "(" + ", ".join(str(x) for x in t) + ")"


def store_page() -> str:
    """The store's arrays, a table per group (MyST Markdown)."""
    from xrdct_dask.store import COMPRESSORS

    rows = store_arrays()
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["path"].split("/")[0], []).append(r)
    lines = ["<!-- generated by docs/_ext/xrdct_docs.py from xrdct_dask.store.layout.array_specs and a store "
             "made by create_store: do not edit -->\n"]
    for g, arrays in groups.items():
        lines.append(f"### `{g}/`\n")
        table = []
        for r in arrays:
            only = f" ({r['only']})" if r["only"] else ""
            fill = "NaN" if isinstance(r["fill"], float) and r["fill"] != r["fill"] else str(r["fill"])
            table.append([md_code(r["path"]), md_code(_tuple(r["dims"])), md_code(r["dtype"]),
                          md_code(_tuple(r["shape"])), md_code(_tuple(r["chunks"])), md_code(fill),
                          md_text(r["units"], True), md_text(r["long_name"] + only, True)])
        lines.append(md_table(["array", "dims", "dtype", "shape", "chunks", "fill", "units", "meaning"], table))
    def codec(c) -> str:
        conf = c.to_dict().get("configuration", {})
        return f"{type(c).__name__}({', '.join(f'{k}={v}' for k, v in conf.items())})"

    comp = ", ".join(codec(c) for c in COMPRESSORS)
    lines.append(f"Data arrays are compressed with {md_text(comp)}; the done-markers of `tasks/` are not "
                 "compressed, and a marker's chunk file exists exactly while it is set.\n")
    return "\n".join(lines)


def frame_status_page() -> str:
    """The frame status codes (``io.status.FrameStatus``) with the comment each has in the source."""
    from xrdct_dask.io import status

    src = inspect.getsource(status.FrameStatus)
    notes = dict(re.findall(r"^\s*([A-Z_]+)\s*=\s*\d+\s*#\s*(.*)$", src, flags=re.M))
    # runs.open.reopen_retried: an I/O error is read again by every rerun; a frame missing or
    # partly written when it was read, once its file is there and whole
    def again(s) -> str:
        if s == status.FrameStatus.IO_ERROR:
            return "always"
        return "once its file is whole" if s in (*status.RETRIED, *status.PARTIAL) else "no"

    rows = [[md_code(int(s)), md_code(s.name), "yes" if s in status.USABLE else "no", again(s),
             md_text(notes.get(s.name, ""), True)] for s in status.FrameStatus]
    return ("<!-- generated by docs/_ext/xrdct_docs.py from xrdct_dask.io.status: do not edit -->\n\n"
            + md_table(["code", "status", "used (frame_ok)", "read again by a rerun", "meaning"], rows)
            + "\n``-1`` in ``reduced/frame_status``: not yet written (the frame's block has not run).\n")


def profiles_page() -> str:
    """The batch-system profiles shipped with the package (``xrdct cluster list`` shows them)."""
    from xrdct_dask.cluster.profiles import load_profile
    from xrdct_dask.resources import PROFILES_DIR

    rows = []
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        p = load_profile(path)
        rows.append([md_code(path.stem), md_code(p.kind), md_text(p.description, True)])
    return ("<!-- generated by docs/_ext/xrdct_docs.py from xrdct_dask/profiles/: do not edit -->\n\n"
            + md_table(["profile", "batch system", "what it starts"], rows))


# ------------------------------------------------------------------------------------------
# the stage table
# ------------------------------------------------------------------------------------------
def stages_page() -> str:
    """``pipeline.stages.STAGES`` as a table."""
    from xrdct_dask.pipeline import stages

    def when(st) -> str:
        orders = [o for o in ("recon-then-pdf", "pdf-then-recon") if st.when(_example_workflow(o))]
        if not orders:  # in neither order's graph (the texture stage): its condition, as its docstring says
            return inspect.getdoc(st.when) or "when its keys ask for it"
        return "always" if len(orders) == 2 else f"pdf.order {orders[0]}"

    rows = [[md_code(st.name), md_text(st.unit, True), md_text(", ".join(st.after) or "-", True),
             md_text({"task": f"tasks/{st.name} ({st.marker_dim})", "value": f"tasks/{st.name} (a value per slice)"}
                     .get(st.marker or "", "-"), True),
             md_text(", ".join(st.writes) or "-", True), md_text(st.reprocess, True),
             md_text(", ".join(st.keys) or "-", True), "GPU" if st.gpu else "", when(st),
             "display" if st.display else "result"]
            for st in stages.STAGES]
    head = ("<!-- generated by docs/_ext/xrdct_docs.py from xrdct_dask.pipeline.stages.STAGES: do not edit -->\n\n")
    return head + md_table(["stage", "a task covers", "after", "done-marker", "writes", "reprocess step",
                            "rerun when these keys change", "runs on", "in the graph", "kind"], rows)


# ------------------------------------------------------------------------------------------
# errors: the classes, where they are raised, and real messages
# ------------------------------------------------------------------------------------------
def error_classes() -> list[type]:
    """Every error class of the package: those of ``xrdct_dask.errors`` in file order, then any
    other subclass of its root, :class:`~xrdct_dask.errors.XrdctError`, that a public module
    defines (an engine's own error beside its code), by module."""
    from xrdct_dask import errors

    def defined_in(module) -> list[type]:
        found = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, BaseException)
                 and c.__module__ == module.__name__]
        return sorted(found, key=lambda c: inspect.getsourcelines(c)[1])

    out = defined_in(errors)
    for name in public_modules():
        if name != errors.__name__:
            out += [c for c in defined_in(importlib.import_module(name)) if issubclass(c, errors.XrdctError)]
    return out


def raised_in() -> dict[str, list[str]]:
    """``{error class name: [modules whose code raises it]}`` read from the package's sources."""
    pkg = importlib.import_module(PACKAGE)
    root = Path(pkg.__file__).parent
    names = {c.__name__ for c in error_classes()}
    out: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        mod = ".".join((PACKAGE, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                f = node.exc.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name in names:
                    out.setdefault(name, set()).add(mod)
    return {k: sorted(v) for k, v in out.items()}


def error_examples() -> dict[str, list[str]]:
    """``{error class name: [message, ...]}``: real one-line messages, each raised here by the
    package's own functions on a made-up mistake (temporary files under /data/scan01 in the text)."""
    import fabio.cbfimage
    import numpy as np

    from xrdct_dask import errors
    from xrdct_dask.cluster.profiles import load_profile
    from xrdct_dask.config import workflow_from_dict
    from xrdct_dask.export import export_nexus
    from xrdct_dask.io.cbf import parse_cbf, read_file
    from xrdct_dask.pdf.pdfgetx3 import read_config
    from xrdct_dask.store.safety import check_replaceable

    base = {"inputs": {"frames": "frames/frame_{index:06d}.cbf", "poni": "geometry.poni"},
            "scan": {"nz": 1, "nomega": 64, "nx": 48}, "store": "run.zarr"}
    out: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="xrdct-docs-") as tmp:
        tmp = Path(tmp)

        def catch(fn, *args, **kwargs) -> None:
            try:
                fn(*args, **kwargs)
            except errors.XrdctError as err:
                out.setdefault(type(err).__name__, []).append(str(err).replace(str(tmp), "/data/scan01"))
                return
            raise AssertionError(f"{fn.__name__}{args} raised nothing: docs/_ext/xrdct_docs.py's example is stale")

        catch(workflow_from_dict, {**base, "integrate": {"unit": "q_nm"}}, source="scan01.yaml")
        catch(workflow_from_dict, {**base, "integrate": {"npt": 2000}}, source="scan01.yaml")
        catch(workflow_from_dict, {**base, "scan": {"nz": 1, "nomega": 64}}, source="scan01.yaml")
        catch(workflow_from_dict, base, source="scan01.yaml", overrides={"recon.filter": "gauss"})
        catch(load_profile, "slurm-gpu2")
        catch(read_config, tmp / "pdfgetx3.cfg")
        cbf = tmp / "frame_000007.cbf"
        fabio.cbfimage.CbfImage(data=np.arange(64 * 64, dtype=np.int32).reshape(64, 64)).write(str(cbf))
        whole = cbf.read_bytes()
        catch(parse_cbf, whole[: len(whole) // 2], str(cbf))
        catch(parse_cbf, b"###CBF: VERSION 1.5\r\n_array_data.data\r\n", str(cbf))
        catch(read_file, tmp)
        (tmp / "run.zarr").mkdir()
        (tmp / "run.zarr" / "notes.txt").write_text("mine")
        catch(check_replaceable, tmp / "run.zarr")
        catch(export_nexus, tmp / "old.zarr", tmp / "old.h5")
    return out


def errors_page() -> str:
    """The error table: each class, what it also is, when it is raised, by which modules, with
    real messages and a link to what to do (``troubleshooting.md`` has a section per class)."""
    classes = error_classes()
    where = raised_in()
    examples = error_examples()
    rows = []
    for c in classes:
        builtin = [b.__name__ for b in c.__mro__[1:]
                   if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
        parents = [b.__name__ for b in c.__bases__ if b.__module__ == c.__module__]
        doc = inspect.cleandoc(c.__doc__ or "").split("\n\n")[0]
        msgs = "<br>".join(md_code("error: " + m) for m in examples.get(c.__name__, []))
        rows.append([f"[{c.__name__}](#error-{c.__name__.lower()})", md_text(", ".join(parents) or "-", True),
                     md_text(", ".join(builtin) or "-", True), md_text(doc, True),
                     md_text(", ".join(m.removeprefix(PACKAGE + ".") for m in where.get(c.__name__, [])) or "-", True),
                     msgs or "-"])
    return ("<!-- generated by docs/_ext/xrdct_docs.py from xrdct_dask.errors and the package's raise "
            "statements: do not edit -->\n\n"
            + md_table(["error", "derives from", "also a", "means", "raised in", "for example"], rows))


# ------------------------------------------------------------------------------------------
# layers: who imports whom, read from the sources
# ------------------------------------------------------------------------------------------
def layer_imports() -> dict[str, set[str]]:
    """``{layer: layers its modules import}`` (top-level and function-level imports alike)."""
    pkg = importlib.import_module(PACKAGE)
    root = Path(pkg.__file__).parent
    out: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        layer = rel[0] if len(rel) > 1 else rel[0].removesuffix("__init__") or PACKAGE
        deps = out.setdefault(layer, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                         if node.module == PACKAGE else [])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                parts = n.split(".")
                if parts[0] != PACKAGE or len(parts) < 2:
                    continue
                # `from xrdct_dask import __version__` is the package root, `... import store` a layer
                below = (root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file()
                dep = parts[1] if below else PACKAGE
                if dep != layer:
                    deps.add(dep)
    return out


def layers_page() -> str:
    imports = layer_imports()
    order = list(LAYERS)
    known = sorted(imports, key=lambda g: (order.index(g) if g in order else len(order), g))
    rows = []
    for layer in known:
        deps = sorted(imports[layer], key=lambda g: (order.index(g) if g in order else len(order), g))
        up = [d for d in deps if d in order and layer in order and order.index(d) > order.index(layer)]
        rows.append([md_code(layer), md_text(", ".join(deps) or "-", True),
                     md_text(", ".join(up) or "-", True)])
    return ("<!-- generated by docs/_ext/xrdct_docs.py from the package's import statements: do not edit -->\n\n"
            + md_table(["layer", "imports from", "of which above it in the list"], rows))


# ------------------------------------------------------------------------------------------
# docstrings: the package's plain-text conventions read as reStructuredText
# ------------------------------------------------------------------------------------------
# The package's docstrings are numpydoc, with two plain-text habits reST reads otherwise: an
# indented block after a prose line (a diagram, a formula, a layout) is meant as written, where
# reST sees a block quote or a broken definition list; and |x| is an absolute value, where reST
# sees a substitution.  Both are rewritten before numpydoc parses the docstring.  numpydoc's
# sections whose indentation has a meaning of its own are left alone.
_SECTION_KEEP = {"Parameters", "Other Parameters", "Returns", "Yields", "Receives", "Raises", "Warns", "Attributes",
                 "Methods", "Examples"}
_LIST_ITEM = re.compile(r"^(\s*)(?:[-*+\u2022]|\d+[.)]|\(?[a-zA-Z#][.)])\s+")
_TABLE_BORDER = re.compile(r"\s*=+(\s+=+)+\s*")
_INLINE_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _escape_bars(line: str) -> str:
    """``|`` escaped outside inline literals and roles (an absolute value, not a substitution)."""
    if line.lstrip().startswith(("+", "|")):  # a grid table or a line block: reST's own bars
        return line
    parts = _INLINE_LITERAL.split(line)
    return "".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def literal_blocks(lines: list[str]) -> list[str]:
    """Docstring ``lines`` with every indented block that follows a prose line (not a list item,
    a field, a directive or an explicit ``::``) turned into a literal block, and ``|`` escaped
    outside literals; numpydoc's Parameters-like sections are copied unchanged."""
    out: list[str] = []
    i, n = 0, len(lines)
    keep_section = False
    borders = 0  # of the simple table being read (=== lines: top, below the header, bottom)
    while i < n:
        line = lines[i]
        if _TABLE_BORDER.fullmatch(line):
            borders = (borders + 1) % 3
            out.append(line)
            i += 1
            continue
        if borders:  # a simple table's rows, continuation lines included, are reST already
            out.append(_escape_bars(line))
            i += 1
            continue
        if i + 1 < n and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]) and line.strip():  # a numpydoc section
            keep_section = line.strip() in _SECTION_KEEP
            out += [line, lines[i + 1]]
            i += 2
            continue
        if keep_section or not line.strip():
            out.append(line)
            i += 1
            continue
        prev = next((x for x in reversed(out) if x.strip()), None)
        if prev is not None and re.fullmatch(r"\s*[-=~^]{3,}\s*", prev):  # just below a heading
            prev = None
        base = None if prev is None else _indent(prev)
        item = _LIST_ITEM.match(prev) if prev is not None else None
        if item and not prev.rstrip().endswith("::"):
            base = len(item.group(0))  # an item's own text may continue at its text's indent
        if prev is None or _indent(line) <= base:
            out.append(_escape_bars(line))
            i += 1
            continue
        # an indented block: up to the first line back at (or left of) the prose's indent
        j = i
        while j < n and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        while j > i and not lines[j - 1].strip():
            j -= 1
        block = lines[i:j]
        stripped = prev.strip()
        if stripped.endswith("::") or stripped.startswith(("..", ":", ">>>")):
            out += block  # already reST: a literal block, a directive's or a field's body
        else:
            k = len(out) - 1 - next(t for t, x in enumerate(reversed(out)) if x.strip())
            out[k] = out[k][:-1] + "::" if out[k].endswith(":") else out[k] + " ::"
            del out[k + 1:]
            out += [""] + block + [""]
        i = j
    return out


def _process_docstring(app, what, name, obj, options, lines) -> None:
    lines[:] = literal_blocks(lines)


# ------------------------------------------------------------------------------------------
# the Sphinx extension
# ------------------------------------------------------------------------------------------
FRAGMENTS = {"workflow-keys.md": workflow_keys_page, "cli.md": cli_page, "store-arrays.md": store_page,
             "stages.md": stages_page, "errors.md": errors_page, "layers.md": layers_page,
             "frame-status.md": frame_status_page, "profiles.md": profiles_page}


MARK = "generated by docs/_ext/xrdct_docs.py"


def _ours(path: Path) -> bool:
    """A file this module wrote: a page with its mark in the first line, or a notebook copy with
    its mark in the metadata.  Only those are ever removed (a file of yours there is kept)."""
    try:
        if path.suffix == ".ipynb":
            return "xrdct_docs" in json.loads(path.read_text()).get("metadata", {})
        return MARK in path.read_text().split("\n", 1)[0]
    except (OSError, ValueError):
        return False


def notebook_copy(src: Path) -> str:
    """``src`` as the docs read it: the same notebook, its metadata saying where it comes from."""
    nb = json.loads(src.read_text())
    nb.setdefault("metadata", {})["xrdct_docs"] = {"copy_of": f"notebooks/{src.name}"}
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def write_sources(docs: Path = DOCS) -> list[Path]:
    """Write every generated source under ``docs`` (only what changed); return the paths written.

    Generated files that are stale (a module removed, a notebook renamed) are removed, and only
    those: a file without this module's mark is left where it is."""
    written = []
    fragments = docs / GENERATED.name
    for name, make in FRAGMENTS.items():
        if write_if_changed(fragments / name, make()):
            written.append(fragments / name)
    api = docs / API.name
    pages = api_pages()
    for name, text in pages.items():
        if write_if_changed(api / name, text):
            written.append(api / name)
    for old in api.glob("*"):
        if old.name not in pages and _ours(old):
            old.unlink()
    tutorials = docs / TUTORIALS.name
    notebooks = {p.name: p for p in sorted(NOTEBOOKS.glob("*.ipynb"))}
    for name, src in notebooks.items():
        if write_if_changed(tutorials / name, notebook_copy(src)):
            written.append(tutorials / name)
    for old in tutorials.glob("*.ipynb"):
        if old.name not in notebooks and _ours(old):
            old.unlink()
    return written


def _builder_inited(app) -> None:
    write_sources(Path(app.srcdir))
    if app.config.nb_execution_mode != "off":
        # each notebook makes its scan and stores in a folder of its own under TMPDIR
        # (tempfile.mkdtemp); the kernels inherit this one, which build-finished removes
        app._xrdct_tutorial_tmp = (Path(tempfile.mkdtemp(prefix="xrdct-docs-tutorials-")), os.environ.get("TMPDIR"))
        os.environ["TMPDIR"] = str(app._xrdct_tutorial_tmp[0])


def _build_finished(app, exception) -> None:
    work, before = getattr(app, "_xrdct_tutorial_tmp", (None, None))
    if work is None:
        return
    shutil.rmtree(work, ignore_errors=True)  # this build's own folder
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before


def setup(app):
    app.connect("builder-inited", _builder_inited)
    app.connect("build-finished", _build_finished)
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)  # before numpydoc (500)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
