"""Integration plans built once and kept on disk, keyed by everything that makes them.

pyFAI's full-split sparse matrix of a Pilatus 2M with 2000 bins takes many seconds to build, and
every worker process of a run needs the same one.  :func:`cached_plan` builds it once (the client,
while it prepares the store) and writes it as an ``.npz`` under the cache folder; the workers of
every node that sees that folder, and every later run on the same geometry, load it in a second.

The key is a sha256 of the PONI geometry (pyFAI's own config of it), the frame shape, the bins,
unit, radial range, splitting, polarization and solid-angle switches, the contents of the mask,
dark and flat, and the pyFAI version: anything that changes the matrix or the corrections
changes the file name, so a stale plan is never used.  Files are written beside their final name
and renamed into place (a reader never sees half of one) and loaded without pickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyFAI

from xrdct_dask.integrate.csr import IntegrationPlan, build_plan

log = logging.getLogger(__name__)

FORMAT = 1  # bump when IntegrationPlan's fields change meaning


def cache_dir(configured: str | Path | None = None) -> Path:
    """``configured``, else ``$XRDCT_CACHE_DIR``, else ``$XDG_CACHE_HOME/xrdct-dask`` (``~/.cache``)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("XRDCT_CACHE_DIR"):
        return Path(os.environ["XRDCT_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xrdct-dask"


def plan_key(ai, shape, npt_rad: int, unit: str, *, mask=None, dark=None, flat=None,
             polarization_factor=None, solid_angle: bool = True, split: str = "full", radial_range=None,
             npt_azim: int = 1, azimuth_range=None) -> str:
    """sha256 (hex) of everything :func:`~xrdct_dask.integrate.csr.build_plan` depends on."""

    h = hashlib.sha256()
    config = {k: v for k, v in ai.get_config().items() if k not in ("poni_version",)}
    # sectors only where asked for: a 1D plan keeps the key (and the cached file) it had before them
    sectors = {} if npt_azim == 1 and azimuth_range is None else {
        "npt_azim": int(npt_azim),
        "azimuth_range": None if azimuth_range is None else [float(v) for v in azimuth_range]}
    h.update(json.dumps({"format": FORMAT, "pyFAI": pyFAI.version, "geometry": config, "shape": list(shape),
                         "npt_rad": int(npt_rad), "unit": unit, "polarization": polarization_factor,
                         "solid_angle": bool(solid_angle), "split": split,
                         "radial_range": None if radial_range is None else [float(v) for v in radial_range]}
                        | sectors, sort_keys=True, default=str).encode())
    for name, image in (("mask", mask), ("dark", dark), ("flat", flat)):
        h.update(name.encode())
        if image is not None:
            a = np.ascontiguousarray(image)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    if ai.detector.mask is not None:
        h.update(np.ascontiguousarray(ai.detector.mask).tobytes())
    return h.hexdigest()


def _save(plan: IntegrationPlan, path: Path) -> None:
    arrays, meta = {}, {}
    for f in fields(plan):
        v = getattr(plan, f.name)
        if isinstance(v, np.ndarray):
            arrays[f.name] = v
        elif v is None:
            meta[f.name] = None
        else:
            meta[f.name] = list(v) if isinstance(v, tuple) else v
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path) -> IntegrationPlan:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        kw = {k: z[k] for k in z.files if k != "__meta__"}
    kw |= {k: (tuple(v) if k == "shape" else v) for k, v in meta.items()}
    return IntegrationPlan(**kw)


def cached_radial(ai, shape, npt_rad: int, unit: str = "q_nm^-1", *, directory: str | Path | None = None,
                  **options) -> np.ndarray | None:
    """The bin centres of the plan :func:`cached_plan` would give, read from the cache folder
    without building anything (that one array of its file); None where no such plan is cached."""
    path = cache_dir(directory) / f"plan-{plan_key(ai, shape, npt_rad, unit, **options)[:32]}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["radial"], np.float64)
    except (OSError, ValueError, KeyError):
        return None


def cached_plan(ai, shape, npt_rad: int, unit: str = "q_nm^-1", *, directory: str | Path | None = None,
                **options) -> IntegrationPlan:
    """:func:`~xrdct_dask.integrate.csr.build_plan` of these arguments, from the cache folder when an
    equal one was built before (by any process that shares the folder), else built and stored there.
    A cache that cannot be read or written is only a slower start: the plan is built in memory."""
    key = plan_key(ai, shape, npt_rad, unit, **options)
    folder = cache_dir(directory)
    path = folder / f"plan-{key[:32]}.npz"
    if path.is_file():
        try:
            plan = _load(path)
            log.info("integration plan loaded from %s", path)
            return plan
        except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged file: build it again
            log.warning("%s: unreadable cached plan (%s); building it again", path, err)
    plan = build_plan(ai, shape, npt_rad, unit, **options)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _save(plan, path)
    except OSError as err:
        log.warning("could not keep the integration plan in %s (%s): every worker builds its own", folder, err)
    return plan
