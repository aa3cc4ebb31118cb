"""Shared fixtures.  The simulated scan (made once per session, in tmp dirs), the small pyFAI
integrator, ``rng`` and the real CBF frame come from the plugin the conformance classes use
(:mod:`xrdct_dask.testing.fixtures`); here: where the real detector files are, the plan cache,
the local cluster of a module's tests, and the scans and stores that tests of two files share."""

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


@pytest.fixture(scope="module")
def one_slice_scan(tmp_path_factory):
    """A simulated scan of 1 slice x 16 angles x 12 steps (seed 3), made once per module: the
    graph's and the cluster's tests."""
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("tiny"), nz=1, nomega=16, nx=12, seed=3)


@pytest.fixture(scope="module")
def tiny_layouts(tmp_path_factory):
    """The per-line (compressed CBF) and per-slice (HDF5) layouts of ``inputs.frames`` on a scan of
    2 x 4 x 3 frames (quick tests of the layouts and of the run's identity)."""
    from xrdct_dask.simulate import simulate_scan

    root = tmp_path_factory.mktemp("tiny")
    return {
        "per_line": simulate_scan(root / "per_line", nz=2, nomega=4, nx=3,
                                  frames="data/slice_{z:04d}/line_{line:05d}/frame_{index:06d}.cbf.bz2"),
        "per_slice_h5": simulate_scan(root / "per_slice_h5", nz=2, nomega=4, nx=3, fmt="h5",
                                      frames="data/slice_{z:04d}.h5::/entry/data/data"),
    }


class Listings:
    """Records the folders listed in this process (os.listdir / os.scandir: Path.iterdir, glob)."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        listdir, scandir = os.listdir, os.scandir

        def rec_listdir(p="."):
            self.paths.append(os.path.abspath(os.fspath(p)))
            return listdir(p)

        def rec_scandir(p="."):
            self.paths.append(os.path.abspath(os.fspath(p)) if not isinstance(p, int) else str(p))
            return scandir(p)
        monkeypatch.setattr(os, "listdir", rec_listdir)
        monkeypatch.setattr(os, "scandir", rec_scandir)


LIVE_OVERRIDES = {"store.omega_chunk": 4}  # blocks of 4 angles x 10 steps: 1.6 s of acquisition each


@pytest.fixture(scope="module")
def acq(tmp_path_factory):
    """The live tests' acquisition (2 slices x 8 angles x 10 steps, seed 5): written again frame by
    frame by tests/test_live.py, submitted as a job by tests/test_service.py."""
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("acq") / "scan", nz=2, nomega=8, nx=10, seed=5)


@pytest.fixture(scope="module")
def batch(acq, cluster, tmp_path_factory):
    """The batch run of the whole scan, once written: the reference store."""
    from xrdct_dask import run
    from xrdct_dask.config import load_workflow

    out = tmp_path_factory.mktemp("batch") / "run.zarr"
    wf = load_workflow(acq.workflow, LIVE_OVERRIDES | {"store.path": str(out)})
    return run(wf, cluster=cluster, progress=False, summary=False)


NI_D_A = [2.0346, 1.7620, 1.2459, 1.0625]  # fcc Ni a = 3.524 A: (111), (200), (220), (311)
PHANTOM_NX, PHANTOM_NQ = 40, 300


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """Two slices of 40 x 40 voxels, 300 q, G to 10 A, one frame flagged; the copy at 3 x 3 blocks.
    Written straight in the run's layout from the simulator's ground truth; read only (the view
    copy's tests in test_store.py, the viewer's in test_view.py), so made once per session."""
    from xrdct_dask.testing.viewstores import write_phantom_store

    path = tmp_path_factory.mktemp("view") / "run.zarr"
    write_phantom_store(path, nz=2, nx=PHANTOM_NX, nomega=30, nq=PHANTOM_NQ, flagged=[(0, 3, 4)], view_pixels=16,
                        phases={"Ni": NI_D_A}, noise=0.01)
    return path


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
