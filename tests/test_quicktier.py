"""The quick tier (`make quick`, issue 29 item 5): the not-slow tests named in tests/quick.txt,
measured and written by the plugin xrdct_dask/testing/quicktier.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from xrdct_dask.testing.quicktier import HEAVY_FIXTURES, read_tier

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

@pytest.fixture
def cluster():
    return 1

def test_light():
    assert True

@pytest.mark.parametrize("n", [1, 2])
def test_cases(n):
    assert n

def test_with_a_cluster(cluster):
    assert cluster

class TestGroup:
    def test_member(self):
        assert True
'''


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in ``folder`` with the plugin alone (the installed plugins' loading takes seconds)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "xrdct_dask.testing.quicktier", "-p",
                           "no:cacheprovider", *args], cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


def test_the_tier_is_measured_then_run_by_name(tmp_path):
    """--quick-tier-out lists the tests that use no heavy fixture (a module's cluster, scan or
    run), by class and name (a parametrized test once); --quick then runs those only."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    r = _pytest(tmp_path, "--quick-tier-out", "tests/quick.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_tier(tmp_path / "tests" / "quick.txt") == {"test_light", "test_cases", "TestGroup::test_member"}
    r = _pytest(tmp_path, "--quick")
    assert r.returncode == 0 and "4 passed, 1 deselected" in r.stdout, r.stdout


def test_every_name_in_the_tier_is_a_test_of_the_suite():
    """The tier names tests that exist (a renamed test leaves the tier, it is never silently
    named there); none of them takes a heavy fixture in its signature."""
    source = "\n".join(p.read_text() for p in TESTS.glob("test_*.py")) + _conformance_classes()
    tier = read_tier(TESTS / "quick.txt")
    assert len(tier) >= 200
    missing = []
    for name in tier:
        cls, _, fn = name.rpartition("::")
        m = re.search(rf"^\s*def {re.escape(fn)}\((.*?)\)", source, re.M | re.S)
        if m is None or (cls and f"class {cls}" not in source):
            missing.append(name)
        elif set(re.findall(r"\w+", m.group(1))) & HEAVY_FIXTURES:
            missing.append(f"{name} (heavy fixture)")
    assert not missing, missing


def _conformance_classes() -> str:
    """The test classes' sources outside tests/ (the conformance classes the modules subclass)."""
    root = TESTS.parent / "xrdct_dask" / "testing" / "conformance"
    return "\n".join(p.read_text() for p in root.glob("*.py"))
