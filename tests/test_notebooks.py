"""The notebooks in notebooks/ execute top to bottom without error and show their figures.

Each runs on tiny simulated data against a stand-in local scheduler (no XRDCT_SCHEDULER), in a
fresh kernel, in its own tmp dir.  ``pytest --nbmake notebooks`` runs them the same way, without
the figure check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# figures each notebook must show (image/png outputs), i.e. every plotting cell produced one
MIN_FIGURES = {"01_attach_and_run": 3, "02_reprocess_compare": 2, "03_pdf_ct_maps": 3}


def test_the_three_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == sorted(MIN_FIGURES)


@pytest.mark.slow  # each notebook runs the workflow: ~30 s
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_figures(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    monkeypatch.setenv("XRDCT_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.delenv("XRDCT_SCHEDULER", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # the kernel imports this checkout, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(path.parents[1]),
                                                                   os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()  # raises CellExecutionError naming the cell on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= MIN_FIGURES[path.stem], f"{path.name}: {len(figures)} figures shown"
    if path.stem == "03_pdf_ct_maps":  # its last cell embeds the viewer: Bokeh's app output, served from the kernel
        assert any("application/vnd.bokehjs_exec.v0+json" in o.get("data", {}) for o in outputs), "no viewer shown"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "dashboard" in text or path.stem != "01_attach_and_run"
