"""Done-markers: one element per task in ``tasks/``, set only after the task's chunks are written;
the task state of a store is read from the markers' chunk file names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from xrdct_dask.store.arrays import consolidate, open_array, write_region
from xrdct_dask.store.layout import COORDS, TASKS


@dataclass
class TaskState:
    """Which tasks of a run are done, by stage (the arrays of the store's ``tasks/`` group).

    ``marks[stage]``: bool ``(nz, tasks per slice)``, the tasks whose output is whole;
    ``values[stage]``: float ``(nz,)`` for a stage whose marker holds a number per slice (the
    centre; NaN: not yet).  Stages are in the order the store records (the stage table's)."""

    marks: dict[str, np.ndarray]
    values: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def stages(self) -> list[str]:
        return list(self.marks)

    def get(self, stage: str) -> np.ndarray | None:
        """bool ``(nz, n)`` of ``stage``'s tasks (None: the store has no such stage)."""
        return self.marks.get(stage)

    def __getitem__(self, stage: str) -> np.ndarray:
        return self.marks[stage]

    def __contains__(self, stage: str) -> bool:
        return stage in self.marks

    def value(self, stage: str) -> np.ndarray | None:
        """float ``(nz,)`` of a value marker (NaN where not set), None for other stages."""
        return self.values.get(stage)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{stage: (done, total)}``."""
        return {k: (int(m.sum()), m.size) for k, m in self.marks.items()}

    def slice_done(self, z: int) -> bool:
        """Every task of slice ``z`` is done."""
        return all(bool(m[z].all()) for m in self.marks.values())

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
    one; the values of the value markers that are set are read)."""
    g = zarr.open_group(str(Path(path) / TASKS), mode="r")
    # the stage table's order, as the store records it (a store made before it did: by name)
    arrays = set(g.array_keys()) - set(COORDS)
    names = [n for n in g.attrs.get("stages", []) if n in arrays]
    names += sorted(arrays - set(names))
    marks, values = {}, {}
    for name in names:
        arr = g[name]
        got = _set_markers(path, name, arr.shape)
        found = got if got is not None else np.asarray(arr[...] != 0, bool)
        if arr.dtype.kind == "f":  # a value per slice: set where finite
            if got is None:
                found = np.isfinite(arr[...])
            v = np.full(arr.shape, np.nan)
            for z in np.flatnonzero(found):
                v[z] = arr[z]
            values[name] = v
            found = np.isfinite(v)[:, None]
        marks[name] = found
    return TaskState(marks, values)


def mark_done(path, stage: str, index: tuple[int, ...], value: float = 1) -> None:
    """Set the marker of one task of ``stage`` after its data (``value``: 0 resets it; a value
    marker's number, NaN resets it)."""
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
