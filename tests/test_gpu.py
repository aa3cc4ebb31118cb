"""GPU engine conformance (skipped without cupy and a CUDA device).

The GPU decoder passes the same ``DecoderTests`` as the CPU decoder (byte-exact against fabio);
the cupy integration engine passes the same ``IntegratorTests`` against pyFAI and equals the
CPU engine to 1e-5 (both accumulate in double precision; float32 inputs).
"""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.backend import gpu_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs cupy and a CUDA GPU")]

from .test_decode import DecoderTests  # noqa: E402
from .test_integrate import SHAPE, IntegratorTests, frames, mask  # noqa: E402,F401  (fixtures)


class TestGpuDecoder(DecoderTests):
    def decode(self, payloads, npix):
        from xrdct_dask.io.gpu_decode import decode_payloads_gpu

        out, off, status = decode_payloads_gpu(payloads, npix)
        host = out.get()
        return [host[a:b] for a, b in zip(off[:-1], off[1:])], status


def test_gpu_decoder_fuzz_never_hangs_or_overruns():
    """Random and mutated byte strings, thousands per launch: status 0/1, CPU decoder agrees."""
    from xrdct_dask.io import decode_batch, pack_payloads
    from xrdct_dask.io.gpu_decode import decode_payloads_gpu

    rng = np.random.default_rng(0)
    payloads = [bytes(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8)) for _ in range(3000)]
    # bias towards escapes: many 0x80 and 0x00 bytes
    for k in range(0, 3000, 3):
        b = bytearray(payloads[k])
        for i in range(0, len(b), 4):
            b[i] = 0x80 if rng.random() < 0.5 else 0x00
        payloads[k] = bytes(b)
    npix = rng.integers(1, 120, len(payloads))
    gpu, off, gst = decode_payloads_gpu(payloads, npix)
    cpu, off2, cst = decode_batch(*pack_payloads(payloads), npix)
    np.testing.assert_array_equal(gst, cst)
    g = gpu.get()
    for f in np.nonzero(cst == 0)[0]:
        np.testing.assert_array_equal(g[off[f]:off[f + 1]], cpu[off2[f]:off2[f + 1]])


class TestCupyEngine(IntegratorTests):
    engine = "cupy"


@pytest.mark.parametrize("kw", [dict(), dict(error_model="azimuthal"),
                                dict(error_model="azimuthal", outlier="sigma-clip", split="no", clip_threshold=3.0),
                                dict(error_model="poisson", outlier="sigma-clip", split="no")])
def test_gpu_equals_cpu_engine(sim_scan, kw):
    import cupy as cp

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io import read_frame

    stack = np.stack([read_frame(sim_scan.frame_path(i)) for i in range(64)])
    mon = np.linspace(0.8, 1.2, 64)
    cpu = Integrator(sim_scan.poni, SHAPE, 700, mask=sim_scan.mask, polarization_factor=0.99, engine="numpy", **kw)
    gpu = Integrator(sim_scan.poni, SHAPE, 700, mask=sim_scan.mask, polarization_factor=0.99, engine="cupy", **kw)
    assert gpu.engine == "cupy"
    a = cpu.integrate(stack, monitor=mon)
    b = gpu.integrate(cp.asarray(stack), monitor=mon)  # frames already on the device
    good = a.intensity != 0
    np.testing.assert_allclose(b.intensity[good], a.intensity[good], rtol=1e-5)
    np.testing.assert_allclose(b.sigma[good], a.sigma[good], rtol=1e-5)


def test_many_frames_in_one_call_equal_cpu_engine(sim_scan, monkeypatch):
    """More frames than one Poisson launch takes (GROUP): the launches and their row-chunk sums
    (several chunks per row) add up to the CPU engine's sums, frame by frame."""
    import cupy as cp

    from xrdct_dask.integrate import Integrator, _cupy
    from xrdct_dask.io import read_frame

    monkeypatch.setattr(_cupy, "CHUNK_ENTRIES", 64)  # this small detector's rows hold ~400 entries
    stack = np.stack([read_frame(sim_scan.frame_path(i % 64)) for i in range(_cupy.GROUP + 45)])
    mon = np.linspace(0.8, 1.2, stack.shape[0])
    cpu = Integrator(sim_scan.poni, SHAPE, 300, mask=sim_scan.mask, polarization_factor=0.99, engine="numpy")
    gpu = Integrator(sim_scan.poni, SHAPE, 300, mask=sim_scan.mask, polarization_factor=0.99, engine="cupy")
    assert gpu._impl.nchunks > np.count_nonzero(np.diff(gpu.plan.csr_indptr))  # rows were split
    a = cpu.integrate(stack, monitor=mon)
    b = gpu.integrate(cp.asarray(stack), monitor=mon)
    good = a.intensity != 0
    np.testing.assert_allclose(b.intensity[good], a.intensity[good], rtol=1e-5)
    np.testing.assert_allclose(b.sigma[good], a.sigma[good], rtol=1e-5)


