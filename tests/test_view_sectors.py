"""The viewer on a run with azimuthal sectors (issue 27 with issue 28): the reconstruction is shown
as the mean over the sectors, and the texture/strain arrays are maps among the voxel maps, one per
reflection (and per sector)."""

from __future__ import annotations

import numpy as np

from xrdct_dask import store
from xrdct_dask.store.budget import Layout
from xrdct_dask.view.data import RunData

NZ, NOMEGA, NX, NCHI, NQ = 2, 6, 5, 4, 8


def sector_store(path):
    """A store of 4 sectors and 2 reflections whose every array holds known values: recon/intensity
    = (chi + 1) * (q + 1) + 100 z; texture/index[.., p] = 10 p + y; texture/strain[.., k, p] = 1e-3 (k - p)."""
    lay = Layout(omega_chunk=3, q_chunk=4, q_sub=4, y_chunk=5, r_chunk=1, budget=2**26)
    peaks = [{"label": "Ni 111", "d_angstrom": 2.03}, {"label": "Fe 110", "d_angstrom": 2.02}]
    chi = np.array([-135.0, -45.0, 45.0, 135.0])
    store.create_store(path, nz=NZ, nomega=NOMEGA, nx=NX, radial=np.linspace(10, 40, NQ), radial_unit="q_nm^-1",
                       omega_deg=np.linspace(0, 180, NOMEGA, endpoint=False), x_mm=np.arange(NX) * 0.1,
                       z_mm=np.arange(NZ) * 0.1, r_A=None, layout=lay, chi_deg=chi, peaks=peaks,
                       attrs={"workflow": {"integrate": {"unit": "q_nm^-1", "npt_azim": NCHI}},
                              "wavelength_angstrom": 0.2})
    z, y, x, k, q = np.meshgrid(*(np.arange(n) for n in (NZ, NX, NX, NCHI, NQ)), indexing="ij")
    store.open_array(path, f"{store.RECON}/intensity")[...] = ((k + 1) * (q + 1) + 100 * z).astype(np.float32)
    z, y, x, p = np.meshgrid(*(np.arange(n) for n in (NZ, NX, NX, 2)), indexing="ij")
    store.open_array(path, f"{store.TEXTURE}/index")[...] = (10 * p + y).astype(np.float32)
    z, y, x, k, p = np.meshgrid(*(np.arange(n) for n in (NZ, NX, NX, NCHI, 2)), indexing="ij")
    store.open_array(path, f"{store.TEXTURE}/strain")[...] = (1e-3 * (k - p)).astype(np.float32)
    return path


def test_texture_and_strain_maps_are_among_the_voxel_maps(tmp_path):
    """Each reflection's texture index is a map (and each reflection's strain in each sector),
    named by the reflection's label and the sector's chi; the map read is that reflection's (and
    sector's) plane of the array, exactly."""
    d = RunData(sector_store(tmp_path / "run.zarr"))
    maps = d.voxel_maps()
    assert {"texture/index [Ni 111]", "texture/index [Fe 110]", "texture/orientation_deg [Ni 111]",
            "texture/strain [Ni 111, chi -135°]", "texture/strain [Fe 110, chi 135°]"} <= set(maps)
    assert sum(m.startswith("texture/strain [") for m in maps) == NCHI * 2
    y = np.arange(NX, dtype=np.float32)[:, None] * np.ones(NX, np.float32)
    np.testing.assert_array_equal(d.voxel_map("texture/index [Fe 110]", 1), 10 + y)
    np.testing.assert_array_equal(d.voxel_map("texture/strain [Fe 110, chi 45°]", 0),
                                  np.full((NX, NX), np.float32(1e-3 * (2 - 1))))
    assert d.units("texture/strain [Fe 110, chi 45°]") == "1" and d.units("texture/orientation_deg [Ni 111]") == "deg"


def test_sector_reconstruction_is_shown_as_the_mean_over_sectors(tmp_path):
    """q map, summed q range, voxel pattern and mean pattern of a sector store: the mean over the 4
    sectors of (chi + 1)(q + 1) + 100 z = 2.5 (q + 1) + 100 z, exactly (float32 sums of small integers)."""
    d = RunData(sector_store(tmp_path / "run.zarr"))
    assert (d.nz, d.ny, d.nx, d.nq, d.nchi) == (NZ, NX, NX, NQ, NCHI) and not d.has_copy
    expect = 2.5 * (np.arange(NQ) + 1)
    np.testing.assert_array_equal(d.q_map(1, 3), np.full((NX, NX), np.float32(expect[3] + 100)))
    np.testing.assert_array_equal(d.q_range_map(0, 2, 7), np.full((NX, NX), np.float32(expect[2:7].sum())))
    np.testing.assert_array_equal(d.voxel_pattern(1, 2, 3), (expect + 100).astype(np.float32))
    np.testing.assert_array_equal(d.mean_pattern(0), expect.astype(np.float32))
