"""Reading a workflow: YAML text (safe, bounded), ``--set`` overrides, relative paths, pydantic
validation, and the one-line :class:`~xrdct_dask.errors.WorkflowError` naming the broken key."""

from __future__ import annotations

import difflib
import json
import os
import re
import stat as stat_
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from xrdct_dask.config.compare import flatten
from xrdct_dask.config.workflow import Workflow
from xrdct_dask.errors import PDFParameterError, WorkflowError
from xrdct_dask.io.pyfai_config import PyFAIConfigError, merge_pyfai_config
from xrdct_dask.pdf.pdfgetx3 import background_unit_error
from xrdct_dask.pdf.pdfgetx3 import merge_config as merge_pdfgetx3_config

MAX_CONFIG_BYTES = 1 << 20  # a workflow (or a cluster profile) is a few kB: larger files are not read as one
MAX_NESTING = 32  # mappings and lists within each other in a workflow: sections are 2 deep
SECTIONS = ("inputs", "scan", "geometry", "integrate", "store", "sinogram", "recon", "pdf", "compute")


class _PlainLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` (and so the "billion laughs" of nested
    aliases, 1 kB of YAML expanding to GBs) is refused while the text is composed, before any
    value is built."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "an alias (*name): YAML aliases are not allowed here, "
                                              "write the value out", event.start_mark)
        return super().compose_node(parent, index)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what of a YAML error, without quoting the text that failed (it may be a file that
    is not a workflow at all: nothing of it is echoed)."""
    mark = getattr(err, "problem_mark", None)
    problem = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", getattr(err, "problem", None) or "syntax error")
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def nesting_depth(value: Any) -> int:
    """How deep mappings and lists lie within each other in ``value`` (a scalar: 0), counted
    without recursion (a body nested 5,000 deep must not exhaust Python's stack)."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        depth = max(depth, d)
        stack.extend((c, d + 1) for c in children)
    return depth


def load_yaml_text(text: str, source: str) -> Any:
    """Parse configuration YAML text: safe types only, no aliases, at most :data:`MAX_CONFIG_BYTES`
    and :data:`MAX_NESTING` levels; any failure is a one-line :class:`WorkflowError` naming
    ``source`` that quotes nothing of the text."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise WorkflowError(f"{source}: over {MAX_CONFIG_BYTES:,} bytes: a workflow is a few kB, this is not one")
    loader = _PlainLoader(text)  # what yaml's load does, with the safe loader that refuses aliases
    try:
        value = loader.get_single_data()
    except yaml.YAMLError as err:
        raise WorkflowError(f"{source}: not valid YAML ({_yaml_problem(err)})") from None
    except RecursionError:
        raise WorkflowError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)") from None
    finally:
        loader.dispose()
    if nesting_depth(value) > MAX_NESTING:
        raise WorkflowError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)")
    return value


def read_config_text(path: Path, source: str | None = None) -> str:
    """The text of a configuration file, refused in one line when it is not a regular file or is
    larger than :data:`MAX_CONFIG_BYTES` (checked before reading: a 500 MB file is never loaded)."""
    source = source or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise WorkflowError(f"{source}: file not found") from None
    except OSError as err:
        raise WorkflowError(f"{source}: cannot be read ({err.strerror or err})") from None
    if not stat_.S_ISREG(st.st_mode):
        raise WorkflowError(f"{source}: not a regular file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise WorkflowError(f"{source}: {st.st_size:,} bytes: a workflow is a few kB; files over "
                            f"{MAX_CONFIG_BYTES:,} bytes are not read as one")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # the file may have grown since stat
    except OSError as err:
        raise WorkflowError(f"{source}: cannot be read ({err.strerror or err})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise WorkflowError(f"{source}: over {MAX_CONFIG_BYTES:,} bytes: not read as a workflow")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WorkflowError(f"{source}: not UTF-8 text") from None


def _shown_key(key: str) -> str:
    """A key as an error message may quote it: a plain name, else (a line of some other file read
    as YAML, a password...) not at all."""
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}", key) else "(a key that is not a name)"


def _one_line(err: ValidationError, source: str, overrides: dict | None = None) -> WorkflowError:
    """One line naming every broken key; a key set on the command line is blamed on its ``--set``,
    not on the file."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":  # a key of the file, not of the schema: quoted only if it is a name
            key = _shown_key(key)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(e["loc"])
        elif e["type"] == "missing":
            msg = "required key is missing"
        given = next((k for k in overrides or {} if key == k or key.startswith(k + ".") or k.startswith(key + ".")),
                     None)
        parts.append(f"--set {given}={json.dumps(overrides[given])}: {key}: {msg}" if given
                     else f"{source}: {key}: {msg}")
    return WorkflowError("; ".join(parts))


def _keys_of(model) -> list[str]:
    """Every dotted key of a section model (``integrate.npt_rad``, ``inputs.positioners.omega``)."""
    out = []
    for name, f in model.model_fields.items():
        sub = f.annotation if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) else None
        out += [name] + ([f"{name}.{k}" for k in _keys_of(sub)] if sub is not None else [])
    return out


def _did_you_mean(loc) -> str:
    """`` (did you mean integrate.npt_rad?)`` for an unknown key at ``loc``: the closest key of the
    same section (difflib), else the section that has a key of that name; empty when none is close."""
    parts = [str(p) for p in loc]
    section, leaf = ".".join(parts[:-1]), parts[-1]
    known = _keys_of(Workflow)
    siblings = [k for k in known if k.rpartition(".")[0] == section]
    close = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.6)
    if close:
        return f" (did you mean {section + '.' if section else ''}{close[0]}?)"
    elsewhere = [k for k in known if k.rpartition(".")[2] == leaf]
    return f" (did you mean {elsewhere[0]}?)" if len(elsewhere) == 1 else ""


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    """``d[a][b][c] = value`` for ``dotted = "a.b.c"``; a part that holds a value, not a section
    (``scan.nz.x``), is a one-line WorkflowError."""
    if not isinstance(dotted, str) or not dotted or nesting_depth(value) > MAX_NESTING:
        raise WorkflowError(f"--set {_shown_key(str(dotted))}: expected a dotted key (integrate.npt_rad) and a plain "
                            "value")
    keys = dotted.split(".")
    cur = d
    for n, k in enumerate(keys[:-1]):
        nxt = cur.get(k)
        if nxt is None or (isinstance(nxt, (str, Path)) and k == "store" and n == 0):
            # `store: path` shorthand: expand before descending
            nxt = {"path": nxt} if isinstance(nxt, (str, Path)) else {}
            cur[k] = nxt
        if not isinstance(nxt, dict):
            raise WorkflowError(f"--set {_shown_key(dotted)}: {_shown_key('.'.join(keys[:n + 1]))} is a value, "
                                f"not a section: it has no key {_shown_key(keys[n + 1])}")
        cur = nxt
    cur[keys[-1]] = value


def parse_value(text: str, option: str) -> Any:
    """A command-line value parsed as YAML (``3000``, ``true``, ``[1, 2]``, ``a string``), limited to
    plain data: YAML tags (``!!python/...``, ``!!binary``, ``!!set``) are refused in one line, and
    what YAML would read as a date stays the text given."""
    value = load_yaml_text(text, option)

    def plain(v) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (str, bool, int, float))

    if not plain(value) and "!" not in text:  # an implicit YAML date or time: the text itself
        return text.strip()
    if not plain(value):
        raise WorkflowError(f"{option}: a value must be a number, true/false, a string or a list of them "
                            f"(YAML gave a {type(value).__name__})")
    return value


def parse_overrides(pairs: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["integrate.npt_rad=3000", ...]`` -> ``{"integrate.npt_rad": 3000}`` (values parsed as YAML)."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise WorkflowError(f"{option} {p!r}: expected key=value, e.g. integrate.npt_rad=2000")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v, f"{option} {p}")
    return out


def _read_yaml(path: Path, what: str):
    """The plain data of a YAML file (safe loader), or a one-line :class:`WorkflowError` naming it."""
    if not path.is_file():
        raise WorkflowError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise WorkflowError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def load_changes(path: str | Path) -> dict[str, Any]:
    """A file of changes for ``xrdct reprocess --changes`` (workflows/reprocess.yaml): a YAML mapping
    in the workflow's sections, ``{recon: {filter: hann}}``, as the dotted overrides ``--set`` gives
    (``{"recon.filter": "hann"}``).  The keys are validated with the workflow they change."""
    path = Path(path)
    raw = _read_yaml(path, "changes file")
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise WorkflowError(f"{path}: expected sections of keys to change (recon: {{filter: hann}})")
    return flatten(raw)


_PATH_KEYS = (("inputs", "poni"), ("inputs", "pyfai_config"), ("inputs", "mask"), ("inputs", "dark"),
              ("inputs", "flat"), ("inputs", "monitor"), ("inputs", "transmission"), ("inputs", "scan_file"),
              ("inputs", "frames"),
              ("store", "path"), ("pdf", "background_file"), ("pdf", "config"), ("inputs", "background_scan", "frames"),
              ("inputs", "background_scan", "monitor"))


def workflow_from_dict(raw: dict, base_dir: Path | None = None, overrides: dict | None = None,
                       source: str = "workflow") -> Workflow:
    """Validate a plain dict (as read from YAML) into a :class:`Workflow`."""
    if not isinstance(raw, dict):
        raise WorkflowError(f"{source}: expected a mapping of sections (inputs, scan, ...), got {type(raw).__name__}")
    if not any(isinstance(k, str) and k in SECTIONS for k in raw):
        # not a workflow at all (some other file read as YAML): nothing of it is quoted back
        raise WorkflowError(f"{source}: not a workflow (no {', '.join(SECTIONS[:2])} or store section)")
    if nesting_depth(raw) > MAX_NESTING:
        raise WorkflowError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)")
    raw = json.loads(json.dumps(raw, default=str))  # deep copy, plain types
    for k, v in (overrides or {}).items():
        _set_dotted(raw, k, v)
    if isinstance(raw.get("store"), str):
        raw["store"] = {"path": raw["store"]}
    if base_dir is not None:
        for *where, key in _PATH_KEYS:
            sec = raw
            for k in where:
                sec = sec.get(k) if isinstance(sec, dict) else None
            val = sec.get(key) if isinstance(sec, dict) else None
            if isinstance(val, str) and val and not Path(val).is_absolute():
                sec[key] = str(base_dir / val)
            elif isinstance(val, list):  # several files (dark, flat)
                sec[key] = [str(base_dir / v) if isinstance(v, str) and not Path(v).is_absolute() else v for v in val]
    sources: list[str] = []
    if isinstance(raw.get("inputs"), dict) and raw["inputs"].get("pyfai_config"):
        try:
            raw, sources = merge_pyfai_config(raw)
        except PyFAIConfigError as err:
            raise WorkflowError(f"inputs.pyfai_config: {err}") from None
    if isinstance(raw.get("pdf"), dict):
        try:
            raw["pdf"] = merge_pdfgetx3_config(raw["pdf"])
        except PDFParameterError as err:
            raise _blamed(str(err), source, overrides) from None
    try:
        wf = Workflow.model_validate(raw)
    except ValidationError as err:
        raise _one_line(err, source, overrides) from None
    if (why := background_unit_error(wf.pdf, wf.integrate.unit)) is not None:
        raise _blamed(why, source, overrides)
    wf._sources = sources
    return wf


def _blamed(message: str, source: str, overrides: dict | None) -> WorkflowError:
    """``message`` (which starts with the key it is about) as a one-line error of ``source``, or of
    the ``--set`` that gave that key."""
    key = message.split(":", 1)[0]
    if key in (overrides or {}):
        return WorkflowError(f"--set {key}={json.dumps(overrides[key])}: {message}")
    return WorkflowError(f"{source}: {message}")


def load_workflow(path: str | Path, overrides: dict | None = None) -> Workflow:
    """Read and validate a workflow YAML file (safe loader only; no Python objects are built)."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"{path}: workflow file not found")
    return workflow_from_text(read_config_text(path), path.parent.resolve(), overrides, str(path))


def workflow_from_text(text: str, base_dir: Path | None, overrides: dict | None = None,
                       source: str = "workflow") -> Workflow:
    """Validate a workflow's YAML text (:func:`load_yaml_text`, then :func:`workflow_from_dict`)."""
    return workflow_from_dict(load_yaml_text(text, source), base_dir=base_dir, overrides=overrides, source=source)
