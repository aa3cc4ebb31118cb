"""Cluster profiles (xrdct_dask/profiles/, your own) -> dask-jobqueue job scripts, GPU resources, a real SLURM run.

The job-script tests read what sbatch/qsub would be given; the slurm-marked tests submit to the
one-node SLURM of cluster/local-slurm/start.sh (``make test-slurm`` starts it, as root) and
require the store written through SLURM jobs to equal the LocalCluster run's, array by array.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xrdct_dask.cluster.profiles import (
    ProfileError,
    declared_resources,
    job_script,
    list_profiles,
    load_profile,
    make_cluster,
    pbs_bytes,
    slurm_bytes,
    slurm_gpus,
    worker_resources,
)
from xrdct_dask.resources import PROFILES_DIR
from xrdct_dask.testing.stores import assert_same_stores

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30
SBATCH_MEMORY = ("--mem=", "--mem-per-gpu=", "--mem-per-cpu=")


def sbatch_lines(script: str) -> list[str]:
    return [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]


def worker_command(script: str) -> str:
    (cmd,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
    return cmd


# ------------------------------------------------------------------------------------------
# profiles as data
# ------------------------------------------------------------------------------------------
def test_shipped_profiles_validate_and_give_job_scripts():
    found = list_profiles()
    assert {"slurm-cpu", "slurm-gpu", "pbs", "local-slurm"} <= set(found)
    for name, path in found.items():
        assert path.parent in (PROFILES_DIR, Path.cwd() / "cluster"), path
        p = load_profile(name)
        assert p.kind in ("slurm", "pbs") and p.description, name
        script = job_script(name)
        prefix = "#SBATCH" if p.kind == "slurm" else "#PBS"
        assert script.startswith("#!") and prefix in script, name
        assert "distributed.cli.dask_worker tcp://<scheduler-address>:8786" in script


def test_slurm_gpu_job_script_has_gres_and_one_memory_directive():
    """dask-jobqueue #698: --mem next to --mem-per-gpu is fatal in sbatch; exactly one may remain."""
    script = job_script("slurm-gpu")
    lines = sbatch_lines(script)
    assert "#SBATCH --gres=gpu:1" in lines
    memory = [ln for ln in lines if any(m in ln for m in SBATCH_MEMORY)]
    assert memory == ["#SBATCH --mem-per-gpu=64G"], memory
    cmd = worker_command(script)
    # one worker process owns the GPU and advertises it; its 8 threads share it
    assert "--resources GPU=1" in cmd and "--nworkers" not in cmd and "--nthreads 8" in cmd
    # what dask may use (60 GiB) fits in what SLURM grants (64 GiB per GPU): no OOM kill before spilling
    limit = re.search(r"--memory-limit (\S+)GiB", cmd).group(1)
    assert float(limit) * GiB <= slurm_bytes("64G")


def test_slurm_cpu_job_script_memory_is_in_gib_and_covers_the_workers():
    """dask-jobqueue #252: SLURM's G is GiB.  60GiB for 4 processes -> --mem=60G, 15 GiB each."""
    script = job_script("slurm-cpu")
    assert "#SBATCH --mem=60G" in sbatch_lines(script)
    cmd = worker_command(script)
    assert "--nworkers 4" in cmd and "--nthreads 4" in cmd and "--memory-limit 15.00GiB" in cmd
    assert "--resources" not in cmd


def test_pbs_job_script_selects_cores_and_memory():
    script = job_script("pbs")
    assert "#PBS -l select=1:ncpus=16:mem=60GB" in script
    assert pbs_bytes("60GB") == 60 * GiB  # PBS units are binary: what the 4 x 15 GiB workers may use


