"""GPU memory sized to the card (issue 29, item 3): one rule for every process a local run puts on
a GPU (xrdct_dask/cluster/gpulayout.py), each process's share handed to it in its environment
(xrdct_dask/gpushare.py), the recon and pdf tasks' device blocks held to it.

The rule is a pure function of the card's size and the workflow: these tests run without a GPU,
with fake cards from 16 GB to an H200's 141 GB (``compute.gpu_memory``).  What the engine really
allocates against :func:`~xrdct_dask.integrate._cupy.engine_gpu_bytes` is the gpu-marked test here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xrdct_dask.backend import gpu_available
from xrdct_dask.cluster import gpulayout as gl
from xrdct_dask.config import Workflow, WorkflowError
from xrdct_dask.gpushare import ENV, GpuShare, device_share, process_share
from xrdct_dask.store import budget

GB = 10**9
# the cards: a 16 GB and a 24 GB one, an A100/H100 of 80 GB (the H100's own figure: 85.0e9 bytes), an H200
CARDS = [16 * GB, 24 * GB, 80 * GB, 85_000_000_000, 141 * GB]
PILATUS2M = 1679 * 1475


def workflow(**sets) -> Workflow:
    """A whole-workflow scan of the benchmark's size (628 x 400, 2000 q bins, G(r)), files not needed."""
    d = {"inputs": {"frames": "/nowhere/f_{index:06d}.cbf", "poni": "/nowhere/g.poni"},
         "scan": {"nz": 6, "nomega": 628, "nx": 400}, "store": {"path": "/nowhere/run.zarr"},
         "integrate": {"npt_rad": 2000}}
    for key, value in sets.items():
        section, name = key.split(".")
        d.setdefault(section, {})[name] = value
    return Workflow.model_validate(d)


def pilatus_demand(**sets) -> gl.GpuDemand:
    """The Pilatus 2M demand of the benchmark workflow (2.5 MB compressed frames)."""
    return gl.gpu_demand(workflow(**sets), PILATUS2M, 2_500_000)


@pytest.mark.parametrize("cores", [2, 16, 64])
@pytest.mark.parametrize("card", CARDS)
def test_every_process_on_the_card_stays_within_70_percent(card, cores):
    """For each card and core count: at least one GPU worker on a batch of the allowed sizes, at
    least one recon/pdf process whose tasks get at least their least blocks, and the sum over all
    processes (contexts, engines, tasks) at most 70 % of the card (exact arithmetic, no tolerance);
    the pool fences of all of them together never pass the card."""
    d = pilatus_demand()
    lay = gl.gpu_layout(card, d, cores=cores)
    assert lay.workers_per_gpu >= 1 and lay.batch_frames in (*gl.BATCHES, gl.LEAST_BATCH)
    assert lay.worker_bytes == d.worker_bytes(lay.batch_frames)
    assert lay.aux_per_gpu >= 1 and lay.task_bytes >= d.task_least
    assert lay.aux_bytes == gl.CONTEXT_BYTES + lay.aux_threads * lay.task_bytes
    assert lay.total_bytes <= 0.70 * card
    assert lay.workers_per_gpu * lay.worker_bytes + lay.aux_per_gpu * lay.aux_bytes == lay.total_bytes
    fences = lay.workers_per_gpu * (lay.worker_share().pool_bytes + gl.CONTEXT_BYTES) + \
        lay.aux_per_gpu * (lay.aux_share().pool_bytes + gl.CONTEXT_BYTES)
    assert fences <= card
    assert lay.cpu_workers == lay.aux_per_gpu  # one GPU: every CPU worker runs its recon and pdf on it


