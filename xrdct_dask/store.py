"""The zarr v3 layout of a run, in one place: names, dimensions, chunks, attrs, regions.

    run.zarr/
      z, omega, x, y, q, r               coordinates (also repeated inside each group, so that
                                         ``xarray.open_zarr(path, group=...)`` is self-contained)
      reduced/intensity  f32 (z, omega, x, q)   chunks (1, omega_chunk, nx, q_chunk)
      reduced/sigma      f32 (z, omega, x, q)
      reduced/monitor    f32 (z, omega, x)
      reduced/total      f32 (z, omega, x)      sum over q of intensity (centre finding, previews)
      reduced/frame_index int64 (z, omega, x)   acquisition index of the frame at each point (-1: none)
      reduced/frame_ok   bool (z, omega, x)     false = missing or corrupt frame
      reduced/frame_status int8 (z, omega, x)   xrdct_dask.io.status.FrameStatus code (-1 = not yet written)
      reduced/scan_flag  int8 (z, omega, x)     DUPLICATE / OUT_OF_ORDER where the scan file placed the frame, else 0
      recon/intensity    f32 (z, y, x, q)       chunks (1, nx, nx, q_chunk)
      pdf/G              f32 (z, y, x, r)       chunks (1, nx, nx, r_chunk)
      pdf/scale, pdf/fq_highq_rms, pdf/lowr_slope, pdf/lowr_residual, pdf/ok   (z, y, x) per-voxel
                                                S(Q) scale and quality figures (see xrdct_dask.pdf)
      pdf/G_sinogram     f32 (z, omega, x, r)   pdf-then-recon only: G(r) of every frame
      pdf/aux_sinogram   f32 (z, omega, x, channel)  pdf-then-recon only: scale + quality inputs
      tasks/integrate    u8 (z, omega_block)    1 = that block of reduced/ is completely written
      tasks/center       f64 (z)                rotation axis of the slice (pixels); NaN = not yet found
      tasks/recon        u8 (z, q_block)        1 = that q block of recon/ is completely written
      tasks/pdf          u8 (z)                 1 = that slice of pdf/ is completely written
      attrs: workflow, versions, input digest, engine, stage status, template_complete

Data arrays are compressed with Blosc LZ4 and byte shuffle (``COMPRESSORS``).  The store is
created whole before any compute (template first); every task writes only its own
chunk-aligned region, so a retried task rewrites identical bytes and tasks never share a chunk.
Each task sets its one-element marker in ``tasks/`` (its own chunk) only after its data are
written, and zarr writes every chunk by write-then-rename: after a crash at any instant the
markers name exactly the tasks whose output is whole, which is what a resumed run skips.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

# Data arrays: byte-shuffled LZ4 in Blosc.  On float32 patterns it compresses better than zarr's
# default (zstd, no shuffle) and several times faster: a decode-integrate task writes ~26 MB per
# 1,600 frames, and at GPU rates the default's compression was a large part of its time.
COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)

REDUCED, RECON, PDF = "reduced", "recon", "pdf"
TASKS = "tasks"
FORMAT = "xrdct-dask/1"


class StoreWriteError(OSError):
    """A chunk of the store could not be written (full disk, read-only or vanished file system).

    Raised by the write functions of this module with the array and region named; the task that
    hit it set no done-marker, so a rerun rewrites that chunk.
    """


@dataclass(frozen=True, order=True)
class FrameBlock:
    """The frames of one task: slice ``z``, rotation steps ``omega_start:omega_stop``, every x."""

    z: int
    omega_start: int
    omega_stop: int

    @property
    def key(self) -> tuple:
        return ("decode-integrate", self.z, self.omega_start)


def frame_blocks(nz: int, nomega: int, omega_chunk: int) -> list[FrameBlock]:
    """All blocks of a scan, aligned with the omega chunks of ``reduced/``."""
    return [FrameBlock(z, w, min(w + omega_chunk, nomega)) for z in range(nz) for w in range(0, nomega, omega_chunk)]


def region_for(block: FrameBlock) -> tuple[slice, slice, slice]:
    """The (z, omega, x) region of ``reduced/`` a block writes (q: all)."""
    return (slice(block.z, block.z + 1), slice(block.omega_start, block.omega_stop), slice(None))


def q_blocks(nq: int, q_chunk: int) -> list[slice]:
    """q ranges of reconstruction tasks, aligned with the q chunks."""
    return [slice(a, min(a + q_chunk, nq)) for a in range(0, nq, q_chunk)]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("xrdct-dask", "numpy", "scipy", "numba", "pyFAI", "fabio", "dask", "distributed", "zarr", "xraydb"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def file_digest(path) -> str:
    """sha256 of a file's contents (PONI, mask, dark, flat, monitor, scan file: small next to the frames)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _coord(group, name: str, values: np.ndarray, attrs: dict) -> None:
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                             dimension_names=[name], overwrite=True)
    arr[...] = values
    arr.attrs.update(attrs)


