"""PDFgetX3's files: its configuration files in, its ``.iq``/``.sq``/``.fq``/``.gr`` files out.

A PDFgetX3 configuration (diffpy.pdfgetx manual, "Files used in PDF extraction") is an INI file
with a mandatory ``[DEFAULT]`` section and optional named sections applied on top of it
(``pdfgetx3 --config=FILE --section=NAME``); its output files start with the same kind of header
("can be used as a valid configuration file") followed by ``#### start data``, ``#S 1``, a ``#L``
line naming the two columns, and the two columns.  :func:`read_config` turns the parameters this
package shares with PDFgetX3 into ``pdf`` workflow keys; :func:`format_header` and
:func:`write_curve` write files in that layout, which PDFgui and diffpy.srfit's ``PDFParser``
read (the ``qmax`` line is how they learn the termination Q).
"""

from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np

from xrdct_dask.errors import PDFParameterError

#: PDFgetX3 ``dataformat`` -> this package's ``integrate.unit`` (the x column of a background file)
DATAFORMAT_UNITS = {"twotheta": "2th_deg", "QA": "q_A^-1", "Qnm": "q_nm^-1"}
FLOAT_KEYS = ("qmin", "qmax", "qmaxinst", "rpoly", "rmin", "rmax", "rstep")
#: keys of the ``pdf`` workflow section a PDFgetX3 configuration can set
WORKFLOW_KEYS = ("composition", *FLOAT_KEYS, "bgscale", "background", "background_file")
COLUMNS = {"iq": ("Q($\\AA^{-1}$)", "I($a.u.$)"), "sq": ("Q($\\AA^{-1}$)", "S"),
           "fq": ("Q($\\AA^{-1}$)", "F($\\AA^{-1}$)"), "gr": ("r($\\AA$)", "G($\\AA^{-2}$)")}
START_DATA = "#### start data"


def _parser(path: Path) -> configparser.ConfigParser:
    if not path.is_file():
        raise PDFParameterError(f"pdf.config: {path} not found")
    text = path.read_text(errors="replace")
    # a PDFgetX3 output file is a configuration too: the header, up to its data block
    text = text.split(START_DATA, 1)[0]
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None, strict=False)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as err:
        raise PDFParameterError(f"pdf.config: {path} is not a PDFgetX3 configuration "
                                f"({str(err).splitlines()[0]})") from None
    return parser


def read_config(path: str | Path, section: str | None = None) -> dict:
    """The ``pdf`` workflow keys set by a PDFgetX3 configuration file: its ``[DEFAULT]`` values,
    overlaid by ``section`` when given (as ``pdfgetx3 -c FILE -s SECTION``).

    Maps ``composition``, ``qmin``, ``qmax``, ``qmaxinst``, ``rpoly``, ``rmin``, ``rmax``, ``rstep``
    one to one, ``bgscale`` (or the first of ``bgscales``), and a non-empty ``backgroundfile``
    (relative to the file's folder) to ``background: file`` + ``background_file``; other keys
    (``dataformat``, ``wavelength``, ``outputtypes``, ...) concern reading the powder file and are
    not used.  ``qmaxinst = 0`` means "same as qmax" and is left out.

    Raises :class:`PDFParameterError` (one line) for a missing or unreadable file, a missing
    section, a ``mode`` other than ``xray``, a non-numeric value, or a file with no PDF parameters.
    """
    path = Path(path)
    parser = _parser(path)
    if section is not None and not parser.has_section(section):
        have = ", ".join(parser.sections()) or "none"
        raise PDFParameterError(f"pdf.config_section: no [{section}] in {path} (sections: {have})")
    values = dict(parser[section] if section is not None else parser.defaults())
    if not set(values) & {"composition", *FLOAT_KEYS}:
        have = ", ".join(parser.sections()) or "none"
        raise PDFParameterError(f"pdf.config: no PDF parameters in [{section or 'DEFAULT'}] of {path}; "
                                f"choose a section with pdf.config_section (sections: {have})")
    mode = values.get("mode", "xray").strip()
    if mode != "xray":
        raise PDFParameterError(f"pdf.config: {path} has mode = {mode}; only xray data are supported")
    out: dict = {}
    if values.get("composition", "").strip():
        out["composition"] = values["composition"].strip()
    for key in FLOAT_KEYS:
        raw = values.get(key, "").strip()
        if not raw:
            continue
        try:
            out[key] = float(raw)
        except ValueError:
            raise PDFParameterError(f"pdf.config: {key} = {raw!r} in {path} is not a number") from None
    if out.get("qmaxinst") == 0.0:
        del out["qmaxinst"]
    raw = (values.get("bgscale") or values.get("bgscales") or "").replace(",", " ").split()
    if raw:
        try:
            out["bgscale"] = float(raw[0])
        except ValueError:
            raise PDFParameterError(f"pdf.config: bgscale = {raw[0]!r} in {path} is not a number") from None
    bg = (values.get("backgroundfile") or values.get("backgroundfiles") or "").replace(",", " ").split()
    if bg:
        bg_path = Path(bg[0])
        out["background"] = "file"
        out["background_file"] = str(bg_path if bg_path.is_absolute() else path.parent / bg_path)
    return out