def test_larger_cards_get_more_workers_and_larger_batches():
    """The H200 keeps the six 128-frame workers it ran at 10.1k frames/s; the H100 (80 GB), where
    they went out of memory, gets four of 64 frames; smaller cards fewer; never fewer frames in
    flight on a larger card."""
    d = pilatus_demand()
    lays = [gl.gpu_layout(card, d, cores=16) for card in CARDS]
    flight = [lay.workers_per_gpu * lay.batch_frames for lay in lays]
    assert flight == sorted(flight)
    assert (lays[-1].workers_per_gpu, lays[-1].batch_frames) == (6, 128)
    assert (lays[3].workers_per_gpu, lays[3].batch_frames) == (4, 64)
    # the old default on the H100 (four workers of 128 frames, the twelve other cores' recon/pdf
    # processes at their least) does not fit in 70 % of it: what went out of memory
    old = 4 * d.worker_bytes(128) + 8 * (gl.CONTEXT_BYTES + d.task_least)
    assert old > 0.70 * 85_000_000_000


def test_recon_and_pdf_on_the_cpu_leave_the_card_to_the_engines():
    """recon.engine and pdf.engine numpy: no task bytes, no recon/pdf process on the card (their
    workers see no GPU), the CPU workers from the cores left."""
    d = pilatus_demand(**{"recon.engine": "numpy", "pdf.engine": "numpy"})
    assert d.task_least == d.task_want == 0
    lay = gl.gpu_layout(80 * GB, d, cores=16)
    assert lay.aux_per_gpu == 0 and lay.task_bytes == 0 and lay.cpu_workers == 16 - 2 * lay.workers_per_gpu
    assert lay.total_bytes == lay.workers_per_gpu * lay.worker_bytes <= 0.70 * 80 * GB


def test_fixed_worker_counts_shrink_the_batches_then_refuse_naming_the_key():
    """compute.workers_per_gpu is kept: its batches shrink to fit (128, 64, then 32 frames); where
    even 32 do not, a one-line error names compute.workers_per_gpu.  compute.n_workers recon/pdf
    processes that cannot all fit name compute.n_workers."""
    d = pilatus_demand()
    lay = gl.gpu_layout(24 * GB, d, cores=16, workers_per_gpu=2)
    assert (lay.workers_per_gpu, lay.batch_frames) == (2, 32) and lay.total_bytes <= 0.70 * 24 * GB
    with pytest.raises(WorkflowError) as err:
        gl.gpu_layout(24 * GB, d, cores=16, workers_per_gpu=6)
    msg = str(err.value)
    assert msg.startswith("compute.workers_per_gpu: 6 GPU worker processes (batches of 32 frames") and "\n" not in msg
    with pytest.raises(WorkflowError) as err:
        gl.gpu_layout(24 * GB, d, cores=16, n_workers=40)
    assert str(err.value).startswith("compute.n_workers: ") and "40 recon/pdf processes" in str(err.value)


@pytest.mark.parametrize("card", [2 * GB, 4 * GB])
def test_a_card_too_small_for_one_worker_is_a_one_line_error(card):
    """A Pilatus 2M engine on 32-frame batches needs ~4.9 GB with its context: a 2 or 4 GB card
    (x 70 %) cannot hold one GPU worker and one recon/pdf process; the error names
    compute.gpu_memory, the sizes, and what to change."""
    with pytest.raises(WorkflowError) as err:
        gl.gpu_layout(card, pilatus_demand(), cores=16)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("compute.gpu_memory: 1 GPU worker process (batches of 32 frames of "
                                              "2,476,525 pixels) and 1 recon/pdf process")
    assert f"of its {card / GB:.1f} GB ({0.7 * card / GB:.1f} GB)" in msg and "integrate.engine: numpy" not in msg


def test_task_blocks_on_the_gpu_stay_within_the_task_bytes():
    """A recon task's bins at once and a PDF batch's voxels on the GPU: the layout's (and the
    engine's batch) where the share allows, fewer where not, never under one; each within
    task_bytes unless that one is already more."""
    nw, nx = 628, 400
    assert budget.gpu_q_sub(0, nw, nx, 256) == 256  # no bound: the layout's
    for task in (10**8, 10**9, 4 * 10**9):
        q = budget.gpu_q_sub(task, nw, nx, 256)
        assert 1 <= q <= 256 and (q == 1 or budget.recon_gpu_bytes(nw, nx, q) <= task)
        b = budget.gpu_pdf_batch(task, 2000, 1951)
        assert 1 <= b <= budget.PDF_BATCH["cupy"] and budget.pdf_gpu_bytes(b, 2000, 1951) <= task
    assert budget.gpu_pdf_batch(0, 2000, 1951) == budget.PDF_BATCH["cupy"]
    assert budget.recon_gpu_bytes(nw, nx, 32, iterative=True) > budget.recon_gpu_bytes(nw, nx, 32)


