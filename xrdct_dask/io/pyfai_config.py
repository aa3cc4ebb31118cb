"""An ``integration.json`` of pyFAI-calib2 / pyFAI-integrate as workflow keys.

pyFAI parses the file (:class:`pyFAI.io.integration_config.WorkerConfig`: every version from 1 to
its current one, upgraded by pyFAI's own ``normalize``); this module only maps its fields onto
the workflow's keys:

    poni (geometry, detector)       inputs.poni (the file itself: :func:`xrdct_dask.integrate.csr.load_poni` reads it)
    mask_file, dark_current,        inputs.mask, inputs.dark, inputs.flat (several files: a list, averaged;
    flat_field                      relative paths from the file's folder)
    nbpt_rad, nbpt_azim             integrate.npt_rad, integrate.npt_azim (2D only)
    unit, radial_range              integrate.unit (q_nm^-1, q_A^-1, 2th_deg), integrate.radial_range
    azimuth_range                   integrate.azimuth_range (2D or a 1D sector)
    method (split, algo, impl)      integrate.split: no, bbox, full; pseudo -> full and any algo -> CSR,
                                    with one warning line (the nearest this project has)
    integrator_method, extra_options integrate.outlier sigma-clip (thres, max_iter) / median (percentile)
    error_model                     integrate.error_model: poisson, azimuthal, none (hybrid -> poisson, warned)
    polarization_description        geometry.polarization_factor (null: none)
    correct_solid_angle             geometry.solid_angle

A key written in the workflow wins over the file; :func:`merge_pyfai_config` says where each came from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

UNITS = ("q_nm^-1", "q_A^-1", "2th_deg")
SPLITS = {"no": "no", "bbox": "bbox", "full": "full", "pseudo": "full"}
ERROR_MODELS = {"poisson": "poisson", "azimuthal": "azimuthal", "no": "none", "none": "none", "hybrid": "poisson"}


class PyFAIConfigError(ValueError):
    """An ``integration.json`` that cannot be read or has no equivalent here (one line)."""


def read_pyfai_config(path):
    """pyFAI's :class:`WorkerConfig` of an ``integration.json`` (any version pyFAI reads)."""
    # lazy: --help stays fast (config.load imports this module; pyFAI is slow to import)
    from pyFAI.io.integration_config import WorkerConfig

    path = Path(path)
    if not path.is_file():
        raise PyFAIConfigError(f"{path}: file not found")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PyFAIConfigError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(raw, dict):
        raise PyFAIConfigError(f"{path}: not a pyFAI integration configuration (a JSON object)")
    try:
        return WorkerConfig.from_dict(raw, inplace=True)
    except Exception as err:  # pyFAI raises many kinds on a broken file
        raise PyFAIConfigError(f"{path}: pyFAI cannot read it as an integration configuration "
                               f"({type(err).__name__}: {err})") from None