def test_pipelined_batches_equal_single_calls(sim_scan):
    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io import read_cbf_payload

    payloads = [read_cbf_payload(sim_scan.frame_path(i)) for i in range(100)]
    gpu = Integrator(sim_scan.poni, SHAPE, 500, mask=sim_scan.mask, polarization_factor=0.99, engine="cupy")
    cpu = Integrator(sim_scan.poni, SHAPE, 500, mask=sim_scan.mask, polarization_factor=0.99, engine="numpy")
    batches = [(payloads[a:a + 32], np.ones(len(payloads[a:a + 32]))) for a in range(0, 100, 32)]
    got = list(gpu.integrate_batches(batches))
    assert len(got) == 4
    ref, _ = cpu.integrate_payloads(payloads)
    np.testing.assert_allclose(np.concatenate([g[0] for g in got]), ref.intensity, rtol=1e-5)
    truncated = [bytes(payloads[0].data)[:500]] + payloads[1:3]
    (i, s, st), = gpu.integrate_batches([(truncated, None)])
    assert st.tolist() == [1, 0, 0] and np.isnan(i[0]).all() and np.isfinite(i[1]).all()


def test_tasks_on_two_threads_share_one_engine(sim_scan):
    """Two tasks' batch streams on one engine at once (each takes its own pipeline of streams and
    buffers) give the results each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io import read_cbf_payload

    payloads = [read_cbf_payload(sim_scan.frame_path(i)) for i in range(96)]
    gpu = Integrator(sim_scan.poni, SHAPE, 400, mask=sim_scan.mask, polarization_factor=0.99, engine="cupy")

    def run(part):
        return np.concatenate([r[0] for r in gpu.integrate_batches(
            [(part[a:a + 16], np.linspace(0.9, 1.1, len(part[a:a + 16]))) for a in range(0, len(part), 16)])])

    alone = [run(payloads[:48]), run(payloads[48:])]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, [payloads[:48], payloads[48:]]))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_worker_warm_up_readies_every_pipeline_and_changes_no_result(sim_scan):
    """The worker plugin's warm-up reads the first frame into every pinned arena of ``tasks``
    rings and integrates it through as many pipelines; the patterns a task computes afterwards are
    those a cold engine computes, bit for bit."""
    from xrdct_dask import stages
    from xrdct_dask.config import load_workflow
    from xrdct_dask.io import read_cbf_payload

    wf = load_workflow(sim_scan.workflow, {"integrate.engine": "cupy"})
    stages.clear_integrators()
    integ = stages.integrator_for(wf)
    payloads = [read_cbf_payload(sim_scan.frame_path(i)) for i in range(40)]
    batches = [(payloads[a:a + 16], np.linspace(0.9, 1.1, len(payloads[a:a + 16]))) for a in range(0, 40, 16)]
    cold = np.concatenate([r[0] for r in integ.integrate_batches(batches)])
    integ.warm(wf.frame_source(), 3, wf.scan.nframes)
    eng = integ._impl
    assert len(eng._pipelines) == 3 and len(eng._free_rings) == 3
    largest = max(sim_scan.frame_path(i).stat().st_size for i in range(wf.scan.nframes))
    assert eng.slot_bytes >= largest  # sized from the scan's files, not from frame 0 alone
    assert all(a is not None and a.size >= integ.batch_frames * eng.slot_bytes for ring in eng._free_rings for a in ring)
    warm = np.concatenate([r[0] for r in integ.integrate_batches(batches)])
    np.testing.assert_array_equal(warm, cold)
    stages.clear_integrators()


def test_workflow_on_gpu_equals_cpu_run(sim_scan, tmp_path):
    """The whole simulated workflow with the cupy engine gives the CPU run's store to 1e-5."""
    import zarr

    from xrdct_dask import run
    from xrdct_dask.config import load_workflow

    stores = {}
    for engine in ("numpy", "cupy"):
        wf = load_workflow(sim_scan.workflow, {"store.path": str(tmp_path / f"{engine}.zarr"),
                                               "integrate.engine": engine, "compute.n_workers": 1,
                                               "compute.threads_per_worker": 2})
        stores[engine] = run(wf, progress=False, summary=False)
    a = zarr.open_group(str(stores["numpy"]), mode="r")
    b = zarr.open_group(str(stores["cupy"]), mode="r")
    assert b.attrs["engine"] == "cupy"
    # the workers see the GPU: reconstruction and G(r) ran there too (recon.engine, pdf.engine auto)
    engines = b.attrs["run_summary"]["stage_engines"]
    assert engines["integrate"] == engines["recon"] == engines["pdf"] == ["cupy"], engines
    for name in ("reduced/intensity", "reduced/sigma", "recon/intensity", "pdf/G"):
        x, y = a[name][:], b[name][:]
        scale = np.nanmax(np.abs(x))
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
