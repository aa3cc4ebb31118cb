"""Sizes are checked before they are allocated (issue 25, items 14 and 19): YAML aliases, config
files of any size, scans, bins, frames and workers beyond the machine are refused in one line
naming the key; ``xrdct plan`` describes a scan of any size on paper without allocating it."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from xrdct_dask import config
from xrdct_dask.config import WorkflowError, load_workflow, parse_overrides

MAX_CONFIG_BYTES = getattr(config, "MAX_CONFIG_BYTES", 1 << 20)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("limits") / "scan", nz=1, nomega=8, nx=6, seed=2)


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_yaml_aliases_are_refused_before_they_expand(scan, tmp_path):
    """A "billion laughs" workflow (9 levels of 9 aliases each: 1 kB of text, 3.9e8 strings once
    expanded) is refused while it is parsed, in well under a second, naming the alias; the same
    text without aliases loads."""
    lines = ['l0: &l0 "lol"'] + [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(scan.workflow.read_text() + "\n" + "\n".join(f"# {ln}" for ln in lines[:0]) + "\n" +
                    "compute: {n_workers: 1}\nx-lol:\n" + "\n".join("  " + ln for ln in lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(WorkflowError) as err:
        load_workflow(bomb)
    assert time.perf_counter() - t0 < 1.0
    assert "alias" in one_line(err) and "line 1" not in one_line(err)
    with pytest.raises(WorkflowError, match="alias"):
        parse_overrides(["integrate.percentile=[&a 40, *a]"])


def test_config_files_over_the_bound_are_refused_without_being_read(scan, tmp_path, monkeypatch):
    """A workflow file of 2 MB (a valid workflow padded with a comment) is refused in one line
    saying its size, and its bytes are never read; one just under the bound loads."""
    big = tmp_path / "big.yaml"
    text = scan.workflow.read_text().replace("poni: geometry.poni", f"poni: {scan.poni}").replace(
        "mask: mask.edf", f"mask: {scan.mask}")
    big.write_text(text + "#" + "x" * (2 * MAX_CONFIG_BYTES) + "\n")
    opened = []
    import builtins

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    with pytest.raises(WorkflowError) as err:
        load_workflow(big)
    assert "bytes" in one_line(err) and str(big) not in opened
    monkeypatch.undo()
    big.write_text(text + "#" + "x" * (MAX_CONFIG_BYTES - len(text.encode()) - 10) + "\n")
    assert load_workflow(big).scan.nz == 1


@pytest.mark.parametrize("key, value", [("scan.nz", 1_000_000_000), ("scan.nomega", 1_000_000_000),
                                        ("scan.nx", 1_000_000_000), ("integrate.npt_rad", 1_000_000_000)])
def test_sizes_beyond_the_machine_are_refused_before_allocating(scan, tmp_path, key, value):
    """``--set scan.nz=1000000000`` (and nomega, nx, npt_rad) used to end in a MemoryError traceback
    while the store was prepared; now open_run refuses it in one line naming the key, having
    allocated almost nothing (tracemalloc's peak under 50 MB) and created no store."""
    from xrdct_dask.runs.open import open_run

    wf = load_workflow(scan.workflow, {key: value, "store.path": str(tmp_path / "run.zarr")})
    tracemalloc.start()
    try:
        with pytest.raises(WorkflowError) as err:
            open_run(wf)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert one_line(err).startswith(key + ":"), one_line(err)
    assert peak < 50e6 and not (tmp_path / "run.zarr").exists()


def test_a_frame_shape_beyond_the_machine_is_refused(scan):
    """A dataset declaring 100000 x 100000 frames (37 GiB a frame as int32) is refused by the
    size check with the frames named, on a machine of any memory up to 1 TB."""
    from xrdct_dask.limits import check_run_sizes

    wf = load_workflow(scan.workflow)
    with pytest.raises(WorkflowError) as err:
        check_run_sizes(wf, (100_000, 100_000), memory=1 << 40)
    assert one_line(err).startswith("inputs.frames: frames of 100,000 x 100,000 pixels")
    check_run_sizes(wf, (1679, 1475), memory=8 << 30)  # a Pilatus 2M on 8 GB: fine


def test_too_many_local_workers_are_refused_before_any_starts(scan, monkeypatch):
    """``compute.n_workers=100000`` hung starting workers; now the local cluster is never started
    and the refusal names the key (threads per core, then memory per worker process)."""
    import xrdct_dask.cluster.local as cluster
    from xrdct_dask.cluster.local import client_for
    from xrdct_dask.limits import check_local_workers

    def no_cluster(*a, **k):
        raise AssertionError("a LocalCluster was started")

    monkeypatch.setattr(cluster, "local_cluster", no_cluster)
    wf = load_workflow(scan.workflow, {"compute.n_workers": 100_000})
    with pytest.raises(WorkflowError) as err:
        client_for(wf, None)
    assert one_line(err).startswith("compute.n_workers: 100,000 worker processes")
    with pytest.raises(WorkflowError, match="^compute.n_workers: 40 worker processes need"):
        check_local_workers(load_workflow(scan.workflow, {"compute.n_workers": 40}), memory=4 << 30, cores=64)
    check_local_workers(load_workflow(scan.workflow, {"compute.n_workers": 4}), memory=4 << 30, cores=2)


def test_plan_describes_a_huge_scan_without_allocating_it(scan):
    """The plan of a 2e7-slice scan holds no list of its slices: tracemalloc's peak stays under
    50 MB (a list of one task count per slice was 160 MB here, 8 GB at 1e9 slices), and the
    wave count equals the one the runner's grouping gives."""
    from xrdct_dask.runs.plan import count_waves, plan_workflow, waves

    for units, t, m in ((10, 3, 10), (7, 50, 20), (1, 1, 10), (100, 4, 64), (33, 5, 11)):
        assert count_waves(units, t, m) == len(waves([t] * units, m))
    wf = load_workflow(scan.workflow, {"scan.nz": 20_000_000})
    tracemalloc.start()
    try:
        p = plan_workflow(wf, frame_bytes=1000, gpu_frames_per_s=1e4, cpu_frames_per_s_per_core=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p.to_dict()["frames"] == 20_000_000 * 8 * 6
    assert peak < 50e6, peak


@pytest.mark.parametrize("dotted", ["scan.nz.x", "inputs.frames.x", "store.path.deeper"])
def test_a_dotted_key_through_a_value_is_one_line_in_the_cli(scan, dotted):
    """``--set scan.nz.x=1`` ended in a TypeError traceback; it is one line naming the value that
    is not a section, exit status 2."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    res = CliRunner().invoke(app, ["plan", str(scan.workflow), "--set", f"{dotted}=1"])
    assert res.exit_code == 2, res.output
    assert "is a value, not a section" in res.output and "Traceback" not in res.output
    with pytest.raises(WorkflowError, match="is a value, not a section"):
        load_workflow(scan.workflow, {dotted: 1})


def test_a_detector_without_shape_and_no_mask_is_one_line_before_the_store(scan, tmp_path):
    """A PONI whose detector has no ``max_shape`` and a workflow with no mask leave the frames' size
    known from neither (it was an AttributeError traceback while the integration plan was built);
    open_run refuses it in one line naming ``inputs.poni``, with no store created.  With the mask
    back, the mask gives the shape and the plan is built (209 x 184 pixels, the simulator's)."""
    from xrdct_dask.pipeline.integrator import _plan_inputs
    from xrdct_dask.runs.open import open_run

    poni = tmp_path / "noshape.poni"
    text = scan.poni.read_text()
    assert ', "max_shape": [209, 184]' in text
    poni.write_text(text.replace(', "max_shape": [209, 184]', ""))
    wf = load_workflow(scan.workflow, {"inputs.poni": str(poni), "inputs.mask": None,
                                       "store.path": str(tmp_path / "run.zarr")})
    with pytest.raises(WorkflowError) as err:
        open_run(wf)
    assert one_line(err).startswith("inputs.poni:") and "max_shape" in one_line(err), one_line(err)
    assert not (tmp_path / "run.zarr").exists()
    with_mask = load_workflow(scan.workflow, {"inputs.poni": str(poni)})
    assert _plan_inputs(with_mask)[1] == (209, 184)