def test_the_share_travels_in_the_environment_and_bad_values_are_named():
    share = GpuShare(pool_bytes=12 * GB, batch_frames=64, task_bytes=0)
    assert process_share(share.env()) == share
    assert process_share({}) is None
    with pytest.raises(ValueError, match=ENV):
        process_share({ENV: "{'pool': 1}"})
    with pytest.raises(ValueError, match=ENV):
        process_share({ENV: json.dumps({"pool_bytes": -1})})


def test_numpy_tasks_ignore_the_share(monkeypatch):
    """A worker's share bounds device blocks only: a task on the numpy engine takes the layout's
    blocks whatever its environment says (CPU stores stay bit-identical)."""
    from xrdct_dask.pipeline import tasks_pdf
    from xrdct_dask.pipeline.tasks_recon import _device_q_sub

    monkeypatch.setenv(ENV, json.dumps({"pool_bytes": 10**6, "task_bytes": 1}))
    assert device_share(np) is None
    ctx = type("Ctx", (), {"layout": budget.Layout(16, 64, 32, 8, 8, 2**30), "workflow": workflow()})()
    assert _device_q_sub(ctx, np, 628, 400) == 32
    assert tasks_pdf._batch(np, 2000, 1951) == budget.PDF_BATCH["numpy"]


def test_local_gpu_workers_get_their_shares_in_their_environment():
    """The local cluster's worker specs for two GPUs laid out on a 24 GB card: workers_per_gpu GPU
    workers per GPU with the batch in their share, the CPU workers round robin over the GPUs
    with the task bytes in theirs; with recon and pdf on the CPU those see no GPU and get none."""
    from xrdct_dask.cluster.local import gpu_worker_specs

    wf = workflow(**{"compute.gpu_memory": "24GB"})
    lay = gl.layout_of(wf, 2, 16, 24 * GB, (PILATUS2M, 2_500_000))
    specs = gpu_worker_specs(wf, [0, 1], lay)
    gpu = {k: v["options"] for k, v in specs.items() if k.startswith("gpu-")}
    cpu = {k: v["options"] for k, v in specs.items() if k.startswith("cpu-")}
    assert len(gpu) == 2 * lay.workers_per_gpu and len(cpu) == lay.cpu_workers == 2 * lay.aux_per_gpu
    for o in gpu.values():
        assert o["resources"] == {"GPU": 1} and process_share(o["env"]) == lay.worker_share()
        assert process_share(o["env"]).batch_frames == lay.batch_frames
    assert sorted(o["env"]["CUDA_VISIBLE_DEVICES"] for o in cpu.values()) == sorted(["0", "1"] * lay.aux_per_gpu)
    assert all(process_share(o["env"]).task_bytes == lay.task_bytes for o in cpu.values())
    wf = workflow(**{"compute.gpu_memory": "24GB", "recon.engine": "numpy", "pdf.engine": "numpy"})
    lay = gl.layout_of(wf, 2, 16, 24 * GB, (PILATUS2M, 2_500_000))
    cpu = [v["options"]["env"] for k, v in gpu_worker_specs(wf, [0, 1], lay).items() if k.startswith("cpu-")]
    assert cpu and all(e == {"CUDA_VISIBLE_DEVICES": ""} for e in cpu)