def test_make_cluster_overrides_win_and_clusters_keep_their_own_settings():
    """Overrides use keyword spelling; dask-jobqueue re-reads its config at every scale-up, so two
    clusters made with different overrides must each keep theirs."""
    a = make_cluster("slurm-cpu", queue="short", cores=4, processes=2, memory="8GiB", walltime="00:10:00",
                     job_extra_directives=["--mem-per-cpu=2G"], scheduler_options={"dashboard_address": ":0"})
    try:
        b = make_cluster("slurm-cpu", queue="long", scheduler_options={"dashboard_address": ":0"})
        try:
            sa, sb = a.job_script(), b.job_script()
        finally:
            b.close()
        assert "#SBATCH -p short" in sa and "#SBATCH -p long" in sb
        assert "#SBATCH --cpus-per-task=4" in sa and "#SBATCH -t 00:10:00" in sa
        # --mem-per-cpu given: dask-jobqueue's own --mem line is dropped (#698), 2G x 4 CPUs >= 8 GiB
        memory = [ln for ln in sbatch_lines(sa) if any(m in ln for m in SBATCH_MEMORY)]
        assert memory == ["#SBATCH --mem-per-cpu=2G"]
        assert "--nworkers 2" in sa and "--nthreads 2" in sa and "--memory-limit 4.00GiB" in sa
        assert "#SBATCH --mem=60G" in sb and "--nworkers 4" in sb
        # a new job made now (what scale() does) still has cluster a's settings
        assert a._dummy_job.job_script() == sa
        assert declared_resources(a) == {}
    finally:
        a.close()


def test_gpu_profile_declares_the_gpu_resource_before_any_job_runs():
    c = make_cluster("slurm-gpu", scheduler_options={"dashboard_address": ":0"})
    try:
        assert declared_resources(c) == {"GPU": 1.0}
    finally:
        c.close()


def test_pbs_gpu_resource_spec_gets_one_worker_process_with_the_gpu_resource():
    """processes left out: dask-jobqueue would start ~sqrt(8) = 3 processes on the one GPU; make_cluster sets 1."""
    raw = {"jobqueue": {"pbs": {"cores": 8, "memory": "60GiB", "resource-spec": "select=1:ncpus=8:ngpus=1:mem=64gb"}}}
    script = job_script(raw)
    assert "#PBS -l select=1:ncpus=8:ngpus=1:mem=64gb" in script
    cmd = worker_command(script)
    assert "--resources GPU=1" in cmd and "--nworkers" not in cmd and "--nthreads 8" in cmd
    cpu = worker_command(job_script({"jobqueue": {"pbs": {"cores": 9, "memory": "9GiB"}}}))
    assert "--nworkers 3" in cpu and "--resources" not in cpu


