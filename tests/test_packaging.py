"""The package works outside its checkout: package data, `xrdct --version/init/cluster list/plan`
from a built wheel in a fresh venv, the throughput figures `xrdct plan` ships, and the declared
dependencies being exactly those the package imports.

The wheel test builds from a copy of the sources in tmp (so no build/ or *.egg-info lands in the
checkout), installs it with ``--no-deps --no-index`` into a venv whose only other packages are the
project venv's site-packages, added by a ``.pth`` line (``--system-site-packages`` would add the
base interpreter's, not the project venv's; a ``.pth`` line adds a folder without running the
``.pth`` files in it, so the checkout's editable-install finder stays inactive), and runs the CLI
in a tmp folder with PYTHONPATH and XRDCT_CLUSTER_PROFILES cleared.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xrdct_dask.cli import app
from xrdct_dask.resources import PROFILES_DIR, THROUGHPUTS, WORKFLOW_TEMPLATE, shipped_throughputs
from xrdct_dask.runs.plan import GPU_FIGURES, RESULTS_KEYS, plan_workflow, read_throughputs

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SHIPPED_PROFILES = {"slurm-cpu", "slurm-gpu", "pbs", "local-slurm"}


def _norm(dist: str) -> str:
    """PEP 503 name: ``PyYAML`` / ``scikit_image`` -> ``pyyaml`` / ``scikit-image``."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    """``["dask[distributed]>=2024.8", "zarr>=3"]`` -> ``{"dask", "distributed", "zarr"}`` (an
    extra of a requirement counts as its own distribution: ``dask[distributed]`` pulls in distributed)."""
    out = set()
    for r in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", r)
        out.add(_norm(m.group(1)))
        out |= {_norm(e) for e in (m.group(2) or "").split(",") if e.strip()}
    return out


# ------------------------------------------------------------------------------------------
# throughput figures: shipped copy == benchmarks/RESULTS.md; which figure the GPU-hours use
# ------------------------------------------------------------------------------------------
def test_shipped_throughputs_equal_the_last_figures_of_results_md():
    """The copy in the package cannot drift from the benchmarks: every key, exactly equal."""
    in_results = read_throughputs(RESULTS)
    assert "gpu_frames_per_s" in in_results, "benchmarks/RESULTS.md lost its gpu_frames_per_s line"
    assert shipped_throughputs() == in_results, (
        f"{THROUGHPUTS.relative_to(REPO)} differs from {RESULTS.relative_to(REPO)}: run `make throughputs`")
    assert json.loads(THROUGHPUTS.read_text())["source"] == "benchmarks/RESULTS.md"


def _template_plan(tmp_path, results_text: str | None = None, **kw):
    from xrdct_dask import load_workflow

    results = None
    if results_text is not None:
        results = tmp_path / "RESULTS.md"
        results.write_text(results_text)
    return plan_workflow(load_workflow(WORKFLOW_TEMPLATE), results=results, **kw)


def test_plan_prefers_whole_workflow_figure_and_says_which_it_used(tmp_path):
    """GPU-hours = frames / rate / 3600 with rate = whole_workflow_frames_per_s when the file has
    one (last line wins), else gpu_frames_per_s; an explicit rate beats both (exact arithmetic)."""
    text = ("gpu_frames_per_s = 9700\nold: whole_workflow_frames_per_s = 1000\n"
            "whole_workflow_frames_per_s = 4,800\ncpu_frames_per_s_per_core = 66\n")
    p = _template_plan(tmp_path, text)
    assert (p.gpu_frames_per_s, p.gpu_figure) == (4800.0, "whole_workflow_frames_per_s")
    assert p.gpu_hours == p.frames / 4800 / 3600
    assert "whole workflow:" in _format(p) and "(whole_workflow_frames_per_s)" in _format(p)

    p = _template_plan(tmp_path, "gpu_frames_per_s = 9700\n")
    assert (p.gpu_frames_per_s, p.gpu_figure, p.cpu_core_hours) == (9700.0, "gpu_frames_per_s", None)
    assert "decode + integrate:" in _format(p) and "(gpu_frames_per_s)" in _format(p)

    p = _template_plan(tmp_path, text, gpu_frames_per_s=2000.0)
    assert (p.gpu_frames_per_s, p.gpu_figure) == (2000.0, "given")
    assert p.throughput_source == f"options and {tmp_path / 'RESULTS.md'}"  # the CPU figure came from the file

    # no file given: the shipped figures, named as such
    p = _template_plan(tmp_path)
    figure = next(k for k in GPU_FIGURES if k in shipped_throughputs())
    assert (p.gpu_frames_per_s, p.gpu_figure) == (shipped_throughputs()[figure], figure)
    assert "shipped with xrdct_dask" in p.throughput_source
    assert set(RESULTS_KEYS) >= set(shipped_throughputs())


def _format(p) -> str:
    from xrdct_dask.runs.plan import format_plan

    return format_plan(p)


def test_plan_with_a_missing_results_file_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(app, ["plan", str(WORKFLOW_TEMPLATE), "--results", str(tmp_path / "nope.md")])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {tmp_path / 'nope.md'}: results file not found " \
                               "(throughputs are read from lines 'gpu_frames_per_s = N')"


# ------------------------------------------------------------------------------------------
# xrdct init, profile search order
# ------------------------------------------------------------------------------------------
def test_init_writes_the_template_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["init"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "workflow.yaml").read_text() == WORKFLOW_TEMPLATE.read_text()
    (tmp_path / "mine.yaml").write_text("my own notes\n")
    for target, written in [("mine.yaml", "mine.yaml"), (".", "workflow.yaml")]:  # a folder: FOLDER/workflow.yaml
        r = CliRunner().invoke(app, ["init", target])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "already exists: not overwritten" in r.output and written in r.output
    assert (tmp_path / "mine.yaml").read_text() == "my own notes\n"
    r = CliRunner().invoke(app, ["init", "new/scan01.yaml"])  # missing folders are made
    assert r.exit_code == 0 and (tmp_path / "new" / "scan01.yaml").read_text() == WORKFLOW_TEMPLATE.read_text()


def test_profile_search_order_is_cwd_cluster_then_env_then_shipped(tmp_path, monkeypatch):
    from xrdct_dask.cluster.profiles import list_profiles, profile_dirs

    site, proj = tmp_path / "site", tmp_path / "proj"
    (proj / "cluster").mkdir(parents=True)
    site.mkdir()
    text = "description: {}\njobqueue:\n  slurm:\n    cores: 2\n    memory: 4GiB\n"
    (site / "slurm-gpu.yaml").write_text(text.format("site"))
    (site / "pbs.yaml").write_text(text.format("site"))
    (proj / "cluster" / "slurm-gpu.yaml").write_text(text.format("project"))
    monkeypatch.chdir(proj)
    monkeypatch.setenv("XRDCT_CLUSTER_PROFILES", str(site))
    assert profile_dirs() == [proj / "cluster", site, PROFILES_DIR]
    found = list_profiles()
    assert found["slurm-gpu"] == proj / "cluster" / "slurm-gpu.yaml"
    assert found["pbs"] == site / "pbs.yaml"
    assert found["slurm-cpu"] == PROFILES_DIR / "slurm-cpu.yaml"
    assert {p.stem for p in PROFILES_DIR.glob("*.yaml")} == SHIPPED_PROFILES


# ------------------------------------------------------------------------------------------
# dependencies: declared == imported
# ------------------------------------------------------------------------------------------
# the pytest support of xrdct_dask.testing (conformance classes, their fixtures' plugin) runs under
# pytest only: what it imports besides the dependencies comes with the `test` extra
TEST_SUPPORT = ("testing/fixtures.py", *(f"testing/conformance/{m}.py" for m in
                                          ("__init__", "base", "decode", "integrate", "sectors", "recon", "pdf",
                                           "sinogram", "background")))


def _third_party_imports(paths) -> set[str]:
    imported: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    return imported - set(sys.stdlib_module_names) - {"xrdct_dask"}


def test_declared_dependencies_are_exactly_the_third_party_imports():
    """Every third-party module the package imports is a declared dependency (cupy: the gpu
    extra) and every declared dependency is imported somewhere in xrdct_dask/; the pytest support
    in xrdct_dask/testing/ may also import what the test extra declares (pytest, hypothesis, ...)."""
    support = [REPO / "xrdct_dask" / f for f in TEST_SUPPORT]
    assert all(p.is_file() for p in support), support
    third_party = _third_party_imports(p for p in (REPO / "xrdct_dask").rglob("*.py") if p not in support)
    # recon.engine: astra imports it only when asked; the viewer: an extra
    optional = {"cupy": "gpu", "cupyx": "gpu", "astra": "astra", "bokeh": "view", "tornado": "view"}
    ships = {"cupyx": "cupy"}  # cupyx comes in the cupy wheel
    dists = packages_distributions()

    def distributions(modules):
        return {_norm(d) for m in modules - set(optional) for d in dists.get(m, [m])}

    used = distributions(third_party)
    declared = _requirement_names(PYPROJECT["project"]["dependencies"])
    assert used - declared == set(), "imported but not declared"
    assert declared - used == set(), "declared but never imported (move it to an extra)"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for mod, extra in optional.items():
        assert mod in third_party and any(r.startswith(ships.get(mod, mod)) for r in extras[extra]), (mod, extra)
    testing = distributions(_third_party_imports(support))
    assert testing - declared - _requirement_names(extras["test"]) == set(), (
        "imported by the pytest support, not in the test extra")


# ------------------------------------------------------------------------------------------
# the wheel, installed in a fresh venv, used from a folder outside the checkout
# ------------------------------------------------------------------------------------------
def _run(cmd: list, cwd: Path, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert res.returncode == 0, f"{cmd}: rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.slow  # builds the wheel and a venv: ~15 s
def test_wheel_in_a_fresh_venv_works_outside_the_checkout(tmp_path):
    """`xrdct --version`, `cluster list` (the shipped profiles), `init` and `plan` (GPU-hours from
    the shipped figures, = frames / rate / 3600 exactly) from the installed wheel alone."""
    src, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    src.mkdir()
    for f in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / f, src / f)
    shutil.copytree(REPO / "xrdct_dask", src / "xrdct_dask", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "XRDCT_CLUSTER_PROFILES", "PYTHONSTARTUP")}
    pip_env = {**base_env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src],
         tmp_path, pip_env)
    (wheel,) = dist.glob("xrdct_dask-*.whl")

    # the wheel holds every data file of the package (profiles, template, figures, CUDA kernels) and the licence
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {p.relative_to(REPO).as_posix() for p in (REPO / "xrdct_dask").rglob("*")
            if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert data and data <= names, data - names
    assert any(n.endswith("licenses/LICENSE") for n in names)

    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, base_env)
    vpy = venv / "bin" / "python"
    site = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path,
                     base_env).stdout.strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}  # the project venv's packages
    (site / "project-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "-q", wheel], tmp_path, pip_env)

    work.mkdir()
    # outside the checkout's sources: elsewhere, or in its build/ scratch (make test puts TMPDIR there)
    assert REPO not in work.resolve().parents or REPO / "build" in work.resolve().parents
    env = {**base_env, "PATH": f"{venv / 'bin'}{os.pathsep}{base_env.get('PATH', '')}"}
    xrdct = venv / "bin" / "xrdct"
    pkg = site / "xrdct_dask"
    where = _run([vpy, "-c", "import xrdct_dask; print(xrdct_dask.__file__)"], work, env).stdout.strip()
    assert Path(where) == pkg / "__init__.py"

    version = PYPROJECT["project"]["version"]
    assert _run([xrdct, "--version"], work, env).stdout.strip() == f"xrdct-dask {version} ({pkg})"

    listed = _run([xrdct, "cluster", "list"], work, env).stdout.splitlines()
    assert {ln.split()[0] for ln in listed} == SHIPPED_PROFILES
    assert all(f"({pkg / 'profiles'}/" in ln and "invalid" not in ln for ln in listed), listed
    script = _run([xrdct, "cluster", "script", "--profile", "slurm-gpu"], work, env).stdout
    assert "#SBATCH --gres=gpu:1" in script

    _run([xrdct, "init"], work, env)
    assert (work / "workflow.yaml").read_text() == WORKFLOW_TEMPLATE.read_text()
    again = _run([xrdct, "init"], work, env, ok=False)
    assert again.returncode == 2 and "already exists: not overwritten" in again.stderr

    # the design's 1000^3 scan: 1.571e9 frames at the benchmarks' rate
    res = _run([xrdct, "plan", "workflow.yaml", "--set", "scan.nz=1000", "--set", "scan.nomega=1571",
                "--set", "scan.nx=1000", "--json", "plan.json"], work, env)
    p = json.loads((work / "plan.json").read_text())
    figures = read_throughputs(RESULTS)
    figure = next(k for k in GPU_FIGURES if k in figures)
    assert p["frames"] == 1_571_000_000
    assert (p["gpu_frames_per_s"], p["gpu_figure"]) == (figures[figure], figure)
    assert p["gpu_hours"] == pytest.approx(p["frames"] / figures[figure] / 3600, rel=1e-12)
    shown = re.search(r"([0-9][0-9,.e-]*) GPU-hours at ([0-9,]+) frames/s per GPU \((\w+)\)", res.stdout)
    assert shown, res.stdout
    assert float(shown[1].replace(",", "")) == pytest.approx(p["gpu_hours"], rel=0.01, abs=0.05)  # as rounded
    assert (float(shown[2].replace(",", "")), shown[3]) == (figures[figure], figure)
    assert "throughput from the figures shipped with xrdct_dask" in res.stdout