def workflow_values(cfg, folder: Path) -> tuple[dict, list[str]]:
    """``({dotted workflow key: value}, warnings)`` of a :class:`WorkerConfig` (see the module
    docstring); ``folder``: where relative file names of the configuration start from."""
    out: dict = {}
    warnings: list[str] = []

    def files(value):
        if value in (None, "", []):
            return None
        names = [value] if isinstance(value, str) else list(value)
        paths = [str(Path(n) if Path(n).is_absolute() else folder / n) for n in names]
        return paths[0] if len(paths) == 1 else paths

    for key, value in (("inputs.mask", cfg.mask_file), ("inputs.dark", cfg.dark_current),
                       ("inputs.flat", cfg.flat_field)):
        f = files(value)
        if f is not None:
            out[key] = f
    if cfg.nbpt_rad:
        out["integrate.npt_rad"] = int(cfg.nbpt_rad)
    if cfg.nbpt_azim and int(cfg.nbpt_azim) > 1:
        out["integrate.npt_azim"] = int(cfg.nbpt_azim)
    if cfg.unit is not None:
        unit = getattr(cfg.unit, "name", str(cfg.unit))
        if unit not in UNITS:
            raise PyFAIConfigError(f"unit {unit}: this project integrates in {', '.join(UNITS)} "
                                   f"(set integrate.unit in the workflow)")
        out["integrate.unit"] = unit
    if cfg.radial_range:
        out["integrate.radial_range"] = [float(v) for v in cfg.radial_range]
    if cfg.azimuth_range:
        lo, hi = (float(v) for v in cfg.azimuth_range)
        if cfg.chi_discontinuity_at_0 and hi > 180:  # pyFAI's chi from 0 to 360: here -180..180
            if lo < 180:
                raise PyFAIConfigError(f"azimuth_range {lo:g}..{hi:g} deg crosses chi = 180 deg (the discontinuity "
                                       f"here): split it, or set integrate.azimuth_range in the workflow")
            lo, hi = lo - 360, hi - 360
        out["integrate.azimuth_range"] = [lo, hi]
    if cfg.method is not None:
        split, algo, impl = cfg.method.split, cfg.method.algo, cfg.method.impl
        near = SPLITS.get(str(split).lower(), "full")
        out["integrate.split"] = near
        if near != split or str(algo).lower() != "csr":
            warnings.append(f"pyFAI method ({split}, {algo}, {impl}) has no equal here: integrating with {near} pixel "
                            f"splitting, CSR (the nearest; engine from integrate.engine)")
    name = (cfg.integrator_method or "").lower()
    extra = cfg.extra_options or {}
    if "sigma_clip" in name:
        out["integrate.outlier"] = "sigma-clip"
        if "thres" in extra:
            out["integrate.clip_threshold"] = float(extra["thres"])
        if "max_iter" in extra:
            out["integrate.max_iter"] = int(extra["max_iter"])
    elif "medfilt" in name:
        out["integrate.outlier"] = "median"
        if "percentile" in extra:
            p = extra["percentile"]
            out["integrate.percentile"] = [float(p), float(p)] if isinstance(p, (int, float)) else [float(v) for v in p]
    if cfg.error_model is not None:
        em = getattr(cfg.error_model, "as_str", lambda: str(cfg.error_model))().lower()
        if em in ERROR_MODELS:
            out["integrate.error_model"] = ERROR_MODELS[em]
            if em == "hybrid":
                warnings.append("pyFAI error model hybrid has no equal here: poisson (the nearest)")
        else:
            warnings.append(f"pyFAI error model {em} has no equal here: the workflow's integrate.error_model is kept")
    pol = cfg.polarization_description
    if pol is None:
        out["geometry.polarization_factor"] = None
    else:
        out["geometry.polarization_factor"] = float(pol.polarization_factor)
        if float(getattr(pol, "axis_offset", 0) or 0) != 0:
            warnings.append(f"polarisation axis offset {pol.axis_offset} is not applied here (factor only)")
    out["geometry.solid_angle"] = bool(cfg.correct_solid_angle)
    if cfg.val_dummy is not None:
        warnings.append(f"dummy value {cfg.val_dummy} is not masked here: mask those pixels with inputs.mask")
    return out, warnings


def _get(raw: dict, dotted: str):
    cur = raw
    for k in dotted.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return _MISSING
        cur = cur[k]
    return cur


_MISSING = object()


def merge_pyfai_config(raw: dict) -> tuple[dict, list[str]]:
    """The workflow dict ``raw`` (paths resolved) with the keys its ``inputs.pyfai_config`` gives and
    it does not (``inputs.poni`` the configuration file itself where no PONI is named), and one
    line per key saying where its value comes from (``integrate.npt_rad = 2000: integration.json``;
    ``integrate.unit = q_A^-1: the workflow (integration.json says 2th_deg)``), warnings first."""
    path = Path(raw["inputs"]["pyfai_config"])
    cfg = read_pyfai_config(path)
    try:
        values, warnings = workflow_values(cfg, path.parent)
    except PyFAIConfigError as err:
        raise PyFAIConfigError(f"{path}: {err}") from None
    raw = json.loads(json.dumps(raw))
    notes = [f"inputs.pyfai_config {path.name}: {w}" for w in warnings]
    if raw["inputs"].get("poni") in (None, ""):
        raw["inputs"]["poni"] = str(path)
        notes.append(f"inputs.poni (geometry, detector): {path.name}")
    for key, value in values.items():
        given = _get(raw, key)
        if given is _MISSING:
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
            notes.append(f"{key} = {value}: {path.name}")
        elif given != value:
            notes.append(f"{key} = {given}: the workflow ({path.name} says {value})")
    for n in notes:
        log.info("%s", n)
    return raw, notes
