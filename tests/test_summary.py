"""The summary picture read as a scientist reads it (xrdct_dask.view.summary).

The store is made by ``store.create_store`` (the layout every run has) and filled with the
simulator's ground truth, without running the workflow: the phantom's phase maps times their
Debye patterns as the reconstruction (q in 1/nm), their Radon transforms as the sinogram, and
G(r) of every voxel from ``compute_pdf``; three frames are flagged.  The matplotlib Figure that
``write_summary`` saves is inspected: every map has a colour bar labelled with its unit (or, for
the frame flags, a legend with the counts), every axis says its unit, maps are drawn y up as the
notebooks draw them, G is centred on 0 with diverging colours, the voxel curves are of different
voxels and phases, and the maps are titled with the q (and d) of the strongest peaks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.pdf import build_operator, compute_pdf
from xrdct_dask.simulate import WAVELENGTH_A, make_phantom, omega_angles_deg, phase_library, project
from xrdct_dask.store.budget import Layout
from xrdct_dask.testing.stores import run_markers
from xrdct_dask.view.summary import distinct_curves, pretty_unit, strongest_peaks, summary_figure, write_summary

NW, NX = 24, 20
FLAGGED = [(3, 4), (10, 12), (17, 0)]  # (omega step, x step) of the flagged frames


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("summary") / "run.zarr"
    q_nm = np.linspace(8.0, 250.0, 400)
    maps = make_phantom(1, NX)[:, 0]  # (phase, y, x)
    pats = np.stack([np.interp(q_nm / 10, p.q_A, p.intensity) for p in phase_library()])
    recon = np.einsum("pyx,pq->yxq", maps, pats).astype(np.float32)
    omega = omega_angles_deg(NW)
    total = np.einsum("pwx,pq->wx", project(maps, omega), pats).astype(np.float32)
    ok = np.ones((NW, NX), bool)
    for w, x in FLAGGED:
        ok[w, x], total[w, x] = False, np.nan
    op = build_operator(q_nm / 10, "Ni", 1.0, 20.0, 0.9, 0.5, 10.0, 0.02)
    res = compute_pdf(recon, op, min_scale=1e-6)  # voxels outside the sample (N = 0) get no G
    layout = Layout(omega_chunk=8, q_chunk=128, q_sub=128, y_chunk=6, r_chunk=256, budget=2**30)  # 4 row blocks
    x_mm = (np.arange(NX) - NX // 2) * 0.05
    store.create_store(path, nz=1, nomega=NW, nx=NX, radial=q_nm, radial_unit="q_nm^-1", omega_deg=omega,
                       x_mm=x_mm, z_mm=np.zeros(1), r_A=op.r_A, layout=layout,
                       markers=run_markers(1, NW, NX, q_nm.size, op.r_A.size, layout),
                       attrs={"workflow": {"integrate": {"unit": "q_nm^-1"}, "sinogram": {}},
                              "wavelength_angstrom": WAVELENGTH_A,
                              "run_summary": {"frames": NW * NX, "frame_status": {"OK": NW * NX - 3, "TRUNCATED": 3}}})
    root = zarr.open_group(str(path), mode="r+")
    root["reduced/total"][0] = total
    root["reduced/frame_ok"][0] = ok
    root["recon/intensity"][0] = recon
    root["pdf/G"][0] = res.G
    root["pdf/ok"][0] = res.ok
    root["pdf/scale"][0] = res.scale
    root.attrs["stage_status"] = {"reduced": "done", "recon": "done", "pdf": "done"}
    return path, maps, recon, q_nm


@pytest.fixture(scope="module")
def figure(run_store):
    return summary_figure(run_store[0])


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def colour_bar_of(fig, im):
    """The colour bar drawn for ``im`` (its own, or one shared through the same norm and colours)."""
    for ax in fig.axes:
        for other in ax.images:
            cb = other.colorbar
            if cb is not None and other.norm is im.norm and other.get_cmap().name == im.get_cmap().name:
                return cb
    return None


UNIT_IN_LABEL = re.compile(r"\((counts|counts/voxel|Å⁻²)\)$")


def test_every_map_has_a_colour_bar_with_its_unit_or_a_legend_of_flagged_frames(figure):
    """Sinograms (counts), reconstructed maps (counts/voxel) and the G map (Å⁻²) carry colour bars
    whose label ends in the unit; the frame-flag map carries a legend with both counts instead."""
    images = image_axes(figure)
    assert len(images) == 7  # 2 sinograms, 1 frame map, 3 recon maps, 1 G map
    legends = 0
    for ax in images:
        im = ax.images[0]
        if ax.get_legend() is not None:
            texts = [t.get_text() for t in ax.get_legend().get_texts()]
            assert texts == [f"used ({NW * NX - 3})", "flagged, filled from neighbours (3)"], texts
            legends += 1
            continue
        cb = colour_bar_of(figure, im)
        assert cb is not None, ax.get_title()
        assert UNIT_IN_LABEL.search(cb.ax.get_ylabel()), cb.ax.get_ylabel()
    assert legends == 1


def test_axes_say_their_units_and_maps_are_drawn_y_up_on_their_coordinates(figure, run_store):
    """As the notebooks draw them (xarray's .plot(): first dimension up): origin lower, the extent of
    the pixels centred on the stored coordinates (mm, deg); curves in nm⁻¹ and Å."""
    path = run_store[0]
    x = zarr.open_array(str(path / "x"), mode="r")[:]
    omega = zarr.open_array(str(path / "omega"), mode="r")[:]
    dx, dw = x[1] - x[0], omega[1] - omega[0]
    assert sum(1 for ax in image_axes(figure) if ax.get_title("left")) == 2
    assert [ax.get_ylabel() for ax in image_axes(figure) if ax.get_title("left")] == ["ω (deg)", ""]
    for ax in image_axes(figure):
        im = ax.images[0]
        assert im.origin == "lower"
        x0, x1, y0, y1 = im.get_extent()
        assert (x0, x1) == pytest.approx((x[0] - dx / 2, x[-1] + dx / 2))
        assert ax.get_xlabel() == "x (mm)"
        if ax.get_title("left") or ax.get_ylabel() == "ω (deg)":  # sinograms (the pair shares ω), frame flags
            assert (y0, y1) == pytest.approx((omega[0] - dw / 2, omega[-1] + dw / 2))
        else:
            assert ax.get_ylabel() == "y (mm)" and (y0, y1) == pytest.approx((x[0] - dx / 2, x[-1] + dx / 2))
    curves = [ax for ax in figure.axes if ax.lines and not ax.images]
    assert sorted(ax.get_xlabel() for ax in curves) == ["q (nm⁻¹)", "r (Å)", "r (Å)"]
    assert sorted(ax.get_ylabel() for ax in curves) == ["G (Å⁻²)", "G (Å⁻²)", "intensity (counts/voxel)"]


def test_G_map_is_diverging_and_centred_on_zero(figure):
    (ax,) = [ax for ax in image_axes(figure) if ax.get_title().startswith("G at r = ")]
    im = ax.images[0]
    assert im.get_cmap().name == "RdBu_r" and im.norm.vmax > 0 and im.norm.vmin == -im.norm.vmax
    assert np.nanmax(np.abs(im.get_array())) == pytest.approx(im.norm.vmax)  # the map uses the whole scale


def test_voxel_curves_are_different_voxels_of_different_phases(figure, run_store):
    """Four curves, four voxels (legend entries unique), one in each of the phantom's four phases
    (their patterns differ most), no two curves alike (Pearson r < 0.99); each is marked on the G
    map in its colour."""
    _, maps, _, _ = run_store
    (ax,) = [ax for ax in figure.axes if ax.get_title().startswith("G(r) of the voxels")]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == len(set(labels)) == 4
    x = np.round((np.arange(NX) - NX // 2) * 0.05, 6)
    phases = set()
    for text in labels:
        yv, xv = (float(v) for v in re.findall(r"= (-?[\d.]+) mm", text))
        iy, ix = int(np.argmin(np.abs(x - yv))), int(np.argmin(np.abs(x - xv)))
        phases.add(int(np.argmax(maps[:, iy, ix])))
    assert phases == {0, 1, 2, 3}, phases
    curves = np.array([line.get_ydata() for line in ax.lines])
    r = np.corrcoef(curves)
    assert r[~np.eye(4, dtype=bool)].max() < 0.99
    (gmap,) = [a for a in figure.axes if a.get_title().startswith("G at r = ")]
    assert [m.get_markeredgecolor() for m in gmap.lines] == [line.get_color() for line in ax.lines]


def test_maps_are_titled_with_q_and_d_of_the_strongest_peaks(figure, run_store):
    """The three maps are at the strongest peaks of the slice's mean voxel pattern (computed here
    from the whole volume: the picture reads it a block of rows at a time) and say q in nm⁻¹ and
    d = 2 pi / Q in Å (Q = q / 10 in 1/Å)."""
    _, _, recon, q_nm = run_store
    peaks = strongest_peaks(recon.reshape(-1, q_nm.size).mean(axis=0), 3)
    titles = [ax.get_title() for ax in image_axes(figure) if ax.get_title().startswith("q = ")]
    assert titles == [f"q = {q_nm[k]:.2f} nm⁻¹ (d = {2 * np.pi / (q_nm[k] / 10):.3f} Å)" for k in peaks]


def test_distinct_curves_never_repeat_a_row():
    """Two copies of a curve and a scaled copy are one curve (Pearson r = 1): asked for three rows,
    it gives the strongest and the one that differs, not a copy."""
    r = np.linspace(0, 10, 200)
    a, b = np.sin(r), np.cos(3 * r)
    curves = np.stack([a, a, 2 * a, b])
    assert distinct_curves(curves, np.array([1.0, 3.0, 2.0, 0.5]), 3) == [1, 3]
    assert distinct_curves(np.zeros((3, 5)), np.ones(3), 2) == []


@pytest.mark.parametrize("stored, shown", [("angstrom", "Å"), ("1/angstrom^2", "Å⁻²"), ("1/angstrom", "Å⁻¹"),
                                           ("nm^-1", "nm⁻¹"), ("A^-1", "Å⁻¹"), ("mm", "mm"), ("deg", "deg"),
                                           ("counts/voxel", "counts/voxel"), (None, "")])
def test_units_as_they_read_on_a_plot(stored, shown):
    assert pretty_unit(stored) == shown


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_write_summary_saves_the_figure(run_store, tmp_path):
    from PIL import Image

    out = write_summary(run_store[0], out=tmp_path / "s.png")
    with Image.open(out) as im:
        assert im.text["Software"] == "xrdct-dask summary" and im.size[0] > 1000


def test_without_the_pdf_stage_the_picture_stops_after_the_maps(run_store, tmp_path):
    """A run whose PDF stage has not finished: sinograms, pattern, frames and maps; no G panels."""
    import shutil

    path = tmp_path / "run.zarr"
    shutil.copytree(run_store[0], path)
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["stage_status"] = {"reduced": "done", "recon": "done", "pdf": "pending"}
    fig = summary_figure(path)
    assert len(image_axes(fig)) == 6
    assert not [ax for ax in fig.axes if "G" in ax.get_title() or "G" in ax.get_ylabel()]


def test_large_maps_are_drawn_as_block_means_and_flags_never_vanish():
    """A 2,500 x 1,200 slice is drawn at most 1,000 pixels a side: block means (NaN ignored), and a
    single flagged frame (0 in a map of 1) still shows as a flagged block."""
    from xrdct_dask.view.summary import MAX_DISPLAY, shrink

    img = np.arange(2500 * 1200, dtype=np.float64).reshape(2500, 1200)
    img[0, 0] = np.nan
    small = shrink(img)
    assert max(small.shape) <= MAX_DISPLAY and small.shape == (834, 600)
    np.testing.assert_allclose(small[1, 1], img[3:6, 2:4].mean())
    assert small[0, 0] == pytest.approx(np.nanmean(img[:3, :2]))
    flags = np.ones((2500, 1200))
    flags[1234, 567] = 0
    shown = shrink(flags, "min")
    assert shown.min() == 0 and (shown == 0).sum() == 1
    np.testing.assert_array_equal(shrink(img[:10, :10]), img[:10, :10])  # small maps as they are
