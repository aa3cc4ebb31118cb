"""Shared fixtures.  The simulated scan (made once per session, in tmp dirs), the small pyFAI
integrator, ``rng`` and the real CBF frame come from the plugin the conformance classes use
(:mod:`xrdct_dask.testing.fixtures`); here: where the real detector files are, the plan cache and
the local cluster of a module's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["xrdct_dask.testing.fixtures", "xrdct_dask.testing.quicktier"]  # (`make quick`: --quick)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRDCT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def plan_cache(tmp_path_factory):
    """The suite's integration plans are kept in a tmp folder, not the user's ~/.cache (the workers
    of the suite's clusters, started later, inherit the variable)."""
    folder = tmp_path_factory.mktemp("plan-cache")
    old = os.environ.get("XRDCT_CACHE_DIR")
    os.environ["XRDCT_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("XRDCT_CACHE_DIR", None)
    else:
        os.environ["XRDCT_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def dask_scheduler_restored(request):
    """Each test starts with the dask ``scheduler`` setting the suite started with.  A test whose
    own clients close out of order (dask restores the setting only when the last default client
    closes) would otherwise leave ``dask.distributed`` set with no client, and an unrelated later
    test's ``.compute()`` fails; the guard names the test that left it in the warnings summary."""
    import warnings

    import dask

    before = dask.config.get("scheduler", None)
    yield
    after = dask.config.get("scheduler", None)
    if after != before:
        from distributed import default_client

        try:
            default_client()
        except ValueError:  # no client left open: the setting leaked
            dask.config.set(scheduler=before)
            warnings.warn(f"{request.node.nodeid} left dask's scheduler set to {after!r} with no client open",
                          stacklevel=1)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real detector files of ../shared/data (README.md there), or $XRDCT_SHARED_DATA."""
    return SHARED_DATA


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded local worker processes, bound to localhost, shared by a module's tests."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as c:
        yield c


@pytest.fixture(scope="session")
def pdf_then_recon_run(sim_scan, tmp_path_factory):
    """The simulated scan run with ``pdf.order: pdf-then-recon`` (G to 8 A, no summary picture):
    ``(store path, workflow, scan)``; ~15 s, for the workflow's and the export's slow tests."""
    from distributed import LocalCluster

    from xrdct_dask import run
    from xrdct_dask.config import load_workflow

    out = tmp_path_factory.mktemp("pdf") / "run.zarr"
    # the order comparison is about the linear transform: no nonlinear sinogram correction (zingers)
    wf = load_workflow(sim_scan.workflow, {"store.path": str(out), "pdf.order": "pdf-then-recon", "pdf.rmax": 8.0,
                                           "pdf.r_chunk": 256, "sinogram.zingers": False})
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster:
        path = run(wf, cluster=cluster, progress=False, summary=False)
    return path, wf, sim_scan


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can): Debian's chromium and playwright."""
    import importlib.util
    import shutil

    exe = os.environ.get("XRDCT_CHROMIUM", "/usr/bin/chromium")
    if not (Path(exe).is_file() or shutil.which(exe)):
        return f"no chromium at {exe}"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed"
    return None


_BROWSER_SKIPPED: list[str] = []


def pytest_collection_modifyitems(config, items):
    """Without chromium or playwright the browser tests are left out, and said so in one line
    at the end of the run (:func:`pytest_terminal_summary`)."""
    why = browser_missing()
    if why is None:
        return
    left = [item for item in items if "browser" in item.keywords]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if "browser" not in item.keywords]
        _BROWSER_SKIPPED[:] = [f"{len(left)} browser test{'s' if len(left) > 1 else ''} not run ({why}): "
                               f"`make test-browser` installs Debian's chromium and runs them"]


def pytest_terminal_summary(terminalreporter):
    for line in _BROWSER_SKIPPED:
        terminalreporter.write_line(f"SKIPPED {line}", yellow=True)
