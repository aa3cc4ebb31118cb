"""The NeXus export's ``azint`` entry: the reduced patterns as NXazint1d / NXazint2d with the
integrator's accumulators and the NXprocess that made them (workflow, versions, input digests).
Oracles: silx.io (the default NXdata, its signal, errors and axes) and h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.export import export_nexus
from xrdct_dask.store.budget import Layout
from xrdct_dask.testing.stores import run_markers

NZ, NW, NX, NCHI, NQ = 1, 6, 5, 4, 12


def make_store(path, rng, sectors: bool):
    """A store of the layout a run with (or without) sectors and kept sums has, its sums random and
    intensity and sigma made from them as the integrator makes them."""
    layout = Layout(omega_chunk=3, q_chunk=8, q_sub=8, y_chunk=NX, r_chunk=1, budget=2**30)
    chi = np.linspace(-135, 135, NCHI) if sectors else None
    attrs = {"workflow": {"integrate": {"npt_azim": NCHI if sectors else 1}},
             "workflow_yaml": "integrate:\n  npt_azim: 4\n",
             "engine": "numpy", "wavelength_angstrom": 0.1378, "created": "2026-01-02T03:04:05",
             "input_contents": {"inputs.poni": {"path": "/data/geometry.poni", "sha256": "ab" * 32}},
             "versions": {"pyFAI": "2026.9.0"}, "poni": {"dist": 0.2}}
    store.create_store(path, nz=NZ, nomega=NW, nx=NX, radial=np.linspace(1, 40, NQ), radial_unit="q_nm^-1",
                       omega_deg=np.arange(NW) * 30.0, x_mm=np.arange(NX) * 0.5, z_mm=np.zeros(NZ), r_A=None,
                       layout=layout, attrs=attrs, markers=run_markers(NZ, NW, NX, NQ, 0, layout), chi_deg=chi,
                       sums=True)
    root = zarr.open_group(str(path), mode="r+")
    shape = (NZ, NW, NX, NCHI, NQ) if sectors else (NZ, NW, NX, NQ)
    sums = {n: rng.uniform(1, 100, shape).astype(np.float32) for n in store.SUM_ARRAYS}
    for n, v in sums.items():
        root[f"reduced/{n}"][...] = v
    root["reduced/intensity"][...] = sums["sum_signal"] / sums["sum_normalization"]
    root["reduced/sigma"][...] = np.sqrt(sums["sum_variance"]) / sums["sum_normalization"]
    return path


@pytest.mark.parametrize("sectors", [True, False], ids=["NXazint2d", "NXazint1d"])
def test_azint_entry_has_the_accumulators_and_the_process(tmp_path, rng, sectors):
    """The azint entry opens in silx as NXdata (signal I, errors I_errors, axes z, omega, x, [azimuthal,]
    radial), holds the five sums, I = sum_signal / sum_normalization, and an NXprocess whose
    configuration is the run's workflow YAML and whose input digests are the store's; every dataset
    is a link to the reduced entry's (no second copy)."""
    import silx.io
    from silx.io.nxdata import NXdata

    path = make_store(tmp_path / "run.zarr", rng, sectors)
    out = export_nexus(path, tmp_path / "run.h5")
    root = zarr.open_group(str(path), mode="r")
    with silx.io.open(str(out)) as f:
        nx = NXdata(f["azint/data"])
        assert nx.is_valid, nx.issues
        want = ["z", "omega", "x", "azimuthal_axis", "radial_axis"] if sectors else ["z", "omega", "x", "radial_axis"]
        assert nx.axes_dataset_names == want
        np.testing.assert_array_equal(nx.signal[...], root["reduced/intensity"][...])
        np.testing.assert_array_equal(nx.errors[...], root["reduced/sigma"][...])
    with h5py.File(out, "r") as f:
        e = f["azint"]
        assert e.attrs["NX_class"] == "NXentry" and (
            e["definition"][()].decode() == ("NXazint2d" if sectors else "NXazint1d"))
        d = e["data"]
        for n in store.SUM_ARRAYS:
            np.testing.assert_array_equal(d[n][...], root[f"reduced/{n}"][...])
        np.testing.assert_allclose(d["I"][...], d["sum_signal"][...] / d["sum_normalization"][...], rtol=1e-6)
        assert d["I"].id == f["reduced/intensity/intensity"].id and d["radial_axis"].attrs["units"] == "nm^-1"
        if sectors:
            assert d["azimuthal_axis"].attrs["units"] == "deg"
        p = e["reduction"]
        assert p.attrs["NX_class"] == "NXprocess" and p["program"][()].decode() == "xrdct_dask"
        assert p["configuration/data"][()].decode() == root.attrs["workflow_yaml"]
        assert p["input_digests/inputs.poni"][()].decode() == "ab" * 32
        assert p["input_digests/inputs.poni"].attrs["path"] == "/data/geometry.poni"
        assert p["date"][()].decode() == "2026-01-02T03:04:05"
        assert abs(e["instrument/monochromator/energy"][()] - 90.0) < 0.05


def test_a_parts_export_has_the_workers_write_the_accumulators(tmp_path, rng, monkeypatch):
    """In a parts export the five accumulators of the azint entry are written into the part files
    (by the tasks that write the parts: on the workers with a client) and the master holds them as
    virtual datasets, links to the reduced entry's: no accumulator byte is stored in the master,
    and the azint entry adds only its metadata (< 64 kB; 21 kB at 1000^3, bench_azint_master.py)
    to it.  Every accumulator reads back equal to the store's."""
    import xrdct_dask.export.parts as parts

    monkeypatch.setattr(parts, "PART_MIN_BYTES", 0)  # this store is small: every array of 2+ dims in parts
    path = make_store(tmp_path / "run.zarr", rng, sectors=False)
    out = export_nexus(path, tmp_path / "run.h5", single_file=False)
    root = zarr.open_group(str(path), mode="r")
    with h5py.File(out, "r") as f:
        d = f["azint/data"]
        for n in store.SUM_ARRAYS:
            assert d[n].is_virtual and d[n].id == f[f"reduced/{n}/{n}"].id, n
            assert {s.file_name for s in d[n].virtual_sources()} == {"run.h5.parts/part-00000.h5"}, n
            assert d[n].id.get_storage_size() == 0, n
            np.testing.assert_array_equal(d[n][...], root[f"reduced/{n}"][...])
    monkeypatch.setattr("xrdct_dask.export.nexus.write_azint", lambda *a, **k: None)
    without = export_nexus(path, tmp_path / "without.h5", single_file=False)
    assert out.stat().st_size - without.stat().st_size < 64 << 10
