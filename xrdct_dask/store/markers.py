"""Done-markers: one element per task in ``tasks/``, set only after the task's chunks are written;
the task state of a store is read from the markers' chunk file names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from xrdct_dask.store.arrays import consolidate, open_array, write_region
from xrdct_dask.store.layout import TASKS


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


def set_stage_status(path, stage: str, status: str) -> None:
    root = zarr.open_group(str(path), mode="r+")
    st = dict(root.attrs.get("stage_status", {}))
    st[stage] = status
    root.attrs["stage_status"] = st
    consolidate(path)
