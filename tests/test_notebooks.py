"""The notebooks in notebooks/ are committed with their outputs (figures, printed results), made
by executing them (``make notebooks``); executed again here they give outputs of the same
structure, without error, and show their figures.

Each runs on tiny simulated data against a stand-in local scheduler (no XRDCT_SCHEDULER), in a
fresh kernel, in its own tmp dir.  The fast tests read the stored notebooks only: their outputs
are there, notebook 01 names the stages the dashboard shows, notebook 03 writes Å.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# figures each notebook must show (image/png outputs), i.e. every plotting cell produced one
MIN_FIGURES = {"01_attach_and_run": 3, "02_reprocess_compare": 2, "03_pdf_ct_maps": 3, "04_texture_strain": 3}
# what the stand-in's last figure must show in notebook 03 (a probe cell run after the notebook)
PROBE = ("import json\nprint(json.dumps([{'colorbar': hasattr(a, '_colorbar'), 'label': a.get_ylabel(), "
         "'title': a.get_title(), 'xlabel': a.get_xlabel()} for a in fig.axes]))")


def test_the_four_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == sorted(MIN_FIGURES)


def structure(nb) -> list[tuple]:
    """Per code cell: the figures it shows, whether it prints to stdout, and the kinds of its other
    outputs (output type and MIME types); stderr (warnings that depend on the machine's load) and
    the values themselves (paths, ports, timings) left out."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        figures = sum("image/png" in o.get("data", {}) for o in outputs)
        stdout = any(o.get("output_type") == "stream" and o.get("name") == "stdout" for o in outputs)
        kinds = sorted({(o["output_type"], *sorted(o.get("data", {}))) for o in outputs
                        if o.get("output_type") != "stream"})
        out.append((figures, stdout, kinds))
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_stored_with_their_outputs(path):
    """A reader sees the figures: every notebook is stored executed (``make notebooks``), its
    figures in it, no error, every code cell but the set-up one with an output."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    got = structure(nb)
    assert sum(f for f, _, _ in got) >= MIN_FIGURES[path.stem], f"{path.name}: stored without its figures"
    assert not any(k[0] == "error" for *_, kinds in got for k in kinds)
    assert all(f or stdout or kinds for f, stdout, kinds in got[1:]), f"{path.name}: a cell stored without outputs"


def test_notebook_01_names_the_stages_the_dashboard_shows():
    """The task names notebook 01 tells the reader to look for are the stages of its run (the
    simulated scan's workflow: the default PDF order), all of them."""
    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.stages import stage_names
    from xrdct_dask.resources import WORKFLOW_TEMPLATE

    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    said = re.search(r"task names[^)]*\)", text, re.S)
    assert said, "notebook 01 no longer says which task names the dashboard shows"
    assert re.findall(r"`([a-z-]+)`", said.group(0)) == stage_names(load_workflow(WORKFLOW_TEMPLATE)), said.group(0)


def test_notebook_04_finds_the_texture_and_strain_within_its_tolerances():
    """Notebook 04 runs the demo sample of :mod:`xrdct_dask.simulate.texture` (the one
    tests/test_texture.py checks with the same :func:`demo_checks`) and its stored output shows
    every check of the stated tolerances passed: texture index, orientation and strain of Ni 200
    and Fe 211, index and strain of the NaCl 220 powder (8 rows)."""
    from xrdct_dask.simulate.texture import DEMO_TOLERANCES

    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(next(p for p in NOTEBOOKS if p.stem == "04_texture_strain"), as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for name in ("DEMO_TEXTURES", "DEMO_PEAKS", "DEMO_SCAN", "DEMO_SECTORS", "demo_checks", "texture_report"):
        assert name in source, name
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("name") == "stdout")
    rows = re.findall(r"^(\w+ \d+) +(.+?) +found ([-+.\d]+) +truth ([-+.\d]+) +tolerance ([.\de-]+) +(ok|OUTSIDE)$",
                      text, flags=re.M)
    assert len(rows) == 8 and all(r[-1] == "ok" for r in rows), rows
    assert {float(r[4]) for r in rows} <= set(DEMO_TOLERANCES.values())
    for _peak, figure, found, truth, tol, _ in rows:
        assert abs(float(found) - float(truth)) < float(tol) or (
            figure.startswith("orientation") and abs(abs(float(found) - float(truth)) - 180) < float(tol))
    assert "all 8 within the stated tolerances: True" in text


def test_notebook_03_writes_angstrom():
    """Distances are in Å (never "A"), in the text and in the figures' labels and titles."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS[2], as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert not re.findall(r"\d A\b|\(A\)|\d A\)", text), re.findall(r".{20}(?:\d A\b|\(A\)|\d A\)).{5}", text)
    assert "Å" in text


@pytest.mark.slow  # each notebook runs the workflow: ~30 s
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_gives_the_stored_outputs(path, tmp_path, monkeypatch):
    """Executed again, each notebook gives outputs of the structure stored in it (figures per cell,
    printed text, output kinds), without error; notebook 01 prints the dashboard link; the last
    figure of notebook 03 has a colour bar with its unit for each map (G in Å⁻², the phantom's
    volume fraction) and writes Å."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    monkeypatch.setenv("XRDCT_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.delenv("XRDCT_SCHEDULER", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # the kernel imports this checkout, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(path.parents[1]),
                                                                   os.environ.get("PYTHONPATH")])))
    stored = nbformat.read(path, as_version=4)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.pop("outputs", None) if cell.cell_type != "code" else cell.update(outputs=[], execution_count=None)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    probe = nbformat.v4.new_code_cell(PROBE)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)  # raises CellExecutionError naming the cell on any error
        if path.stem == "03_pdf_ct_maps":  # in the same kernel: the notebook's last figure is `fig`
            nb.cells.append(probe)
            client.execute_cell(probe, len(nb.cells) - 1)
            nb.cells.pop()
    assert structure(nb) == structure(stored), f"{path.name}: run `make notebooks` to store its new outputs"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    if path.stem == "03_pdf_ct_maps":  # its last cell embeds the viewer: Bokeh's app output, served from the kernel
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert any("application/vnd.bokehjs_exec.v0+json" in o.get("data", {}) for o in outputs), "no viewer shown"
    assert "dashboard" in text or path.stem != "01_attach_and_run"
    if path.stem == "03_pdf_ct_maps":
        axes = json.loads("".join(o["text"] for o in probe.outputs if o.get("name") == "stdout"))
        bars = [a["label"] for a in axes if a["colorbar"]]
        assert bars == ["G (Å⁻²)", "Ni volume fraction (1)"], axes
        words = " ".join(a["title"] + " " + a["xlabel"] + " " + a["label"] for a in axes)
        assert "Å" in words and not re.search(r"\d A\b|\(A\)", words), words