# ------------------------------------------------------------------------------------------
# what is ours: a store is recognised by the format marker in its root zarr.json (written first),
# and replaced only whole, only when it holds nothing but what this program writes there
# ------------------------------------------------------------------------------------------
COORDS = ("z", "omega", "x", "y", "q", "r", "channel")
ROOT_ENTRIES = frozenset({"zarr.json", REDUCED, RECON, PDF, TASKS, *COORDS})
ASIDE_NEW, ASIDE_OLD = ".xrdct-new-", ".xrdct-old-"
ASIDE_SCAN = ".xrdct-scan-"  # the scan table converted while a store is prepared (xrdct_dask.io.scantable)


class StoreExistsError(FileExistsError):
    """``store.path`` names something this program must not replace; the message is one line."""


def root_attrs(path) -> dict | None:
    """The attributes of the zarr group at ``path`` (its root ``zarr.json``), None if there is none
    or it is unreadable.  Read as plain JSON: no zarr machinery for a folder that may not be a store."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("attributes", {}) if isinstance(meta, dict) else None


def is_store(path) -> bool:
    """True when ``path`` is a store this program created (complete or not): its marker is there."""
    return (root_attrs(path) or {}).get("format") == FORMAT


def foreign_entries(path) -> list[str]:
    """Entries of store ``path`` this program never writes: anything at the root other than its
    groups, coordinates and metadata, and anything in a group other than zarr arrays (a folder
    with a ``zarr.json``) and its own ``zarr.json``.  Chunk folders are not walked (nobody keeps
    files there, and a large store holds millions of them)."""
    path = Path(path)
    out = []
    for e in path.iterdir():
        if e.name in ROOT_ENTRIES or e.name.endswith(".partial"):
            if e.is_dir() and e.name in (REDUCED, RECON, PDF, TASKS):
                out += [f"{e.name}/{f.name}" for f in e.iterdir()
                        if not (f.name == "zarr.json" or f.name.endswith(".partial") or (f / "zarr.json").is_file())]
            continue
        out.append(e.name)
    return sorted(out)


def check_replaceable(path, inputs: dict[str, Path] | None = None) -> None:
    """Raise :class:`StoreExistsError` unless creating a store at ``path`` loses nothing: ``path``
    does not exist, is an empty folder, or is a store of this program holding nothing else
    (:func:`foreign_entries`); and it neither is nor lies above any of ``inputs`` (``{key: path}``)."""
    path = Path(path)
    full = path.resolve()
    for key, p in (inputs or {}).items():
        q = Path(p).resolve()
        if q == full or full in q.parents:
            raise StoreExistsError(f"store.path: {path} holds the run's input {key} ({p}): choose another store.path")
    inside = next((a for a in full.parents if is_store(a)), None)
    if inside is not None:  # a store written into another would make that one foreign to its own program
        raise StoreExistsError(f"store.path: {path} lies inside the store {inside}: choose a path outside it")
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise StoreExistsError(f"store.path: {path} exists and is not a folder: choose another store.path")
    if not any(path.iterdir()):
        return
    if not is_store(path):
        raise StoreExistsError(f"store.path: {path} exists and is not a store of xrdct-dask (store.overwrite only "
                               f"ever replaces one): choose another store.path")
    extra = foreign_entries(path)
    if extra:
        raise StoreExistsError(f"store.path: {path} is an xrdct-dask store but also holds {len(extra)} other "
                               f"entr{'y' if len(extra) == 1 else 'ies'} ({', '.join(extra[:3])}): move "
                               f"{'it' if len(extra) == 1 else 'them'} out or choose another store.path")


def _host_tag() -> str:
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_ASIDE_OWNER = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{12}$")


def aside_name(path, kind: str) -> Path:
    """``.run.zarr.xrdct-new-<host>-<pid>-<hex>`` beside ``run.zarr``: where a store is built before
    it is renamed into place (``ASIDE_NEW``), or where the store it replaces waits for deletion.
    The host (a digest of its name) and process id say who builds it (:func:`stale_aside`)."""
    import uuid

    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}{kind}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def stale_aside(folder: Path, path) -> bool:
    """True when ``folder`` (a leftover beside store ``path``) is provably a store this program was
    building and no process is building any more: named by :func:`aside_name` on this host for a
    process that is gone, and holding nothing but this program's entries (its format marker, or
    nothing yet).  Anything else (another host's, a live process's, an older name, a folder with
    other files) is not."""
    path = Path(os.path.abspath(path))
    prefix = f".{path.name}{ASIDE_NEW}"
    m = _ASIDE_OWNER.match(folder.name[len(prefix):]) if folder.name.startswith(prefix) else None
    if m is None or m["host"] != _host_tag() or int(m["pid"]) == os.getpid():
        return False
    try:
        os.kill(int(m["pid"]), 0)
        return False  # alive (or its number reused: kept either way)
    except ProcessLookupError:
        pass
    except OSError:  # EPERM: alive, another user's
        return False
    if folder.is_symlink() or not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    return is_store(folder) and not foreign_entries(folder)


def clean_leftovers(path) -> tuple[list[Path], list[Path]]:
    """Remove the leftovers beside ``path`` that :func:`stale_aside` proves this program's and
    stale (a killed run or reprocess's half-built store); ``(removed, kept)``: what is kept (another
    host's, a running process's, one holding other files, an older store waiting for deletion) is
    for the caller to report."""
    removed, kept = [], []
    for left in leftovers(path):
        if stale_aside(left, path):
            shutil.rmtree(left, ignore_errors=True)
            (kept if left.exists() else removed).append(left)
        else:
            kept.append(left)
    return removed, kept


def create_aside(path, build, inputs: dict[str, Path] | None = None):
    """Build a new store for ``path`` beside it and rename it into place when whole.

    ``build(tmp)`` writes the whole store at ``tmp`` (:func:`create_store` first, which writes the
    format marker before anything else).  Only then is an existing store at ``path`` (checked by
    :func:`check_replaceable` before anything is written, and again just before the swap) moved
    aside and deleted: a run that fails or is killed while building leaves the old store (or
    nothing) at ``path``, never a half-made one.  A failure removes the half-made copy (it is
    this call's own folder) and raises :class:`StoreWriteError` with one line.  Returns ``build``'s result.
    """
    path = Path(os.path.abspath(path))
    check_replaceable(path, inputs)
    tmp = aside_name(path, ASIDE_NEW)
    try:
        result = build(tmp)
        check_replaceable(path, inputs)
        if path.exists() and any(path.iterdir()):
            old = aside_name(path, ASIDE_OLD)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                path.rmdir()  # an empty folder
            os.rename(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, StoreExistsError):
            raise
        raise StoreWriteError(err.errno or errno.EIO,
                              f"cannot create {path}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def leftovers(path) -> list[Path]:
    """Folders left beside ``path`` by a run killed while building or swapping its store."""
    path = Path(os.path.abspath(path))
    try:
        return sorted(p for p in path.parent.iterdir()
                      if any(p.name.startswith(f".{path.name}{kind}") for kind in (ASIDE_NEW, ASIDE_OLD, ASIDE_SCAN)))
    except OSError:
        return []


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: ``path`` (``group/name``), shape, chunks, dtype, dimension names,
    fill value, compressed or not (the one-element done-markers are not)."""

    path: str
    shape: tuple
    chunks: tuple
    dtype: str
    dims: tuple
    fill: object
    compressed: bool = True
    writers: tuple = ()  # the stages (and "prepare") that write it: what ``xrdct plan`` counts as written

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def nchunks(self) -> int:
        return int(np.prod([-(-n // c) for n, c in zip(self.shape, self.chunks)], dtype=np.int64))

    @property
    def chunk_bytes(self) -> int:
        return int(np.prod(self.chunks, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def array_specs(*, nz: int, nomega: int, nx: int, nq: int, nr: int, layout, pdf_blocks: int = 0,
                pdf_sinograms: bool = False, aux_channels: int = 0) -> list[ArraySpec]:
    """Every data array and done-marker of a store: what :func:`create_store` creates and what
    ``xrdct plan`` counts.  ``nr = 0``: no PDF; ``pdf_sinograms``: the pdf-then-recon arrays."""
    wc, qc, yc, rc = layout.omega_chunk, layout.q_chunk, layout.y_chunk, layout.r_chunk
    frame = ("z", "omega", "x")
    integ = ("integrate",)
    out = [ArraySpec(f"{REDUCED}/{n}", (nz, nomega, nx, nq), (1, wc, nx, qc), "float32", (*frame, "q"), np.nan,
                     writers=integ) for n in ("intensity", "sigma")]
    out += [ArraySpec(f"{REDUCED}/{n}", (nz, nomega, nx), (1, wc, nx), dt, frame, fill, writers=w)
            for n, dt, fill, w in (("monitor", "float32", np.nan, ("prepare", "integrate")),
                                   ("total", "float32", np.nan, integ), ("frame_index", "int64", -1, ("prepare",)),
                                   ("frame_ok", "bool", False, integ), ("frame_status", "int8", -1, integ),
                                   ("scan_flag", "int8", -1, ("prepare",)))]
    out.append(ArraySpec(f"{RECON}/intensity", (nz, nx, nx, nq), (1, yc, nx, qc), "float32", ("z", "y", "x", "q"),
                         np.nan, writers=("recon",)))
    if nr:
        # recon-then-pdf: the pdf tasks write G and the voxel figures; pdf-then-recon: pdf-frames the
        # sinograms, pdf-aux the figures (reconstructed from aux_sinogram), pdf the G blocks
        figures = ("pdf-aux",) if pdf_sinograms else ("pdf",)
        out.append(ArraySpec(f"{PDF}/G", (nz, nx, nx, nr), (1, yc, nx, rc), "float32", ("z", "y", "x", "r"), np.nan,
                             writers=("pdf",)))
        out += [ArraySpec(f"{PDF}/{n}", (nz, nx, nx), (1, yc, nx), "float32", ("z", "y", "x"), np.nan,
                          writers=figures) for n in PDF_VOXEL_FIGURES]
        out.append(ArraySpec(f"{PDF}/ok", (nz, nx, nx), (1, yc, nx), "bool", ("z", "y", "x"), False, writers=figures))
        if pdf_sinograms:
            out.append(ArraySpec(f"{PDF}/G_sinogram", (nz, nomega, nx, nr), (1, wc, nx, rc), "float32",
                                 (*frame, "r"), np.nan, writers=("pdf-frames",)))
            out.append(ArraySpec(f"{PDF}/aux_sinogram", (nz, nomega, nx, aux_channels), (1, wc, nx, aux_channels),
                                 "float32", (*frame, "channel"), np.nan, writers=("pdf-frames",)))
    # done-markers: one element (and one chunk) per task, written after the task's data
    markers = [("integrate", (nz, -(-nomega // wc)), "uint8", ("z", "omega_block"), 0),
               ("center", (nz,), "float64", ("z",), np.nan),
               ("recon", (nz, -(-nq // qc)), "uint8", ("z", "q_block"), 0)]
    if nr:
        markers.append(("pdf", (nz, pdf_blocks), "uint8", ("z", "pdf_block"), 0))
    out += [ArraySpec(f"{TASKS}/{n}", shape, (1,) * len(shape), dt, dims, fill, compressed=False, writers=(n,))
            for n, shape, dt, dims, fill in markers]
    return out


def create_store(path: str | Path, *, nz: int, nomega: int, nx: int, radial: np.ndarray, radial_unit: str,
                 omega_deg: np.ndarray, x_mm: np.ndarray, z_mm: np.ndarray, r_A: np.ndarray | None,
                 layout, attrs: dict, pdf_blocks: int = 0, aux_channels: list[str] | None = None,
                 pdf_attrs: dict | None = None) -> zarr.Group:
    """Create every array of :func:`array_specs` with its final shape, chunks, dims and
    coordinates (no data yet) at a new ``path`` (an existing one is refused: replacing goes
    through :func:`create_aside`).

    ``layout`` (:class:`xrdct_dask.budget.Layout`) sets the chunks (and is recorded in the root's
    attrs, where the tasks read their block sizes); ``pdf_blocks`` the pdf tasks per slice;
    ``aux_channels`` (pdf-then-recon) names the channels of ``pdf/aux_sinogram``; ``pdf_attrs``
    (the transform's parameters) go to the ``pdf`` group.

    The root's ``zarr.json`` with the format marker (and ``template_complete: false``) is the
    first file written: whatever happens next, the folder is recognisably this program's."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: a store is created in a new folder")
    root = zarr.open_group(str(path), mode="w-", zarr_format=3,
                           attributes={"format": FORMAT, "template_complete": False})
    coords = {
        "z": (np.asarray(z_mm, np.float64), {"units": "mm", "long_name": "slice position"}),
        "omega": (np.asarray(omega_deg, np.float64), {"units": "deg", "long_name": "rotation angle"}),
        "x": (np.asarray(x_mm, np.float64), {"units": "mm", "long_name": "translation / voxel column"}),
        "y": (np.asarray(x_mm, np.float64), {"units": "mm", "long_name": "voxel row"}),
        "q": (np.asarray(radial, np.float64), {"units": radial_unit.split("_", 1)[-1], "radial_unit": radial_unit}),
    }
    if r_A is not None:
        coords["r"] = (np.asarray(r_A, np.float64), {"units": "angstrom"})
    if aux_channels:
        coords["channel"] = (np.arange(len(aux_channels)), {"long_name": "aux_sinogram channel",
                                                            "names": list(aux_channels)})
    for name in ("z", "omega", "x", "y", "q", "r"):
        if name in coords:
            _coord(root, name, *coords[name])
    specs = array_specs(nz=nz, nomega=len(omega_deg), nx=nx, nq=radial.size, nr=0 if r_A is None else r_A.size,
                        layout=layout, pdf_blocks=pdf_blocks, pdf_sinograms=bool(aux_channels),
                        aux_channels=len(aux_channels or ()))
    groups: dict[str, list[ArraySpec]] = {}
    for spec in specs:
        groups.setdefault(spec.path.split("/")[0], []).append(spec)
    for gname, arrays in groups.items():
        g = root.create_group(gname)
        for d in sorted({d for spec in arrays for d in spec.dims if d in coords}):
            _coord(g, d, *coords[d])
        for spec in arrays:
            g.create_array(spec.path.split("/")[1], shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype,
                           fill_value=spec.fill, dimension_names=list(spec.dims),
                           **({"compressors": COMPRESSORS} if spec.compressed else
                              # a marker's chunk file exists exactly while it is set (a reset deletes it)
                              {"config": {"write_empty_chunks": False}}))
    if PDF in groups:
        _pdf_attrs(root[PDF], aux_channels)
        root[PDF].attrs.update(pdf_attrs or {})
    root.attrs.update({"stage_status": {REDUCED: "pending", RECON: "pending", PDF: "pending"}, **attrs,
                       "layout": layout.to_dict(), "format": FORMAT, "template_complete": False})
    describe_variables(root)
    return root


@dataclass
class TaskState:
    """Which tasks of a run are done: bool ``integrate (nz, n_omega_blocks)``, ``recon (nz,
    n_q_blocks)``, ``pdf (nz, n_pdf_blocks)`` (None without PDF) and ``center (nz,)`` (NaN = not
    found yet)."""

    integrate: np.ndarray
    center: np.ndarray
    recon: np.ndarray
    pdf: np.ndarray | None

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{stage: (done, total)}``."""
        out = {"integrate": (int(self.integrate.sum()), self.integrate.size),
               "center": (int(np.isfinite(self.center).sum()), self.center.size),
               "recon": (int(self.recon.sum()), self.recon.size)}
        if self.pdf is not None:
            out["pdf"] = (int(self.pdf.sum()), self.pdf.size)
        return out

    @property
    def complete(self) -> bool:
        return all(d == t for d, t in self.counts().values())


def _set_markers(path, name: str, shape: tuple) -> np.ndarray | None:
    """bool ``shape``: which one-element markers of ``tasks/<name>`` are set, from the names of
    their chunk files (a marker's file exists exactly while it is set: zarr writes no chunk equal
    to the fill value, and deletes one set back to it).  One directory listing instead of a read
    per task: the state of a 1000^3 run (~1e5 markers) in a fraction of a second.  None where the
    array does not keep its chunks as ``c/i/j`` files (then zarr reads them)."""
    arr = open_array(path, f"{TASKS}/{name}", "r")
    enc = arr.metadata.to_dict().get("chunk_key_encoding", {})
    if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    out = np.zeros(shape, bool)
    top = Path(path) / TASKS / name / "c"
    for dirpath, _, files in os.walk(top):
        lead = Path(dirpath).relative_to(top).parts
        for f in files:
            if f.isdigit():  # not a write in progress (zarr writes beside, then renames)
                out[tuple(int(p) for p in (*lead, f))] = True
    return out


def task_state(path) -> TaskState:
    """Read the done-markers of a store: which tasks' output is whole (listed, not read one by
    one; the centres of the slices that have one are read)."""
    g = zarr.open_group(str(Path(path) / TASKS), mode="r")

    def marks(name):
        got = _set_markers(path, name, g[name].shape)
        return got if got is not None else g[name][...].astype(bool)

    center = np.full(g["center"].shape, np.nan)
    found = marks("center")
    if found.any():
        values = g["center"]
        for z in np.flatnonzero(found):
            center[z] = values[z]
    return TaskState(integrate=marks("integrate"), center=center, recon=marks("recon"),
                     pdf=marks("pdf") if "pdf" in g.array_keys() else None)


def mark_done(path, stage: str, index: tuple[int, ...], value: float = 1) -> None:
    """Set the marker of one task (``stage`` in integrate | center | recon | pdf) after its data."""
    write_region(path, f"{TASKS}/{stage}", index, value)


def mark_template_complete(path) -> None:
    """Record that the template and the per-frame inputs (monitor, frame_index, scan_flag) are
    written: a store without this mark is recreated, not resumed."""
    zarr.open_group(str(path), mode="r+").attrs["template_complete"] = True


def check_writable(path) -> None:
    """Raise :class:`StoreWriteError` unless files can be created in folder ``path``."""
    probe = Path(path) / f".xrdct-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise StoreWriteError(err.errno or errno.EIO,
                              f"{path} is not writable ({err.strerror or err})") from None


LINK_PIECE_DIRS = 16  # top-level chunk folders (slices) a linking task walks


def link_group(src, dst, group: str, names: list[str] | None = None, client=None) -> int:
    """Make arrays of group ``group`` of store ``dst`` share the chunk files of store ``src``.

    Chunk files are hard-linked (copied where the two stores are on different file systems):
    no bytes move, and since zarr replaces a chunk by rename rather than writing into it, a later
    write to either store never changes the other.  The arrays must already exist in ``dst`` with
    the same shape, chunks and dtype.  Returns the number of chunk files shared.

    The work is split by the chunk folders of the first dimension (a slice each: only that top
    level is listed here) into pieces of :data:`LINK_PIECE_DIRS`, each a task on the workers of
    ``client`` (a client or a callable making one; None: here, one after the other), so 1e6 links
    or a 12 TB copy across file systems run in parallel (:func:`xrdct_dask.sidework.map_pieces`).
    """
    from .sidework import map_pieces

    src, dst = Path(src), Path(dst)
    sg = zarr.open_group(str(src / group), mode="r")
    pieces = []
    for name in names if names is not None else sorted(sg.array_keys()):
        a, b = sg[name], zarr.open_array(str(dst / group / name), mode="r")
        if (a.shape, a.chunks, a.dtype) != (b.shape, b.chunks, b.dtype):
            raise ValueError(f"{group}/{name}: {src} has shape {a.shape} chunks {a.chunks} {a.dtype} but {dst} has "
                             f"{b.shape} {b.chunks} {b.dtype}; they cannot share chunks")
        top = src / group / name / "c"
        try:
            entries = sorted(os.listdir(top))
        except FileNotFoundError:  # nothing written
            continue
        rel = f"{group}/{name}/c"
        for k in range(0, len(entries), LINK_PIECE_DIRS):
            pieces.append((str(src), str(dst), rel, entries[k:k + LINK_PIECE_DIRS]))
    return sum(map_pieces(client, _link_piece, pieces, f"xrdct-link-{group}"))


def _link_piece(piece) -> int:
    """Link (or copy) the chunk files under ``src/rel/<entry>`` for the piece's entries; a count."""
    src, dst, rel, entries = piece
    src, dst = Path(src), Path(dst)
    n = 0
    for entry in entries:
        first = src / rel / entry
        walk = [(str(first.parent), [], [entry])] if first.is_file() else os.walk(first)
        for dirpath, _, files in walk:
            out = dst / Path(dirpath).relative_to(src)
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                if f.endswith(".partial"):  # an interrupted write of the source: not a chunk
                    continue
                target = out / f
                target.unlink(missing_ok=True)
                try:
                    os.link(Path(dirpath) / f, target)
                except OSError:  # another file system, or links not allowed
                    shutil.copyfile(Path(dirpath) / f, target)
                n += 1
    return n


PDF_VOXEL_FIGURES = ("scale", "fq_highq_rms", "lowr_slope", "lowr_residual")
_PDF_FIGURE_ATTRS = {
    "scale": {"long_name": "self-scattering level N of S(Q) (data units per atom)"},
    "fq_highq_rms": {"units": "1/angstrom", "long_name": "rms of F(Q) over the top 10 % of [qmin, qmax]"},
    "lowr_slope": {"units": "1/angstrom^3", "long_name": "slope of G on [rpoly, lowr_max] through 0 (-4 pi rho0)"},
    "lowr_residual": {"units": "1/angstrom^2", "long_name": "rms of G about that line on [rpoly, lowr_max]"},
}


def _pdf_attrs(g, aux_channels) -> None:
    """What the ``pdf`` group's arrays mean (units, long names)."""
    g["G"].attrs.update({"units": "1/angstrom^2", "long_name": "G(r) = 4 pi r [rho(r) - rho0]"})
    for name in PDF_VOXEL_FIGURES:
        g[name].attrs.update(_PDF_FIGURE_ATTRS[name])
    g["ok"].attrs["long_name"] = "G computed (scattering strong enough)"
    if aux_channels:
        g["G_sinogram"].attrs.update(
            {"units": "1/angstrom^2", "long_name": "G(r) of each frame with the fixed scale pdf.scale (the frame's "
                                                   "own G: times pdf.scale / aux_sinogram channel 0)"})
        g["aux_sinogram"].attrs.update(
            {"long_name": "per frame: scale N, then G(r_low) and F(q_top) with the fixed scale pdf.scale"})


def open_array(path: str | Path, name: str, mode: str = "r+") -> zarr.Array:
    """``store[name]``, opened once per process while its metadata file is unchanged.

    Every task opens ~10 arrays; re-reading and parsing their ``zarr.json`` each time cost more
    than some of the writes.  The cache is keyed by that file's inode, size and mtime, so a store
    recreated in place (``store.overwrite``) or an array whose metadata changed is opened anew."""
    full = Path(path) / name
    if mode not in ("r", "r+"):  # creating modes always go to zarr
        return zarr.open_array(str(full), mode=mode)
    try:
        st = os.stat(full / "zarr.json")
    except OSError:  # not a zarr v3 array (or gone): zarr says what is wrong
        return zarr.open_array(str(full), mode=mode)
    return _open_array(str(full), mode, (st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=512)
def _open_array(full: str, mode: str, _stamp: tuple) -> zarr.Array:
    return zarr.open_array(full, mode=mode)


def _chunk_spans(arr, index: tuple, axis: int):
    """``(dim, start, [(a, b), ...])``: the dimension of ``arr`` behind result axis ``axis`` of
    ``arr[index]`` (ints drop dimensions), where its slice starts, and its chunk-aligned pieces."""
    kept = [d for d, i in enumerate(index) if not isinstance(i, (int, np.integer))]
    dim = kept[axis]
    start, stop, _ = index[dim].indices(arr.shape[dim])
    c = arr.chunks[dim]
    edges = [start, *range((start // c + 1) * c, stop, c), stop]
    return dim, start, list(zip(edges[:-1], edges[1:]))


def read_chunked(path, name: str, index: tuple, axis: int) -> np.ndarray:
    """``store[name][index]`` read one chunk width of ``axis`` at a time into one output array:
    what the read holds beyond its result is one chunk's decoded bytes, not the whole selection's
    (zarr decodes every chunk of a selection before assembling it).  ``index`` holds ints and
    slices (step 1), one per dimension; ``axis`` counts the dimensions of the result."""
    arr = open_array(path, name, "r")
    dim, start, spans = _chunk_spans(arr, index, axis)
    kept = [d for d, i in enumerate(index) if not isinstance(i, (int, np.integer))]
    out = np.empty([len(range(*index[d].indices(arr.shape[d]))) for d in kept], dtype=arr.dtype)
    for a, b in spans:
        dst = [slice(None)] * len(kept)
        dst[axis] = slice(a - start, b - start)
        out[tuple(dst)] = arr[index[:dim] + (slice(a, b),) + index[dim + 1:]]
    return out


def write_chunked(path, name: str, region: tuple, value: np.ndarray, axis: int) -> None:
    """:func:`write_region` one chunk width of ``axis`` (of ``value``) at a time: zarr encodes
    every chunk of a region at once, which would hold a second copy of a large ``value``."""
    dim, start, spans = _chunk_spans(open_array(path, name), region, axis)
    for a, b in spans:
        src = [slice(None)] * value.ndim
        src[axis] = slice(a - start, b - start)
        write_region(path, name, region[:dim] + (slice(a, b),) + region[dim + 1:], value[tuple(src)])


def write_region(path, name: str, region, value) -> None:
    """``store[name][region] = value``; an OSError becomes a :class:`StoreWriteError` naming both."""
    try:
        open_array(path, name)[region] = value
    except OSError as err:
        raise StoreWriteError(err.errno or errno.EIO,
                              f"{Path(path) / name}: cannot write {region} ({err.strerror or err})") from None


def write_reduced(path, block: FrameBlock, intensity, sigma, monitor, frame_status) -> None:
    """Write one block: intensity, sigma ``(nw, nx, nq)``; monitor, frame_status ``(nw, nx)``.

    ``frame_status`` is written last: a block whose status reads -1 was not (completely) written.
    ``frame_ok`` is :func:`~xrdct_dask.io.status.usable` of the status.
    """
    from .io.status import usable

    reg = region_for(block)
    ok = usable(frame_status)
    write_region(path, f"{REDUCED}/intensity", reg, intensity[None])
    write_region(path, f"{REDUCED}/sigma", reg, sigma[None])
    write_region(path, f"{REDUCED}/monitor", reg, monitor[None])
    write_region(path, f"{REDUCED}/total", reg, np.where(ok, np.nansum(intensity, axis=-1), np.nan)[None])
    write_region(path, f"{REDUCED}/frame_ok", reg, ok[None])
    write_region(path, f"{REDUCED}/frame_status", reg, frame_status.astype(np.int8)[None])


def layout_of(path):
    """The :class:`~xrdct_dask.budget.Layout` of a store: recorded in its attrs, or (a store made
    before layouts were recorded) read off its arrays' chunks."""
    from .budget import Layout, MIN_TASK_MEMORY

    attrs = read_attrs(path)
    if "layout" in attrs:
        return Layout.from_dict(attrs["layout"])
    red = open_array(path, f"{REDUCED}/intensity", "r").chunks
    rec = open_array(path, f"{RECON}/intensity", "r").chunks
    g = open_array(path, f"{PDF}/G", "r").chunks if (Path(path) / PDF / "G").exists() else (1, 1, 1, 1)
    return Layout(omega_chunk=red[1], q_chunk=red[3], q_sub=red[3], y_chunk=rec[1], r_chunk=g[3],
                  budget=MIN_TASK_MEMORY)


def consolidate(path) -> None:
    """Write consolidated metadata (one read opens the whole hierarchy, as xarray prefers).

    Call again after any attrs change: readers trust the consolidated copy."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def set_stage_status(path, stage: str, status: str) -> None:
    root = zarr.open_group(str(path), mode="r+")
    st = dict(root.attrs.get("stage_status", {}))
    st[stage] = status
    root.attrs["stage_status"] = st
    consolidate(path)


def run_attrs(path) -> dict:
    """The root attrs of a finished or partial run of this program (its stored workflow among
    them); ValueError, one line, for anything else."""
    try:
        attrs = read_attrs(path)
    except Exception:  # zarr raises several kinds for "not a store"
        raise ValueError(f"{path}: not a zarr store") from None
    if attrs.get("format") != FORMAT or "workflow" not in attrs:
        raise ValueError(f"{path}: not an xrdct-dask run (no stored workflow)")
    return attrs


def read_attrs(path) -> dict:
    return json.loads(json.dumps(dict(zarr.open_group(str(path), mode="r").attrs)))


# ------------------------------------------------------------------------------------------
# units and long names of every variable (CF / NeXus readers show them)
# ------------------------------------------------------------------------------------------
_RADIAL_NAMES = {"q": "scattering vector magnitude q", "2th": "scattering angle 2theta",
                 "r": "radial distance on the detector", "d*2": "inverse d-spacing squared", "chi": "azimuthal angle"}
VARIABLE_ATTRS = {
    # (group, name) or name: (units, long_name); "1" = dimensionless (UDUNITS)
    (REDUCED, "intensity"): ("counts", "azimuthally integrated intensity, normalised to the reference monitor"),
    (REDUCED, "sigma"): ("counts", "standard deviation of the integrated intensity"),
    (REDUCED, "monitor"): ("counts", "incident-beam monitor I0 of the frame"),
    (REDUCED, "total"): ("counts", "integrated intensity summed over the radial bins"),
    (REDUCED, "frame_index"): ("1", "acquisition index of the frame at this scan point (-1: no frame)"),
    (REDUCED, "frame_ok"): ("1", "frame used (true) or missing / corrupt (false)"),
    (REDUCED, "frame_status"): ("1", "frame status code (xrdct_dask.io.status.FrameStatus; -1: not yet written)"),
    (REDUCED, "scan_flag"): ("1", "how the scan file placed the frame (FrameStatus code; 0: as planned)"),
    (RECON, "intensity"): ("counts/voxel", "reconstructed diffraction intensity per voxel"),
    (PDF, "G"): ("1/angstrom^2", "G(r) = 4 pi r [rho(r) - rho0]"),
    (PDF, "ok"): ("1", "G computed (scattering strong enough)"),
    (PDF, "scale"): ("1", "self-scattering level N of S(Q) (data units per atom)"),
    (PDF, "G_sinogram"): ("1/angstrom^2", "G(r) of each frame"),
    (PDF, "aux_sinogram"): ("1", "per frame: scale N, G(r_low), F(q_top)"),
    (TASKS, "integrate"): ("1", "1 = this block of reduced/ is completely written"),
    (TASKS, "center"): ("pixel", "rotation axis of the slice (NaN: not yet found)"),
    (TASKS, "recon"): ("1", "1 = this q block of recon/ is completely written"),
    (TASKS, "pdf"): ("1", "1 = this slice of pdf/ is completely written"),
    "z": ("mm", "slice position"), "omega": ("deg", "rotation angle"), "x": ("mm", "translation / voxel column"),
    "y": ("mm", "voxel row"), "r": ("angstrom", "interatomic distance r"), "channel": ("1", "aux_sinogram channel"),
}


def frame_status_attrs() -> dict:
    """CF flag attributes describing the codes of ``frame_status`` (and ``scan_flag``)."""
    from .io.status import USABLE, FrameStatus

    codes = {-1: "not_written"} | {int(s): s.name.lower() for s in FrameStatus}
    return {"flag_values": list(codes), "flag_meanings": " ".join(codes.values()),
            "codes": {str(k): v.replace("_", " ") for k, v in codes.items()},
            "usable_codes": [int(s) for s in USABLE]}


def describe_variables(root) -> None:
    """Give every array of the store (a zarr group or its path) ``units`` and ``long_name`` attrs
    where it has none (existing attrs are kept), and describe the ``frame_status`` codes
    (:func:`frame_status_attrs`).  Called at the end of :func:`create_store`; safe to call again."""
    if not isinstance(root, zarr.Group):
        root = zarr.open_group(str(root), mode="r+")

    def visit(group, gname: str) -> None:
        for name, arr in group.arrays():
            units, long_name = VARIABLE_ATTRS.get((gname, name), VARIABLE_ATTRS.get(name, (None, None)))
            if name == "q" and "radial_unit" in arr.attrs:
                kind, _, unit = str(arr.attrs["radial_unit"]).partition("_")
                units, long_name = unit, _RADIAL_NAMES.get(kind, f"radial coordinate ({arr.attrs['radial_unit']})")
            new = {k: v for k, v in (("units", units), ("long_name", long_name)) if v is not None and k not in arr.attrs}
            if gname == REDUCED and name in ("frame_status", "scan_flag") and "flag_values" not in arr.attrs:
                new.update(frame_status_attrs())
            if new:
                arr.attrs.update(new)
        for name, sub in group.groups():
            visit(sub, name)

    visit(root, "")
