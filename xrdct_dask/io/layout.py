"""Frame file layouts: which file (and which frame in it) holds acquired frame ``i``.

``inputs.frames`` is a template whose fields are counters of the acquisition, computed from the
acquisition index ``i`` (0, 1, 2, ... in the order the frames were recorded) and the scan's shape
alone -- never from a listing of the files, so a task finds its own files and nothing lists or
stats a scan of millions of files:

``{z}``
    the slice, ``i // (nomega * nx)``.
``{line}``
    the line within its slice, ``(i // nfast) % nslow``, a line being one sweep of the fast axis
    (``nfast`` = nx frames for ``scan.fast_axis: x``, nomega for ``omega``; ``nslow`` lines a slice).
``{omega}``
    the omega step of the line (``fast_axis: x`` only, where each line is one angle): the line
    itself for raster and snake scans, ``interlaced_lines(nomega, passes)[line]`` for interlaced ones.
``{index}``
    the frame's number *within the innermost unit the template names*: within its line when the
    template has ``{line}`` or ``{omega}`` (0 .. nfast - 1), within its slice when it has ``{z}``
    only (0 .. nomega * nx - 1), else the global acquisition index ``i`` (the flat layout,
    ``frames/frame_{index:06d}.cbf``).  It counts in recording order: in a snake scan frame 0 of an
    odd line is at the line's far end.

A CBF template names one file per frame, so it needs ``{index}``
(``slice_{z:04d}/line_{line:05d}/frame_{index:06d}.cbf``).  An HDF5 template names one file per
slice or per line and has no ``{index}``: frame ``k`` of the file's dataset is the unit's
``{index}`` (``slice_{z:04d}.h5::/entry/data/data``: frame ``i % (nomega * nx)`` of slice ``z``'s file).
Every field takes an integer format (``{z:04d}``); a field may appear more than once
(``z{z:03d}/z{z:03d}_{index:05d}.cbf``).

A scan file (``inputs.scan_file``) places frames by their acquisition index; the template maps
that same index to its file.  No heavy imports: the workflow schema validates with this module.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from xrdct_dask.io.scan import interlaced_lines

FIELDS = ("z", "line", "omega", "index")
LINE_FIELDS = ("line", "omega")
# ``{z}`` or ``{z:04d}``-like: an integer presentation of at most MAX_FIELD_WIDTH characters
_INT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?#?0?(?P<width>\d*)[,_]?[bdoxXn]?")
MAX_FIELD_WIDTH = 32
EXAMPLES = "e.g. frame_{index:06d}.cbf or slice_{z:04d}/line_{line:05d}/frame_{index:06d}.cbf"


def template_fields(template: str) -> tuple[str, ...]:
    """The distinct fields of ``template`` in order of first appearance; ValueError (one line)
    for a template that is not a valid format string, an unknown field, or a field whose format
    is not an integer one (no conversion, no precision, no nested field, width <= 32: a spec like
    ``{index:>999999999}`` would make every path a gigabyte string)."""
    try:
        parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(f"is not a valid template ({err}): {EXAMPLES} (got {template!r})") from None
    out: list[str] = []
    for f, spec, conv in parts:
        if f not in FIELDS:
            raise ValueError(f"unknown field {{{f}}}: a template takes {', '.join(f'{{{k}}}' for k in FIELDS)}, "
                             f"{EXAMPLES} (got {template!r})")
        m = _INT_SPEC.fullmatch(spec or "")
        if conv is not None or m is None or "{" in (spec or ""):
            raise ValueError(f"the {{{f}}} field must have an integer format such as {{{f}:06d}} (got {template!r})")
        if m["width"] and int(m["width"]) > MAX_FIELD_WIDTH:
            raise ValueError(f"the {{{f}}} field's width {int(m['width'])} is above {MAX_FIELD_WIDTH} "
                             f"(got {template!r})")
        if f not in out:
            out.append(f)
    try:
        template.format(**{f: 0 for f in out}), template.format(**{f: 10**12 for f in out})
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot format frame numbers with {template!r} ({err})") from None
    return tuple(out)


def check_template(template: str, hdf5: bool) -> tuple[str, ...]:
    """Validate a frames template without the scan (the schema's field check); returns its fields.
    A CBF template needs ``{index}`` (a file per frame); an HDF5 one must not have it (a file per
    slice or line, frames in its dataset)."""
    fields = template_fields(template)
    if not hdf5 and "index" not in fields:
        raise ValueError(f"must contain an {{index}} field (a CBF file per frame), {EXAMPLES} (got {template!r})")
    if hdf5 and "index" in fields:
        raise ValueError(f"an HDF5 template names a file per slice or line ({{z}}, {{line}}, {{omega}}), its frames "
                         f"in its dataset: no {{index}} field, e.g. slice_{{z:04d}}.h5::/entry/data/data "
                         f"(got {template!r})")
    return fields


@dataclass(frozen=True)
class ScanShape:
    """The scan shape and order the layout fields are counted in (hashable: part of a source's key)."""

    nz: int
    nomega: int
    nx: int
    fast_axis: str = "x"
    order: str = "snake"
    passes: int = 2

    @classmethod
    def of(cls, scan) -> ScanShape:
        """From a workflow's :class:`~xrdct_dask.config.sections.Scan`."""
        return cls(scan.nz, scan.nomega, scan.nx, scan.fast_axis, scan.order, scan.interlace_passes)

    @property
    def nfast(self) -> int:
        return self.nx if self.fast_axis == "x" else self.nomega

    @property
    def nslow(self) -> int:
        return self.nomega if self.fast_axis == "x" else self.nx

    @property
    def per_slice(self) -> int:
        return self.nomega * self.nx


def check_for_scan(template: str, scan: ScanShape, hdf5: bool) -> None:
    """ValueError (one line) where the template cannot name the frames of this scan: ``{omega}``
    with ``fast_axis: omega`` (a line sweeps omega, it has no one angle), ``{line}``/``{omega}``
    without ``{z}`` in a scan of several slices (line 0 of every slice would be the same file)."""
    fields = check_template(template, hdf5)
    if "omega" in fields and scan.fast_axis != "x":
        raise ValueError(f"{{omega}} names a line's angle, but with scan.fast_axis omega a line sweeps omega: "
                         f"use {{line}} (got {template!r})")
    if set(fields) & set(LINE_FIELDS) and "z" not in fields and scan.nz > 1:
        raise ValueError(f"{{line}} and {{omega}} count within a slice: a scan of {scan.nz} slices needs {{z}} "
                         f"in the template too (got {template!r})")


class FrameTemplate:
    """``template`` with its fields computed from acquisition indices (see the module docstring).

    ``template.format(**fields(i))`` is the file of frame ``i``; :meth:`local` is its frame in
    that file (HDF5 templates), :attr:`scope` what ``{index}`` counts within.
    """

    def __init__(self, template: str, scan: ScanShape | None, hdf5: bool = False):
        self.template, self.hdf5 = template, hdf5
        self.fields = check_template(template, hdf5)
        self.layered = bool(set(self.fields) - {"index"})
        if self.layered and scan is None:
            raise ValueError(f"frames {template!r}: a template with {{z}}, {{line}} or {{omega}} needs the scan's "
                             "shape to compute them (open it through the workflow)")
        if scan is not None and self.layered:
            check_for_scan(template, scan, hdf5)
        self.scan = scan if self.layered else None
        self.scope = "line" if set(self.fields) & set(LINE_FIELDS) else "slice" if "z" in self.fields else "scan"

    def __reduce__(self):
        return type(self), (self.template, self.scan, self.hdf5)

    @cached_property
    def _omega_of_line(self) -> np.ndarray | None:
        if "omega" not in self.fields:
            return None
        if self.scan.order == "interlaced":

            return interlaced_lines(self.scan.nomega, self.scan.passes)
        return np.arange(self.scan.nomega)

    def local(self, index: int) -> int:
        """Frame ``index``'s number within its unit (the value of ``{index}``)."""
        s = self.scan
        if self.scope == "scan":
            return int(index)
        if self.scope == "slice":
            return int(index) % s.per_slice
        return int(index) % s.nfast

    def values(self, index: int) -> dict[str, int]:
        """The field values of acquired frame ``index`` (>= 0)."""
        i = int(index)
        if not self.layered:
            return {"index": i}
        s = self.scan
        line = (i // s.nfast) % s.nslow
        out = {"z": i // s.per_slice, "line": line, "index": self.local(i)}
        if self._omega_of_line is not None:
            out["omega"] = int(self._omega_of_line[line])
        return out

    def format(self, index: int) -> str:
        """The path (as a string) of frame ``index``."""
        return self.template.format(**self.values(index))

    def unit_start(self, index: int) -> int:
        """Acquisition index of the first frame of ``index``'s file (an HDF5 template)."""
        return int(index) - self.local(index)

    def root(self) -> str:
        """The longest leading part of the template without a field, up to its last ``/``: the folder
        holding every frame file (``slice_{z}/f_{index}.cbf`` -> ``""``, ``data/s_{z}/...`` -> ``data``)."""
        head = self.template.split("{", 1)[0]
        return head.rsplit("/", 1)[0] if "/" in head else ""
