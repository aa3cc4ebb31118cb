"""The quick tier of the test suite (`make quick`): the not-slow tests that are fast by measure.

A pytest plugin.  With ``--quick`` only the tests named in the tier file (``tests/quick.txt``)
run; with ``--quick-tier-out FILE`` a run measures every test (setup + call + teardown) and writes
the tier: the tests of at most :data:`LIMIT_S` seconds that use none of :data:`HEAVY_FIXTURES`
(a local cluster, a simulated scan or a whole run shared by a module: a test that uses one pays
for it when it runs alone, however cheap it looked behind another).  Tests are named by class and
function, not by file, so the tier survives tests moving between files; a parametrized test is in
it when all of its cases are.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

LIMIT_S = 1.5  # a test's setup + call + teardown at most (measured on the 2-core machine, loaded)
HEAVY_FIXTURES = frozenset({"cluster", "scan", "tiny_scan", "sim_scan", "small_scan", "corrupted", "run_store",
                            "order_scans", "parts_export", "pdf_then_recon_run", "acq", "batch", "result",
                            "reference", "local_slurm", "phantom", "eiger", "series", "parent", "scans"})


def tier_name(item) -> str:
    """``Class::function`` (or ``function``) of a collected test: its name in the tier file."""
    name = getattr(item, "originalname", None) or item.name.split("[")[0]
    cls = getattr(item, "cls", None)
    return f"{cls.__name__}::{name}" if cls is not None else name


def read_tier(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def pytest_addoption(parser):
    group = parser.getgroup("xrdct quick tier")
    group.addoption("--quick", action="store_true", default=False,
                    help="only the quick tier: the tests named in tests/quick.txt (make quick)")
    group.addoption("--quick-tier-out", default=None, help="measure the tests and write the quick tier to this file")


_seconds: dict[str, float] = defaultdict(float)
_heavy: dict[str, bool] = {}


def pytest_collection_modifyitems(config, items):
    if not config.getoption("quick"):
        return
    tier = read_tier(Path(config.rootpath) / "tests" / "quick.txt")
    out = [item for item in items if tier_name(item) not in tier]
    if out:
        config.hook.pytest_deselected(items=out)
        items[:] = [item for item in items if tier_name(item) in tier]


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call", "teardown"):
        _seconds[report.nodeid] += report.duration


def pytest_itemcollected(item):
    _heavy[item.nodeid] = bool(HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())))


_names: dict[str, str] = {}


def pytest_collection_finish(session):
    _names.update({item.nodeid: tier_name(item) for item in session.items})


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("quick_tier_out")
    if not path or exitstatus not in (0, 5):
        return
    fast: dict[str, bool] = {}
    for nodeid, name in _names.items():
        ok = nodeid in _seconds and _seconds[nodeid] <= LIMIT_S and not _heavy.get(nodeid, True)
        fast[name] = fast.get(name, True) and ok
    total = sum(s for n, s in _seconds.items() if fast.get(_names.get(n, ""), False))
    lines = [f"# the quick tier (make quick): {sum(fast.values())} tests of <= {LIMIT_S:g} s using no heavy fixture,",
             f"# {total:.0f} s measured; written by `make quick-tier` (xrdct_dask/testing/quicktier.py)"]
    Path(path).write_text("\n".join(lines + sorted(n for n, ok in fast.items() if ok)) + "\n")
