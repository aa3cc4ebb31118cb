"""Reprocess (:mod:`xrdct_dask.runs.reprocess`): where its output may go, and the stores beside it.

Reprocess and the stores beside it (issue 25, item 18): ``--out`` inside the parent store is
refused (as is any store inside another), and the half-built stores killed reprocesses leave
beside their output are removed when provably this program's and stale, and reported otherwise.

Which stages a change reruns is checked on the resilience suite's reference run
(``tests/test_resilience.py``: the step each key starts from, a change of nothing refused, from
recon against a fresh run, many runs as one graph), and on a stage added to the table in
``tests/test_graph.py``."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.config import WorkflowError, load_workflow
from xrdct_dask.runs.open import open_run


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A parent store whose integration is marked done (its template only: nothing to compute here)."""
    from xrdct_dask.simulate import simulate_scan

    scan = simulate_scan(tmp_path_factory.mktemp("rps") / "scan", nz=1, nomega=8, nx=6, seed=8)
    wf = load_workflow(scan.workflow, {"store.omega_chunk": 4, "pdf.enabled": False})
    ctx = open_run(wf)
    for b in range(2):
        store.mark_done(ctx.store_path, "integrate", (0, b), 1)
    return ctx.store_path


def test_out_inside_the_parent_store_is_refused(parent, tmp_path):
    """``--out RUN.zarr/child.zarr`` wrote the child into the parent (which then could not be
    overwritten: it held a foreign entry); it is refused in one line, nothing written; a run's
    store.path inside any store of this program is refused too."""
    from xrdct_dask.runs.reprocess import plan_reprocess

    before = sorted(p.name for p in parent.iterdir())
    for out in (parent / "child.zarr", parent / "reduced" / "x.zarr", parent):
        with pytest.raises(WorkflowError, match="^--out: .* lies inside the parent store"):
            plan_reprocess(parent, {"recon.filter": "hann"}, out=out)
    assert sorted(p.name for p in parent.iterdir()) == before
    wf = load_workflow(parent.parent / "workflow.yaml", {"store.path": str(parent / "inner.zarr")})
    with pytest.raises(WorkflowError, match="lies inside the store"):
        open_run(wf)
    assert not (parent / "inner.zarr").exists()


def _half_built(folder, marker=True, extra=None):
    folder.mkdir()
    if marker:
        zarr.open_group(str(folder), mode="w", zarr_format=3, attributes={"format": store.FORMAT,
                                                                          "template_complete": False})
    if extra:
        (folder / extra).write_text("a user's file")
    return folder


def test_half_built_stores_of_killed_reprocesses_are_removed_when_provably_stale(parent, tmp_path, caplog):
    """Beside the child store: a half-built store named for a process of this host that is gone is
    removed (and said); one of a live process, one of an older name (no owner), one holding a
    user's file, and one of another host are kept and reported, every one by the reprocess that
    then succeeds.  Before, a rerun neither removed nor mentioned them."""
    from xrdct_dask.runs.reprocess import plan_reprocess, prepare_child

    out = tmp_path / "child.zarr"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    from xrdct_dask.store.safety import _host_tag

    host = _host_tag()
    base = f".{out.name}{store.ASIDE_NEW}"
    try:
        stale = _half_built(tmp_path / f"{base}{host}-{gone.pid}-{'a' * 12}")
        empty = _half_built(tmp_path / f"{base}{host}-{gone.pid}-{'e' * 12}", marker=False)
        kept = [_half_built(tmp_path / f"{base}{host}-{live.pid}-{'b' * 12}"),
                _half_built(tmp_path / f"{base}{'c' * 12}"),
                _half_built(tmp_path / f"{base}{host}-{gone.pid}-{'d' * 12}", extra="notes.txt"),
                _half_built(tmp_path / f"{base}{'0' * 8}-{gone.pid}-{'f' * 12}")]
        rp = plan_reprocess(parent, {"recon.filter": "hann"}, out=out)
        with caplog.at_level(logging.WARNING, logger="xrdct_dask.runs"):
            ctx = prepare_child(rp)
    finally:
        live.kill()
    assert ctx.store_path == out and store.is_store(out)
    assert not stale.exists() and not empty.exists()
    assert all(k.exists() for k in kept)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert str(stale) in said and all(str(k) in said for k in kept)
    assert (kept[2] / "notes.txt").read_text() == "a user's file"
    np.testing.assert_array_equal(store.task_state(out)["integrate"], store.task_state(parent)["integrate"])
