"""What a newcomer's first week finds (issue 25, items 1-9): set-up that asks before touching the
system, Ctrl-C at any moment, honest messages on rerun and on a scan of the wrong size, the live
example without a race, a plan quoting this machine's rate, notebooks with their outputs, the
small ones, and ready workflows.

Each test states the behaviour it holds and fails on the code before the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from xrdct_dask import store
from xrdct_dask.config import WorkflowError, load_workflow
from xrdct_dask.console import console
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.prepare import open_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 2-slice scan of 2 x 8 x 8 frames of the small detector (CBF, scan file)."""
    from xrdct_dask.testing.synthetic import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("newcomer") / "scan", nz=2, nomega=8, nx=8, seed=4)


def wf_for(scan, path, **overrides):
    return load_workflow(scan.workflow, {"store.path": str(path), "store.omega_chunk": 4, **overrides})


class Said(logging.Handler):
    """The messages a logger gave, whatever else handles them (the console logger stops
    propagating once the command line has shown its messages in this process)."""

    def __init__(self, logger: logging.Logger):
        super().__init__(logging.DEBUG)
        self.logger, self.records = logger, []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


# ------------------------------------------------------------------------------------------
# 3. a rerun warns only when something is redone, as a console message
# ------------------------------------------------------------------------------------------
def test_rerun_says_nothing_when_no_frame_is_read_again_and_one_line_when_some_are(scan, tmp_path):
    """Resuming a store where nothing was missing: no "0 frames ... read again" warning (the old
    code tested the tuple ``(0, 0)`` for truth).  Where a frame flagged missing is there now, one
    console line says how many frames and blocks are redone, and no raw ``WARNING module:`` log."""
    wf = wf_for(scan, tmp_path / "run.zarr")
    open_run(wf)  # the template, no task done
    prepare_log = logging.getLogger("xrdct_dask.prepare")
    with Said(console) as said, Said(prepare_log) as raw:
        open_run(wf)
    assert "read again" not in said.text + raw.text
    # block 0 of slice 1 done, with one of its frames flagged missing while its file is there now
    status = store.open_array(tmp_path / "run.zarr", f"{store.REDUCED}/frame_status")
    status[1, 2, 3] = FrameStatus.MISSING
    store.mark_done(tmp_path / "run.zarr", "integrate", (1, 0))
    with Said(console) as said, Said(prepare_log) as raw:
        open_run(wf)
    assert "read again" not in raw.text
    lines = [r for r in said.records if "read again" in r.getMessage()]
    assert len(lines) == 1 and "1 frames" in lines[0].getMessage() and "1 blocks" in lines[0].getMessage()
    assert store.task_state(tmp_path / "run.zarr").integrate[1, 0] == 0  # reopened
