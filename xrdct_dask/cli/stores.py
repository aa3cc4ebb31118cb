"""The commands that read a run's store: ``xrdct info``, ``export``, ``view`` and ``center``
(nothing is written into the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from xrdct_dask.cli.group import _fail, _logging
from xrdct_dask.view import INSTALL


def info(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr", help="the run store to describe")],
    as_json: Annotated[bool, typer.Option("--json", help="print it as JSON")] = False,
    workflow: Annotated[bool, typer.Option(
        "--workflow", help="print the whole stored workflow (YAML) instead")] = False,
) -> None:
    """What a run store holds: workflow, inputs and their digests, frames flagged, stages done,
    timings and versions (nothing is written)."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.runs.info import format_info, info_json, store_info

    try:
        found = store_info(run_store)
    except ValueError as err:
        _fail(str(err))
    if workflow:
        typer.echo(yaml.safe_dump(found["workflow"], sort_keys=False).rstrip())
    else:
        typer.echo(info_json(found) if as_json else format_info(found))


def export(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr", help="the run store to export")],
    out: Annotated[Path | None, typer.Argument(metavar="[OUT.h5]", help="NeXus / HDF5 file to write")] = None,
    group: Annotated[list[str] | None, typer.Option(
        "--group",
        help="store group to export (repeat: --group recon --group pdf); default: reduced, recon, pdf")] = None,
    compression: Annotated[str, typer.Option(help="gzip (every reader) | lz4 (hdf5plugin) | none")] = "gzip",
    overwrite: Annotated[bool, typer.Option(help="replace OUT.h5 if it is an earlier export of this program")] = False,
    pdf_files: Annotated[Path | None, typer.Option(
        "--pdf-files", help="folder for PDFgetX3-layout .iq .sq .fq .gr files (PDFgui, diffpy.srfit)")] = None,
    voxels: Annotated[str | None, typer.Option(help="--pdf-files of voxels z,y,x;z,y,x... (one file set each)")] = None,
    mask: Annotated[Path | None, typer.Option(help="--pdf-files of a .npy bool (z,y,x) or (y,x) mask's mean")] = None,
    region: Annotated[str | None, typer.Option(help="--pdf-files of a box z0:z1,y0:y1,x0:x1's mean")] = None,
    scheduler_address: Annotated[str | None, typer.Option(
        help="read and compress the NeXus chunks on the workers of a running dask scheduler (tcp://...); "
             "default: here")] = None,
    single_file: Annotated[bool, typer.Option(
        "--single-file", help="with --scheduler-address: one HDF5 file written here (today's layout) instead "
                              "of part files written by the workers (OUT.h5.parts/) tied by OUT.h5")] = False,
) -> None:
    """Export a run: OUT.h5 as NeXus (NXentry / NXdata with axes and units, for silx, PyMca, DAWN,
    h5py), and/or --pdf-files OUTDIR in PDFgetX3's layout for voxels, a mask's or a region's mean."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.export import (
        DEFAULT_GROUPS,
        export_nexus,
        export_pdf_files,
        parse_region,
        parse_voxels,
    )

    if out is None and pdf_files is None:
        _fail("nothing to do: give OUT.h5 (NeXus) and/or --pdf-files OUTDIR (with --voxels, --mask or --region)")
    if out is not None:
        client = None
        if scheduler_address is not None:
            # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
            from distributed import Client

            client = Client(scheduler_address)
        try:
            nexus = export_nexus(run_store, out, tuple(group) if group else DEFAULT_GROUPS,
                                 compression=compression, overwrite=overwrite, client=client,
                                 single_file=True if single_file else None)
        finally:
            if client is not None:
                client.close()
        typer.echo(f"nexus: {nexus}")
    if pdf_files is not None:
        for p in export_pdf_files(run_store, pdf_files, voxels=parse_voxels(voxels) if voxels else None,
                                  mask=mask, region=parse_region(region) if region else None):
            typer.echo(str(p))


def _phases(pairs: list[str] | None) -> dict | None:
    """``["Ni=2.034,1.762"]`` -> ``{"Ni": [2.034, 1.762]}`` (None: none given)."""
    if not pairs:
        return None
    out = {}
    for p in pairs:
        name, _, ds = p.partition("=")
        try:
            out[name.strip()] = [float(d) for d in ds.split(",")]
            if not name.strip() or not all(d > 0 for d in out[name.strip()]):
                raise ValueError
        except ValueError:
            _fail(f"--phase {p!r}: expected NAME=d1,d2,... with d-spacings in angstrom, e.g. Ni=2.034,1.762")
    return out


def view(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr",
                                              help="the run store to look at (finished or being written)")],
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1 (0: any free one)")] = 5006,
    map_: Annotated[str | None, typer.Option(
        "--map", help="the map shown first: recon (at a q), pdf/G, or a per-voxel array such as pdf/scale")] = None,
    poll: Annotated[float, typer.Option(help="seconds between looks at the store for new blocks and slices")] = 2.0,
    phase: Annotated[list[str] | None, typer.Option(
        help="d-spacings (angstrom) to mark on voxel patterns: --phase Ni=2.034,1.762,1.246 (repeat for more; "
             "default: the workflow's view.phases)")] = None,
) -> None:
    """Look inside a run in the browser: maps at q or r, voxel patterns and G(r), sinograms, live
    while `xrdct watch` fills the store (127.0.0.1 only, with an access token in the URL)."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.view.server import start_server

    try:
        server, url = start_server(run_store, port, map_name=map_, poll_s=poll, phases=_phases(phase))
    except ImportError as err:  # bokeh (or tornado) missing
        _fail(f"xrdct view needs bokeh ({err}): {INSTALL}")
    typer.echo(f"xrdct view of {run_store}: {url}\n(from another machine: ssh -L {server.port}:127.0.0.1:"
               f"{server.port} THIS_HOST, then open the same URL; Ctrl-C stops)")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.stop()


def center(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr", help="the run store (only read)")],
    z: Annotated[int | None, typer.Option("--z", help="slice (default: the middle one)")] = None,
    out: Annotated[Path | None, typer.Option(help="PNG to write (default RUN-center-zK.png beside the store; "
                                                     "never a file this program did not write)")] = None,
    step: Annotated[float, typer.Option(help="pixels between candidate axes")] = 0.5,
    count: Annotated[int, typer.Option(help="candidate axes (the found one in the middle)")] = 9,
) -> None:
    """Picture of a slice reconstructed at candidate rotation axes around the one found, to check it."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.view.center import write_center_picture

    _logging(False)
    png, geo = write_center_picture(run_store, z, out, step_px=step, count=count)
    axis = geo.get("axis") or {}
    conf = f" (confidence {axis['confidence']:.2f}, {geo['center_source']})" if axis else f" ({geo['center_source']})"
    typer.echo(f"axis {geo['center']:.3f} px{conf}: {png}")
