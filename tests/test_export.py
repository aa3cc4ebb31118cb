"""NeXus export of a run store and the store's own metadata (units, long_name, status codes), and
PDFgetX3's files (.iq .sq .fq .gr) of a run's voxels.

For NeXus the store is made by ``store.create_store`` (the layout every run has) and filled with
random values, so the export is checked on every group without running the workflow.  Oracles:
h5py and ``silx.io`` (the reader of silx view) open the file, find the default NXdata, and its
signal and axes equal the zarr arrays exactly (a copy: no tolerance).  The PDFgetX3 files come
from a real run of the simulated scan (slow): its own readers (PDFgetX3's configuration format,
diffpy.srfit's parser) read them back.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.export import ExportError, export_nexus
from xrdct_dask.export.nexus import _h5_chunks
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.store.budget import Layout
from xrdct_dask.testing.references import rel_max
from xrdct_dask.testing.stores import run_markers

NZ, NW, NX, NQ, NR = 2, 12, 10, 40, 30


@pytest.fixture()
def run_store(tmp_path, rng):
    path = tmp_path / "run.zarr"
    layout = Layout(omega_chunk=5, q_chunk=16, q_sub=16, y_chunk=NX, r_chunk=NR, budget=2**30)
    store.create_store(path, nz=NZ, nomega=NW, nx=NX, radial=np.linspace(1, 40, NQ), radial_unit="q_nm^-1",
                       omega_deg=np.arange(NW) * 15.0, x_mm=np.arange(NX) * 0.5, z_mm=np.arange(NZ) * 1.0,
                       r_A=np.linspace(0.5, 15, NR), layout=layout, attrs={"workflow": {"scan": {"nz": NZ}},
                                                                          "engine": "numpy"},
                       markers=run_markers(NZ, NW, NX, NQ, NR, layout), pdf_attrs={"qmax": 20.0})
    root = zarr.open_group(str(path), mode="r+")
    root["reduced/intensity"][...] = rng.random((NZ, NW, NX, NQ), dtype=np.float32)
    root["reduced/sigma"][...] = rng.random((NZ, NW, NX, NQ), dtype=np.float32)
    status = rng.choice([0, 0, 0, 2, 1], (NZ, NW, NX)).astype(np.int8)
    root["reduced/frame_status"][...] = status
    root["reduced/frame_ok"][...] = status == 0
    root["recon/intensity"][...] = rng.random((NZ, NX, NX, NQ), dtype=np.float32)
    root["pdf/G"][0] = rng.normal(size=(NX, NX, NR)).astype(np.float32)  # slice 1 not computed: NaN fill
    return path


def test_every_store_variable_has_units_and_long_name(run_store):
    """Viewers label axes and colour bars from these; frame_status says what its codes mean."""
    root = zarr.open_group(str(run_store), mode="r")
    seen = 0

    def visit(g, where):
        nonlocal seen
        for name, arr in g.arrays():
            assert "units" in arr.attrs and "long_name" in arr.attrs, f"{where}/{name}: {dict(arr.attrs)}"
            seen += 1
        for name, sub in g.groups():
            visit(sub, f"{where}/{name}")

    visit(root, "")
    assert seen > 30
    st = root["reduced/frame_status"].attrs
    assert st["flag_values"][0] == -1 and st["flag_values"][1:] == [int(s) for s in FrameStatus]
    assert st["flag_meanings"].split()[1:4] == ["ok", "truncated", "missing"]
    assert st["codes"]["2"] == "missing" and st["usable_codes"] == [0, 8, 9]
    assert root["reduced/q"].attrs["units"] == "nm^-1"
    assert root["pdf/lowr_slope"].attrs["units"] == "1/angstrom^3"  # set by create_store, kept


def test_export_opens_in_silx_and_equals_the_store(run_store, tmp_path):
    import silx.io
    from silx.io.nxdata import NXdata, get_default

    out = export_nexus(run_store, tmp_path / "run.h5")
    root = zarr.open_group(str(run_store), mode="r")
    with silx.io.open(str(out)) as f:
        default = get_default(f)  # root default -> reduced entry -> intensity NXdata
        assert default is not None and default.group.name == "/reduced/intensity"
        np.testing.assert_array_equal(default.signal[...], root["reduced/intensity"][...])
        assert default.axes_dataset_names == ["z", "omega", "x", "q"]
        np.testing.assert_array_equal(default.axes[1][...], root["omega"][...])
        np.testing.assert_array_equal(default.errors[...], root["reduced/sigma"][...])
        for group, name, dims in (("recon", "intensity", ["z", "y", "x", "q"]), ("pdf", "G", ["z", "y", "x", "r"]),
                                  ("reduced", "frame_status", ["z", "omega", "x"])):
            nx = NXdata(f[f"{group}/{name}"])
            assert nx.is_valid and nx.axes_dataset_names == dims, (group, name, nx.issues)
            np.testing.assert_array_equal(nx.signal[...], root[f"{group}/{name}"][...])
    with h5py.File(out, "r") as f:
        assert f.attrs["creator"] == "xrdct_dask export" and f.attrs["default"] == "reduced"
        assert f["recon"].attrs["default"] == "intensity" and f["pdf"].attrs["default"] == "G"
        d = f["reduced/intensity/intensity"]
        assert d.attrs["units"] == "counts" and d.compression == "gzip"
        assert f["reduced/intensity/q"].attrs["units"] == "nm^-1"
        assert f["reduced/intensity/intensity"].attrs["long_name"].startswith("azimuthally integrated")
        # coordinates stored once, hard-linked into every NXdata of the entry
        assert f["reduced/intensity/q"].id == f["reduced/sigma/q"].id
        assert np.isnan(f["pdf/G/G"][1]).all()
        assert f["reduced/frame_status/frame_status"].attrs["flag_meanings"].startswith("not_written ok")
        assert '"engine"' not in f.attrs["xrdct_workflow"] and f.attrs["xrdct_engine"] == "numpy"


def test_hdf5_chunks_nest_in_zarr_chunks_and_copy_is_chunk_by_chunk(run_store, tmp_path, monkeypatch):
    """No read larger than one zarr chunk (the store's memory bound), HDF5 chunks <= 1 MiB that
    divide the zarr chunks (each write covers whole HDF5 chunks)."""
    assert _h5_chunks((1, 64, 400, 256), 4) == (1, 64, 50, 64)  # largest dim divided first, 0.8 MiB
    c = _h5_chunks((1, 1571, 1000, 64), 4)
    assert np.prod(c) * 4 <= 1 << 20 and all(z % h == 0 for z, h in zip((1, 1571, 1000, 64), c))
    biggest = []
    orig = zarr.Array.__getitem__

    def spy(self, sel):
        out = orig(self, sel)
        biggest.append(np.asarray(out).size)
        return out

    monkeypatch.setattr(zarr.Array, "__getitem__", spy)
    out = export_nexus(run_store, tmp_path / "r.h5", groups=["recon"], compression="lz4")
    assert max(biggest) <= NX * NX * 16  # one recon chunk (1, nx, nx, q_chunk=16)
    import hdf5plugin  # noqa: F401  (the LZ4 filter, to read back)

    with h5py.File(out, "r") as f:
        assert list(f) == ["recon"] and "32004" in f["recon/intensity/intensity"]._filters


def test_export_refuses_what_it_must_not_do(run_store, tmp_path):
    foreign = tmp_path / "theirs.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(ExportError, match="not an export of this program"):
        export_nexus(run_store, foreign, overwrite=True)
    with h5py.File(foreign, "r") as f:
        assert list(f) == ["x"]  # untouched
    out = export_nexus(run_store, tmp_path / "a.h5", groups=["pdf"])
    with pytest.raises(ExportError, match="exists: pass overwrite"):
        export_nexus(run_store, out)
    export_nexus(run_store, out, groups=["recon"], overwrite=True)  # our own export: replaced
    with h5py.File(out, "r") as f:
        assert list(f) == ["recon"]
    with pytest.raises(ExportError, match="no group 'nope'"):
        export_nexus(run_store, tmp_path / "b.h5", groups=["nope"])
    with pytest.raises(ExportError, match="not a zarr store"):
        export_nexus(tmp_path / "missing.zarr", tmp_path / "c.h5")
    assert not list(tmp_path.glob(".*.partial"))


def test_cli_export(run_store, tmp_path):
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    r = CliRunner().invoke(app, ["export", str(run_store), str(tmp_path / "o.h5"), "--group", "recon"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert list(f) == ["recon"]
    r = CliRunner().invoke(app, ["export", str(run_store)])
    assert r.exit_code == 2 and "nothing to do" in r.output
    r = CliRunner().invoke(app, ["export", str(run_store), str(tmp_path / "o.h5")])
    assert r.exit_code == 2 and "exists" in r.output and len(r.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------
# PDFgetX3 files of a run (the simulated scan, pdf-then-recon)
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # the run of pdf_then_recon_run (conftest): ~15 s
def test_export_pdfgetx3_files(pdf_then_recon_run, tmp_path):
    """xrdct export RUN --pdf-files DIR: .iq .sq .fq .gr in PDFgetX3's layout (header readable as a
    PDFgetX3 configuration with the run's clipped limits, then two columns); a voxel's G is the
    run's pdf/G of that voxel (the two orders agree to 1e-3); S = 1 + F/Q; a region writes its mean;
    existing files are not replaced; no output option is a one-line error."""
    import zarr
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.export import ExportError, export_pdf_files, parse_region
    from xrdct_dask.pdf.pdfgetx3 import read_config

    path, wf, scan = pdf_then_recon_run
    root = zarr.open_group(str(path), mode="r")
    ni = scan.load_truth()["phase_maps"][0] > 0.99
    z, y, x = (int(v[0]) for v in np.nonzero(ni & root["pdf/ok"][:]))
    out = tmp_path / "files"
    files = export_pdf_files(path, out, voxels=[(z, y, x)])
    assert sorted(f.suffix for f in files) == [".fq", ".gr", ".iq", ".sq"]
    gr = next(f for f in files if f.suffix == ".gr")
    text = gr.read_text()
    assert "#### start data\n#S 1\n#L r($\\AA$)  G($\\AA^{-2}$)\n" in text
    cfg = read_config(gr)
    attrs = dict(root["pdf"].attrs)
    assert cfg["composition"] == "Ni" and cfg["qmax"] == pytest.approx(attrs["qmax"], rel=1e-6)
    r, g = np.loadtxt(gr, comments="#", skiprows=text[:text.index("#### start")].count("\n")).T
    np.testing.assert_allclose(r, root["r"][:], atol=1e-9)
    assert rel_max(g, root["pdf/G"][z, y, x]) < 1e-3
    skip = text[:text.index("#### start")].count("\n")  # the header has the same lines in every file
    _, s = np.loadtxt(next(f for f in files if f.suffix == ".sq"), comments="#", skiprows=skip).T
    q_f, f = np.loadtxt(next(f for f in files if f.suffix == ".fq"), comments="#", skiprows=skip).T
    np.testing.assert_allclose(s, 1 + f / q_f, atol=1e-6)
    reg = export_pdf_files(path, out, region=parse_region(f"{z}:{z + 1},{y}:{y + 2},{x}:{x + 2}"))
    assert len(reg) == 4 and all("region_" in f.name for f in reg)
    with pytest.raises(FileExistsError, match="already exists; not overwritten"):
        export_pdf_files(path, out, voxels=[(z, y, x)])
    with pytest.raises(ExportError, match="outside the reconstruction"):
        export_pdf_files(path, tmp_path / "x", voxels=[(z, 999, x)])
    res = CliRunner().invoke(app, ["export", str(path)])
    assert res.exit_code == 2 and "nothing to do: give OUT.h5 (NeXus) and/or --pdf-files OUTDIR" in res.output
    res = CliRunner().invoke(app, ["export", str(path), "--pdf-files", str(tmp_path / "cli"),
                                   "--voxels", f"{z},{y},{x}"])
    assert res.exit_code == 0 and res.output.count(".gr") == 1


@pytest.mark.slow  # the run of pdf_then_recon_run (conftest): ~15 s
def test_exported_gr_file_loads_in_diffpy_srfit(pdf_then_recon_run, tmp_path):
    """diffpy.srfit (and PDFgui, which shares its reader) parses the exported .gr as a PDFgetX3
    file: its r grid and G are the run's, and the header gives the Q range it was computed with."""
    pdfparser = pytest.importorskip("diffpy.srfit.pdf.pdfparser", reason="diffpy.srfit not installed")
    import zarr

    from xrdct_dask.export import export_pdf_files

    path, wf, scan = pdf_then_recon_run
    root = zarr.open_group(str(path), mode="r")
    ni = scan.load_truth()["phase_maps"][0] > 0.99
    z, y, x = (int(v[0]) for v in np.nonzero(ni & root["pdf/ok"][:]))
    gr = next(f for f in export_pdf_files(path, tmp_path / "files", voxels=[(z, y, x)]) if f.suffix == ".gr")
    parser = pdfparser.PDFParser()
    parser.parseFile(str(gr))
    r, g = np.asarray(parser._x), np.asarray(parser._y)
    np.testing.assert_allclose(r, root["r"][:], atol=1e-6)
    assert rel_max(g, root["pdf/G"][z, y, x]) < 1e-3
    assert parser._meta["qmax"] == pytest.approx(root["pdf"].attrs["qmax"])


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_export_on_workers_reads_back_the_same(run_store, tmp_path, cluster, monkeypatch, compression):
    """The chunks read and compressed on two worker processes (tasks ``xrdct-export-*``, a piece of
    two zarr chunks each) and written here by ``write_direct_chunk`` read back exactly what the
    export made here reads back, HDF5 chunk shapes and filters included."""
    import hdf5plugin  # noqa: F401  (the LZ4 filter, to read back)
    from distributed import Client, get_task_stream

    import xrdct_dask.export.nexus as nexus

    monkeypatch.setattr(nexus, "EXPORT_PIECE_BYTES", 2 * NX * 5 * 16 * 4)  # two (1, 5, NX, 16) float32 chunks
    here = export_nexus(run_store, tmp_path / "here.h5", compression=compression)
    with Client(cluster) as client, get_task_stream(client) as ts:
        there = export_nexus(run_store, tmp_path / "there.h5", compression=compression, client=client,
                             single_file=True)
        workers = set(client.scheduler_info()["workers"])
    ran = [t for t in ts.data if str(t["key"]).startswith("xrdct-export-reduced-intensity-")]
    # (2, 12, 10, 40) in chunks (1, 5, 10, 16): 2 x 3 x 3 = 18 zarr chunks, 9 pieces of two
    assert len(ran) == NZ * 3 * 3 // 2 and {t["worker"] for t in ran} <= workers
    with h5py.File(here, "r") as a, h5py.File(there, "r") as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(names) >= 30
        for n in names:
            assert a[n].chunks == b[n].chunks and a[n].compression == b[n].compression, n
            np.testing.assert_array_equal(a[n][...], b[n][...], err_msg=n)


@pytest.fixture()
def parts_export(run_store, tmp_path, cluster, monkeypatch):
    """``run_store`` exported in parts by two worker processes (every array of 2+ dims in parts:
    the size threshold set to 0 for this small store): ``(master, task keys that ran)``."""
    from distributed import Client, get_task_stream

    import xrdct_dask.export.parts as parts

    monkeypatch.setattr(parts, "PART_MIN_BYTES", 0)
    with Client(cluster) as client, get_task_stream(client) as ts:
        out = export_nexus(run_store, tmp_path / "run.h5", client=client)
    return out, [str(t["key"]) for t in ts.data]


def test_parts_export_opens_in_silx_and_equals_the_store(run_store, parts_export):
    """Written by the workers as 2 part files (2 per worker asked, but only NZ = 2 slices of one
    zarr chunk each to share; tasks ``xrdct-export-part``) tied by
    a master of virtual datasets: silx finds the default NXdata, every dataset of the master
    reads back equal to its zarr array (a copy: exact, NaN fill of the slice not computed
    included), with its units, axes and the uncertainty link as in a single-file export."""
    import silx.io
    from silx.io.nxdata import NXdata, get_default

    out, keys = parts_export
    assert sum(k.startswith("xrdct-export-part-") for k in keys) == NZ
    assert sorted(p.name for p in (out.parent / "run.h5.parts").iterdir()) == \
        [f"part-{k:05d}.h5" for k in range(NZ)] + ["xrdct-export.json"]
    root = zarr.open_group(str(run_store), mode="r")
    with silx.io.open(str(out)) as f:
        default = get_default(f)
        assert default is not None and default.group.name == "/reduced/intensity"
        assert default.axes_dataset_names == ["z", "omega", "x", "q"]
        np.testing.assert_array_equal(default.errors[...], root["reduced/sigma"][...])
        for group, name, dims in (("recon", "intensity", ["z", "y", "x", "q"]), ("pdf", "G", ["z", "y", "x", "r"]),
                                  ("reduced", "frame_status", ["z", "omega", "x"])):
            nx = NXdata(f[f"{group}/{name}"])
            assert nx.is_valid and nx.axes_dataset_names == dims, (group, name, nx.issues)
    with h5py.File(out, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim >= 2 else None)
        assert len(names) >= 10
        for n in names:
            group, _, var = n.split("/")
            if group == "azint":  # the NXazint entry: hard links to reduced/'s (virtual) datasets
                assert f[n].is_virtual, n
                continue
            var = {"intensity_errors": "sigma"}.get(var, var)  # the uncertainties' link
            np.testing.assert_array_equal(f[n][...], root[f"{group}/{var}"][...], err_msg=n)
            assert f[n].is_virtual, n
        assert f["reduced/intensity/intensity"].attrs["units"] == "counts"
        assert np.isnan(f["pdf/G/G"][1]).all()


def test_a_missing_or_partial_part_is_one_line_naming_it(parts_export):
    """HDF5 reads a missing source as fill values without a word: check_parts (run by the export
    itself) names the missing part, a truncated part, and a part of another export, in one line."""
    from xrdct_dask.export import check_parts

    out, _ = parts_export
    check_parts(out)  # whole: nothing to say
    folder = out.parent / "run.h5.parts"
    part = folder / "part-00001.h5"
    data = part.read_bytes()
    part.unlink()
    with pytest.raises(ExportError, match=r"part-00001\.h5: part file of run\.h5 is missing") as err:
        check_parts(out)
    assert "\n" not in str(err.value)
    part.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=r"part-00001\.h5: part file of run\.h5 is not a whole HDF5 file") as err:
        check_parts(out)
    assert "\n" not in str(err.value)
    part.write_bytes(data)
    with h5py.File(part, "r+") as f:
        f.attrs["xrdct_export_token"] = "another export"
    with pytest.raises(ExportError, match=r"part-00001\.h5: part file of run\.h5 is partial or from another"):
        check_parts(out)


def test_parts_export_never_writes_over_a_users_folder(run_store, tmp_path, cluster, monkeypatch):
    """A folder OUT.h5.parts that is not this program's stops the export before anything is
    written; an earlier parts export of this program is replaced with --overwrite only."""
    from distributed import Client

    import xrdct_dask.export.parts as parts

    monkeypatch.setattr(parts, "PART_MIN_BYTES", 0)
    (tmp_path / "run.h5.parts").mkdir()
    (tmp_path / "run.h5.parts" / "mine.txt").write_text("a user's file")
    with Client(cluster) as client:
        with pytest.raises(ExportError, match="run.h5.parts exists and is not the parts folder"):
            export_nexus(run_store, tmp_path / "run.h5", client=client)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5.parts", "run.zarr"]
        assert (tmp_path / "run.h5.parts" / "mine.txt").read_text() == "a user's file"
        export_nexus(run_store, tmp_path / "b.h5", client=client)
        with pytest.raises(ExportError):
            export_nexus(run_store, tmp_path / "b.h5", client=client)
        export_nexus(run_store, tmp_path / "b.h5", client=client, overwrite=True)
    from xrdct_dask.export import check_parts

    check_parts(tmp_path / "b.h5")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