@pytest.mark.parametrize("raw, message", [
    ({"jobqueue": {"slurm": {"cores": 1, "memory": "1GiB", "gres": "gpu:1"}}}, "jobqueue.slurm.gres: unknown key"),
    ({"jobqueue": {"slurm": {"cores": 1, "memory": "1GiB", "header-skip": ["--mem"]}}}, "use job-directives-skip"),
    ({"jobqueue": {"slurm": {"cores": 1, "memory": "1GiB"}, "pbs": {}}}, "exactly one of slurm, pbs"),
    ({"jobqueue": {"sge": {"cores": 1}}}, "exactly one of slurm, pbs (got sge)"),
    ({"jobqueue": {"slurm": {"memory": "1GiB"}}}, "cores and memory are required"),
    ({"queue": "x", "jobqueue": {"slurm": {}}}, "queue: unknown top-level key"),
    ({"jobqueue": {"slurm": {"cores": 8, "memory": "8GiB", "job-extra-directives": ["--gres=gpu:2"]}}},
     "got 2 GPU(s)"),
    ({"jobqueue": {"slurm": {"cores": 8, "processes": 2, "memory": "8GiB", "job-extra-directives": ["--gres=gpu:1"]}}},
     "processes: 2"),
    ({"jobqueue": {"slurm": {"cores": 8, "memory": "8GiB", "worker-extra-args": ["--resources", "GPU=1"]}}},
     "asks the batch system for no GPU"),
    ({"jobqueue": {"slurm": {"cores": 8, "memory": "8GiB",
                             "job-extra-directives": ["--mem=8G", "--mem-per-gpu=8G", "--gres=gpu:1"]}}},
     "sbatch refuses both"),
    # GiB asked, G granted: 64 GiB > 60 GiB
    ({"jobqueue": {"slurm": {"cores": 8, "processes": 1, "memory": "64GiB",
                             "job-extra-directives": ["--gres=gpu:1", "--mem-per-gpu=60G"]}}},
     "may use 64.00 GiB (memory: 64GiB) but the job is granted 60.00 GiB (--mem-per-gpu=60G x 1 GPU)"),
    ({"jobqueue": {"slurm": {"cores": 4, "memory": "16GiB", "job-mem": "15G"}}}, "granted 15.00 GiB (--mem=15G)"),
    ({"jobqueue": {"pbs": {"cores": 4, "memory": "16GiB", "resource-spec": "select=1:ncpus=4:mem=12gb"}}},
     "granted 12.00 GiB (resource-spec mem=12gb)"),
])
def test_profiles_that_cannot_work_fail_with_one_line_naming_the_problem(raw, message):
    with pytest.raises(ProfileError) as err:
        load_profile(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gb_is_not_gib():
    """64GB (dask: 64e9 bytes = 59.6 GiB) fits a 60G SLURM grant; 64GiB does not (previous test)."""
    p = load_profile({"jobqueue": {"slurm": {"cores": 8, "processes": 1, "memory": "64GB",
                                             "job-extra-directives": ["--gres=gpu:1", "--mem-per-gpu=60G"]}}})
    assert p.options["job-directives-skip"] == ["--mem"]
    assert slurm_bytes("60G") == 60 * GiB and slurm_bytes("4000") == 4000 * 2**20 and slurm_bytes("512M") == 2**29
    assert pbs_bytes("12gb") == 12 * GiB and pbs_bytes("1024") == 1024
    with pytest.raises(ProfileError, match="binary units"):
        slurm_bytes("60 GiBs")


def test_gpu_count_and_resources_parsing():
    assert slurm_gpus(["--gres=gpu:1"]) == 1
    assert slurm_gpus(["--gres=gpu:a100:4"]) == 4
    assert slurm_gpus(["--gpus=2"]) == 2 and slurm_gpus(["-G 3"]) == 3 and slurm_gpus(["--gres=gpu"]) == 1
    assert slurm_gpus(["--gres=nvme:1", "--constraint=a100"]) == 0
    assert worker_resources(["--nthreads", "2", "--resources", "GPU=1 FOO=2.5"]) == {"GPU": 1.0, "FOO": 2.5}
    assert worker_resources(["--resources=GPU=1,MEM=10e9"]) == {"GPU": 1.0, "MEM": 10e9}


def test_profile_lookup_by_name_path_and_env(tmp_path, monkeypatch):
    (tmp_path / "site.yaml").write_text("description: x\njobqueue:\n  slurm:\n    cores: 2\n    memory: 4GiB\n")
    monkeypatch.setenv("XRDCT_CLUSTER_PROFILES", str(tmp_path))
    assert load_profile("site").path == tmp_path / "site.yaml"
    assert load_profile(tmp_path / "site.yaml").options["cores"] == 2
    with pytest.raises(ProfileError, match=r"'nope' not found \(known: site, "):
        load_profile("nope")


def test_cli_cluster_script_and_list():
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    r = CliRunner().invoke(app, ["cluster", "script", "--profile", "slurm-gpu", "--cluster-set", "queue=gpu",
                                 "--cluster-set", "walltime=08:00:00"])
    assert r.exit_code == 0, r.output
    assert "#SBATCH --gres=gpu:1" in r.output and "#SBATCH -p gpu" in r.output and "#SBATCH -t 08:00:00" in r.output
    assert "#SBATCH --mem=" not in r.output
    r = CliRunner().invoke(app, ["cluster", "script", "--profile", "slurm-gpu", "--cluster-set", "memory=80GiB"])
    assert r.exit_code == 2 and "granted 64.00 GiB" in r.output
    r = CliRunner().invoke(app, ["cluster", "list"])
    assert r.exit_code == 0 and "slurm-gpu" in r.output and "invalid" not in r.output


def test_cli_run_with_a_broken_profile_fails_before_anything_is_written(one_slice_scan, tmp_path):
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    store = tmp_path / "never.zarr"
    base = ["run", str(one_slice_scan.workflow), "--set", f"store.path={store}"]
    r = CliRunner().invoke(app, base + ["--cluster", "slurm-gpu", "--cluster-set", "gres=gpu:1"])
    assert r.exit_code == 2 and "override.gres: unknown key" in r.output
    r = CliRunner().invoke(app, base + ["--cluster", "no-such-profile"])
    assert r.exit_code == 2 and "cluster profile 'no-such-profile' not found" in r.output
    r = CliRunner().invoke(app, base + ["--cluster", "slurm-cpu", "--scheduler-address", "tcp://127.0.0.1:1"])
    assert r.exit_code == 2 and "not both" in r.output
    assert not store.exists()


# ------------------------------------------------------------------------------------------
# GPU stages ask for the GPU only where the cluster offers it
# ------------------------------------------------------------------------------------------
def _restrictions(client) -> dict:
    return client.run_on_scheduler(lambda dask_scheduler: {
        ts.key: ts.resource_restrictions for ts in dask_scheduler.tasks.values()})


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
@pytest.mark.parametrize("gpu_workers", [True, False])
def test_gpu_stages_ask_for_the_gpu_resource_only_when_offered(one_slice_scan, tmp_path, gpu_workers):
    from distributed import Client, LocalCluster

    from xrdct_dask import load_workflow
    from xrdct_dask.cluster.local import stage_resources
    from xrdct_dask.pipeline.graph import build_graph
    from xrdct_dask.runs.execute import compute_with_progress
    from xrdct_dask.runs.inputs import check_inputs
    from xrdct_dask.runs.open import prepare_store

    wf = load_workflow(one_slice_scan.workflow, {"store.path": str(tmp_path / "r.zarr")})
    ai, _ = check_inputs(wf)
    ctx = prepare_store(wf, ai)
    kw = {"resources": {"GPU": 1}} if gpu_workers else {}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0", **kw) as lc, \
            Client(lc) as client:
        resources = stage_resources(client, wf, lc)
        assert resources["integrate"] == ({"resources": {"GPU": 0.5}} if gpu_workers else {})
        assert resources["recon"] == resources["pdf"] == {}  # no CPU-marked workers: no annotation
        # finishes either way: on a CPU-only cluster nothing waits for a GPU
        compute_with_progress(client, build_graph(ctx, resources=resources), progress=False)
        restr = _restrictions(client)
    integ = {k: v for k, v in restr.items() if k[0] == "integrate"}
    assert integ and all(v == ({"GPU": 0.5} if gpu_workers else None) for v in integ.values())
    assert all(v is None for k, v in restr.items()
               if isinstance(k, tuple) and k[0] in ("center", "recon", "pdf-scale", "pdf"))
    # a dask-jobqueue GPU cluster is read from its job's worker command; a CPU engine never needs the GPU
    assert stage_resources(None, wf, make_fake_gpu_cluster())["integrate"] == {"resources": {"GPU": 0.5}}
    wf_cpu = load_workflow(one_slice_scan.workflow, {"integrate.engine": "numpy"})
    assert stage_resources(None, wf_cpu, make_fake_gpu_cluster())["integrate"] == {}


def make_fake_gpu_cluster():
    """What gpu_resources sees of a dask-jobqueue GPU cluster: its job's worker command."""
    class _Job:
        _command_template = "python -m distributed.cli.dask_worker tcp://x:1 --resources GPU=1"

    class _Cluster:
        _dummy_job = _Job()

    return _Cluster()


def test_engine_report_says_which_engine_ran_where():
    from xrdct_dask.runs.report import engine_report

    results = [{"engine": "cupy", "worker": "tcp://10.0.0.1:4000"}, {"engine": "cupy", "worker": "tcp://10.0.0.1:4001"},
               {"engine": "numpy", "worker": "tcp://10.0.0.2:4000"}]
    assert engine_report(results) == [
        "engine cupy: 2 integrate tasks on 2 worker(s) (10.0.0.1 x2)",
        "engine numpy: 1 integrate tasks on 1 worker(s) (10.0.0.2)"]


# ------------------------------------------------------------------------------------------
# a real SLURM (cluster/local-slurm/start.sh)
# ------------------------------------------------------------------------------------------
START_LOG = REPO / "build" / "local-slurm.log"


@pytest.fixture(scope="module")
def local_slurm():
    """Skips, saying why, unless the one-node SLURM of cluster/local-slurm/start.sh takes jobs."""
    how = ("run `make test-slurm` as root (or `CI=1 make test`, as CI does): it installs slurm-wlm + munge "
           "(Debian/Ubuntu), writes /etc/slurm/slurm.conf and starts munged, slurmctld, slurmd; README: Tests")
    why = START_LOG.read_text().strip().splitlines()[-1] if START_LOG.is_file() and START_LOG.stat().st_size else ""
    why = f" (start.sh said: {why})" if why else ""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip(f"no local SLURM: sbatch/sinfo not installed{why}; {how}")
    out = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T"], capture_output=True, text=True, timeout=20)
    states = out.stdout.split()
    if out.returncode != 0 or not set(states) & {"idle", "mixed", "allocated"}:
        msg = (out.stderr.strip().splitlines() or ["no 'debug' partition"])[-1] if out.returncode else \
            f"partition debug is {states or 'empty'}"
        pytest.skip(f"local SLURM not taking jobs: {msg}{why}; {how}")
    return True


@pytest.mark.slurm
def test_sbatch_accepts_the_memory_directives_of_every_slurm_profile(local_slurm, tmp_path):
    """sbatch itself is the oracle for #698: it refuses --mem next to --mem-per-gpu before anything
    else; every profile's script must get past that check (gres gpu is unknown here: that error is fine)."""
    for name in ("slurm-cpu", "slurm-gpu", "local-slurm"):
        script = tmp_path / f"{name}.sh"
        script.write_text(job_script(name))
        out = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=30)
        assert "mutually exclusive" not in out.stderr, (name, out.stderr)
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\n#SBATCH --mem=1G\n#SBATCH --mem-per-gpu=1G\ntrue\n")
    out = subprocess.run(["sbatch", "--test-only", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "mutually exclusive" in out.stderr  # the oracle does catch the clash


@pytest.mark.slurm
@pytest.mark.slow  # two whole runs, one through SLURM jobs
def test_workflow_through_slurm_jobs_equals_the_local_run(local_slurm, one_slice_scan, tmp_path):
    """The same workflow on LocalCluster and on SLURM jobs (`xrdct run --cluster local-slurm`): identical stores.

    Same code, same inputs, single-threaded BLAS in every dask worker: every array must match
    exactly (NaN where NaN), and the run must really have used the SLURM jobs' workers.
    """
    from distributed import LocalCluster

    from xrdct_dask import load_workflow, run

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as lc:
        local = run(load_workflow(one_slice_scan.workflow, {"store.path": str(tmp_path / "local.zarr")}), cluster=lc,
                    progress=False, summary=False)
    # through the command line, as a user would: profile by name, adaptive up to 2 jobs
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    logs, slurm = tmp_path / "slurm-logs", tmp_path / "slurm.zarr"
    r = CliRunner().invoke(app, ["run", str(one_slice_scan.workflow), "--set", f"store.path={slurm}", "--cluster",
                                 "local-slurm", "--jobs", "2", "--adaptive", "--cluster-set", f"log_directory={logs}"])
    assert r.exit_code == 0, r.output
    assert "engine numpy: 1 integrate tasks on 1 worker(s) (127.0.0.1)" in r.output
    a = assert_same_stores(local, slurm)
    assert np.isfinite(a["recon/intensity"]).all() and np.abs(a["pdf/G"]).max() > 0
    # the workers were SLURM jobs: their logs (dask-jobqueue log_directory) show them registering
    errs = sorted(logs.glob("xrdct-test-worker-*.err"))
    assert errs, f"no SLURM job logs in {logs}"
    text = "".join(p.read_text() for p in errs)
    assert "Registered to:" in text and "xrdct: integrate engine numpy" in text


# ------------------------------------------------------------------------------------------
# on a GPU machine: a GPU worker takes the decode-integrate tasks and says so
# ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.slow  # a whole run on a GPU worker
def test_gpu_worker_runs_decode_integrate_with_the_cupy_engine(one_slice_scan, tmp_path):
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy sees no CUDA device")
    except cp.cuda.runtime.CUDARuntimeError as err:
        pytest.skip(f"no usable CUDA device: {err}")
    pytest.importorskip("xrdct_dask.integrate._cupy", reason="the cupy integration engine is not in this checkout")
    import zarr
    from distributed import LocalCluster

    from xrdct_dask import load_workflow, run

    wf = load_workflow(one_slice_scan.workflow, {"store.path": str(tmp_path / "gpu.zarr"), "integrate.engine": "auto"})
    with LocalCluster(n_workers=1, threads_per_worker=4, resources={"GPU": 1}, dashboard_address=":0",
                      host="127.0.0.1") as lc:
        path = run(wf, cluster=lc, summary=False)
    info = zarr.open_group(str(path), mode="r").attrs["run_summary"]
    assert "engine cupy: 1 integrate tasks on 1 worker(s) (127.0.0.1)" in info["engine_report"], info
    assert info["engines"] == ["cupy"]


@pytest.mark.slurm
@pytest.mark.slow  # two whole runs, one through SLURM jobs, one job cancelled along the way
def test_a_slurm_job_cancelled_mid_run_the_run_completes_identical(local_slurm, one_slice_scan, tmp_path):
    """`xrdct run --cluster local-slurm --jobs 2`, one of the two worker jobs cancelled (scancel) once
    tasks run: the other job finishes the run, the store equals the local run's exactly, and the
    run's messages say a worker was lost and how many tasks ran again."""
    import threading

    from distributed import LocalCluster
    from typer.testing import CliRunner

    from xrdct_dask import load_workflow, run
    from xrdct_dask.cli import app

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as lc:
        local = run(load_workflow(one_slice_scan.workflow, {"store.path": str(tmp_path / "local.zarr"),
                                                       "store.omega_chunk": 1}), cluster=lc,
                    progress=False, summary=False)
    slurm = tmp_path / "slurm.zarr"
    cancelled: list[str] = []
    stop = threading.Event()

    def cancel_one():
        """Once both worker jobs run and the store has a written block, scancel the first job."""
        while not stop.is_set():
            out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-n", "xrdct-test-worker", "-o", "%i"],
                                 capture_output=True, text=True, timeout=20).stdout.split()
            if len(out) >= 2 and any((slurm / "tasks" / "integrate").glob("c/*/*")):
                subprocess.run(["scancel", out[0]], timeout=20)
                cancelled.append(out[0])
                return
            stop.wait(0.5)  # until the run ends, polling squeue

    t = threading.Thread(target=cancel_one, daemon=True)
    t.start()
    try:
        r = CliRunner().invoke(app, ["run", str(one_slice_scan.workflow), "--set", f"store.path={slurm}", "--set",
                                     "store.omega_chunk=1", "--cluster", "local-slurm", "--jobs", "2",
                                     "--cluster-set", f"log_directory={tmp_path / 'logs'}"])
    finally:
        stop.set()
        t.join()
    assert r.exit_code == 0, r.output
    assert cancelled, "no job was cancelled (the run ended first)"
    assert "1 worker lost; " in r.output and "retried on the others" in r.output, r.output
    assert_same_stores(local, slurm)


def test_a_runs_client_never_changes_the_callers_dask_scheduler(one_slice_scan):
    """The run computes through its own client.  It must not become the process's default: dask
    restores ``scheduler`` only when the last default client closes, so a run's client closed
    before a notebook's client (opened after it) left ``scheduler: dask.distributed`` behind, and
    the next ``xr.open_zarr(...).compute()`` failed with "no Client active"."""
    import dask
    from distributed import Client, LocalCluster, default_client

    from xrdct_dask import load_workflow
    from xrdct_dask.cluster.local import client_for

    wf = load_workflow(one_slice_scan.workflow)
    before = dask.config.get("scheduler", None)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        runs, started = client_for(wf, None, lc)
        assert started is None and dask.config.get("scheduler", None) == before
        with pytest.raises(ValueError):
            default_client()
        user = Client(lc)  # a notebook's client, opened while the run is on
        runs.close()
        user.close()
    assert dask.config.get("scheduler", None) == before
