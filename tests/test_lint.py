"""The linter and the type checker find nothing in the code they hold clean (issue 26): ruff with the
project's rules (pyproject.toml's [tool.ruff]) on the package and the benchmarks, mypy on the store,
pipeline and run layers ([tool.mypy]).  ``make lint`` runs both on everything, tests included, and
``make test`` runs ``make lint`` first."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)


def test_ruff_finds_nothing_in_the_package_the_tests_and_the_benchmarks():
    """``ruff check xrdct_dask tests benchmarks`` (the E, F, W, I, B, UP rules, lines of 120)
    reports no finding: zero tolerance, every finding is printed."""
    res = _run("ruff", "check", "--no-cache", "--output-format", "concise", "xrdct_dask", "tests", "benchmarks")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_mypy_finds_nothing_in_the_store_pipeline_and_run_layers(tmp_path):
    """mypy on the files of [tool.mypy] (the store, pipeline and run layers; the modules they
    import are read but not reported) finds no error.  Slow: about a minute of CPU without its
    cache (``make test`` runs mypy itself, through ``make lint``, with its cache in build/home)."""
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    assert {"xrdct_dask/store", "xrdct_dask/pipeline", "xrdct_dask/runs"} <= set(files)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "mypy" if "XDG_CACHE_HOME" in os.environ else tmp_path
    res = _run("mypy", "--cache-dir", str(cache), *files)
    assert res.returncode == 0 and "Success: no issues found" in res.stdout, res.stdout + res.stderr


def test_make_lint_runs_both_tools_from_the_test_extra():
    """``make lint`` runs ruff on the package, the tests and the benchmarks and mypy on its
    configured files, with the tools the test extra installs; ``make test`` runs it before pytest."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert {"ruff", "mypy"} <= {req.split(">")[0].split("=")[0].strip() for req in extra}
    res = subprocess.run(["make", "-n", "lint", "VENV=/nonexistent-venv", "STAMP="], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "/nonexistent-venv/bin/ruff check xrdct_dask tests benchmarks" in res.stdout, res.stdout
    assert "/nonexistent-venv/bin/mypy" in res.stdout, res.stdout
    dry = subprocess.run(["make", "-n", "test", "VENV=/nonexistent-venv", "STAMP="], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    lint_at = next(i for i, ln in enumerate(lines) if "lint" in ln)
    assert lint_at < next(i for i, ln in enumerate(lines) if "pytest" in ln), dry.stdout