def test_local_cluster_refuses_a_card_too_small_before_any_worker_starts(monkeypatch):
    """compute.gpu_memory: 2GB with GPUs asked for: the one-line error, and no cluster made."""
    from xrdct_dask.cluster import local

    monkeypatch.setattr(local, "SpecCluster", lambda *a, **k: pytest.fail("a cluster was started"))
    monkeypatch.setattr(gl, "frame_facts", lambda wf: (PILATUS2M, 2_500_000))
    with pytest.raises(WorkflowError, match=r"^compute.gpu_memory: 1 GPU worker process"):
        local.local_cluster(workflow(**{"compute.gpu_memory": "2GB"}), gpus=[0])


def test_config_key_gpu_memory_is_a_size_or_auto():
    assert workflow().compute.gpu_memory == "auto"
    assert workflow(**{"compute.gpu_memory": "24GB"}).compute.gpu_memory == "24GB"
    with pytest.raises(ValueError, match="gpu_memory"):
        workflow(**{"compute.gpu_memory": "lots"})


def test_plan_shows_the_gpu_layout_of_a_card_given_by_its_size():
    """`xrdct plan` with compute.gpu_memory: the layout's lines (workers, batch, tasks, the planned
    bytes within 70 % of the card), the figures in the plan's JSON; too small a card is a note,
    not a failed plan; on a machine without GPU and with gpu_memory auto, no layout."""
    from xrdct_dask.runs.plan import format_plan, plan_workflow

    p = plan_workflow(workflow(**{"compute.gpu_memory": "80GB"}))
    lay = p.to_dict()["gpu_layout"]
    assert lay["card_bytes"] == 80 * GB and lay["total_bytes"] <= lay["budget_bytes"] == 56 * GB
    text = format_plan(p)
    assert "GPU layout: a card of 80.0 GB" in text
    assert f"{lay['workers_per_gpu']} GPU workers per GPU: batches of {lay['batch_frames']} frames" in text
    p = plan_workflow(workflow(**{"compute.gpu_memory": "2GB"}))
    assert not p.gpu_layout and any(n.startswith("GPU layout: compute.gpu_memory: ") for n in p.notes)
    if p.gpus == 0:
        assert not plan_workflow(workflow()).gpu_layout


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs cupy and a CUDA GPU")
def test_the_engine_allocates_no_more_than_its_count_and_takes_its_share(monkeypatch, tmp_path):
    """On a GPU: an engine made with a share in its environment runs batches of the share's size,
    its memory pool fenced to the share; integrating 4 batches of a Pilatus 2M frame (Poisson
    counts at 20, written as a CBF by fabio) on one pipeline holds at most its own count
    (engine_gpu_bytes, one pipeline) x POOL_SLACK in cupy's pool."""
    import cupy as cp
    from fabio.cbfimage import CbfImage
    from pyFAI.detectors import detector_factory
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.integrate._cupy import engine_gpu_bytes
    from xrdct_dask.io.cbf import read_cbf_payload

    frame = np.random.default_rng(0).poisson(20, (1679, 1475)).astype(np.int32)
    CbfImage(data=frame, header={}).write(str(tmp_path / "f.cbf"))
    payload = bytes(read_cbf_payload(tmp_path / "f.cbf").data)
    share = GpuShare(pool_bytes=20 * GB, batch_frames=64)
    monkeypatch.setenv(ENV, share.env()[ENV])
    cp.get_default_memory_pool().free_all_blocks()
    ai = AzimuthalIntegrator(dist=0.3, poni1=0.1, poni2=0.1, detector=detector_factory("Pilatus2M"), wavelength=1e-10)
    integ = Integrator(ai, frame.shape, 2000, "q_nm^-1", engine="cupy")
    assert integ.batch_frames == 64 and cp.get_default_memory_pool().get_limit() == share.pool_bytes
    for _ in integ.integrate_batches([([payload] * 64, np.ones(64))] * 4):
        pass
    used = cp.get_default_memory_pool().total_bytes()
    count = engine_gpu_bytes(64, integ.plan.npix, integ.plan.nbins, len(payload), integ.plan.nnz, pipelines=1)
    assert used <= gl.POOL_SLACK * count, (used, count)