def config_dataformat(path: str | Path, section: str | None = None) -> str | None:
    """The configuration's ``dataformat`` as an ``integrate.unit`` (None when absent or unknown)."""
    parser = _parser(Path(path))
    values = dict(parser[section] if section is not None and parser.has_section(section) else parser.defaults())
    return DATAFORMAT_UNITS.get(values.get("dataformat", "").strip())


def merge_config(pdf: dict) -> dict:
    """A ``pdf`` workflow section (a plain dict, as read from YAML) with ``config`` (and maybe
    ``config_section``) filled in from that PDFgetX3 configuration: the file's values for the keys
    the section does not give, the section's own keys winning.  A section that gives every key (a
    stored workflow) is returned as it is, and the file is not read."""
    if not pdf.get("config") or all(k in pdf for k in WORKFLOW_KEYS if k != "background_file"):
        return pdf
    return {**read_config(pdf["config"], pdf.get("config_section")), **pdf}


def background_unit_error(pdf, unit: str) -> str | None:
    """Why ``pdf`` (a validated section) cannot use its background file with data integrated in
    ``unit``, or None: a background file named by a PDFgetX3 configuration is in that file's
    ``dataformat``."""
    if pdf.config is None or not Path(pdf.config).is_file() or pdf.background != "file" or not pdf.background_file:
        return None
    from_cfg = read_config(pdf.config, pdf.config_section).get("background_file")
    fmt = config_dataformat(pdf.config, pdf.config_section)
    if from_cfg is None or Path(from_cfg) != Path(pdf.background_file) or fmt in (None, unit):
        return None
    return (f"pdf.config: its backgroundfile is in {fmt} (dataformat) but integrate.unit is {unit}; "
            f"integrate in {fmt} or give pdf.background_file in {unit}")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.8g}"
    return str(value)


def format_header(params: dict, outputtype: str, *, inputfile: str = "", backgroundfile: str = "",
                  bgscale: float = 1.0, wavelength_A: float | None = None, version: str = "",
                  comments: list[str] | None = None) -> str:
    """A PDFgetX3-style header: ``[DEFAULT]`` with the processing parameters, ending with the
    ``#### start data`` / ``#S 1`` / ``#L`` lines of ``outputtype`` (iq, sq, fq or gr).

    ``params`` holds at least composition, qmin, qmax, qmaxinst, rpoly, rmin, rmax, rstep (Q in
    1/A, r in A), e.g. a :class:`~xrdct_dask.pdf.PDFOperator`'s ``params``; ``comments`` become
    ``#`` lines (what PDFgetX3 has no key for: the voxel, the scale N, ...).
    """
    if outputtype not in COLUMNS:
        raise ValueError(f"outputtype must be one of {', '.join(COLUMNS)} (got {outputtype!r})")
    lines = ["[DEFAULT]", "", f"version = {version}", "", "# input and output specifications",
             "dataformat = QA", f"inputfile = {inputfile}", f"backgroundfile = {backgroundfile}",
             f"outputtype = {outputtype}", "", "# PDF calculation setup", "mode = xray"]
    if wavelength_A:
        lines.append(f"wavelength = {_fmt(wavelength_A)}")
    lines += [f"composition = {params['composition']}", f"bgscale = {_fmt(bgscale)}"]
    lines += [f"{key} = {_fmt(params[key])}" for key in ("rpoly", "qmaxinst", "qmin", "qmax", "rmin", "rmax", "rstep")]
    lines += ["", *(f"# {c}" for c in comments or []), "",
              "# End of config " + "-" * 62, "", START_DATA, "#S 1", "#L {}  {}".format(*COLUMNS[outputtype])]
    return "\n".join(lines) + "\n"


def write_curve(path: str | Path, x, y, header: str) -> Path:
    """Write ``header`` and two columns ``x y`` (``%.9g``) to a new file ``path``.

    Refuses (``FileExistsError``, one line) to replace an existing file: it was not written by
    this call and may be someone's data.
    """
    path = Path(path)
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{path.name}: {x.size} x values but {y.size} y values")
    body = "".join(f"{a:.9g} {b:.9g}\n" for a, b in zip(x, y))
    try:
        with open(path, "x") as fh:
            fh.write(header + body)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; not overwritten (choose another --pdf-files folder)") from None
    return path
