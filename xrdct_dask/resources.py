"""Files shipped inside the package, so that ``xrdct`` works from any folder, not only a checkout.

    xrdct_dask/profiles/*.yaml       batch-system profiles (dask-jobqueue keys), see cluster.py
    xrdct_dask/data/workflow.yaml    the documented workflow: every key, its default and unit
    xrdct_dask/data/throughputs.json the figures lines of benchmarks/RESULTS.md that ``xrdct plan``
                                     turns into hours (tests/test_packaging.py keeps them equal)

They are listed in ``[tool.setuptools.package-data]`` of pyproject.toml; a wheel installs them as
plain files next to the modules, so they are found relative to this file.
"""

from __future__ import annotations

import json
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROFILES_DIR = PACKAGE_DIR / "profiles"
WORKFLOW_TEMPLATE = PACKAGE_DIR / "data" / "workflow.yaml"
THROUGHPUTS = PACKAGE_DIR / "data" / "throughputs.json"


def shipped_throughputs() -> dict[str, float]:
    """The throughput figures shipped with the package: ``{"gpu_frames_per_s": 9700.0, ...}``.

    Keys are those of the figures lines of ``benchmarks/RESULTS.md`` (frames/s; per GPU, or per
    CPU core for ``cpu_frames_per_s_per_core``); the ``source`` entry (where they were copied
    from) is left out.
    """
    raw = json.loads(THROUGHPUTS.read_text())
    return {k: float(v) for k, v in raw.items() if k != "source"}


def write_workflow_template(path: str | Path) -> Path:
    """Write the documented workflow template to ``path`` (a folder: ``path/workflow.yaml``).

    Creates missing parent folders; never replaces an existing file (exclusive create), so
    :class:`FileExistsError` names the file that is already there.  Returns the file written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "workflow.yaml"
    text = WORKFLOW_TEMPLATE.read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as f:
            f.write(text)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists: not overwritten (give another path or move it away)") from None
    return path
