"""A slice's tasks as the stages lay them out: the builder every stage's ``add_tasks`` fills.

A stage adds its tasks of one slice with :meth:`SliceTasks.add` (key ``(stage, z, start)``, the
task function and its arguments); an argument that is another task's result is a :class:`Ref` to
that task's key.  The graph (:mod:`xrdct_dask.pipeline.graph`) turns the list into dask tasks, and
the plan and progress bars count it: one description of a slice's work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdct_dask.store.arrays import open_array

if TYPE_CHECKING:  # annotations only: the store layer is imported by the modules that run tasks
    from xrdct_dask.pipeline.context import RunContext
    from xrdct_dask.store.markers import TaskState


@dataclass(frozen=True)
class Ref:
    """An argument that is the result of another task of the same slice (by its key)."""

    key: tuple


@dataclass(frozen=True)
class Task:
    stage: str
    key: tuple  # (stage, z, start)
    fn: Any
    args: tuple


@dataclass
class SliceTasks:
    """The tasks of slice ``z`` not yet done (all of them with ``done=None``), in dependency order.

    ``refs[stage]``: the :class:`Ref` of each task a stage added (what later stages wait for);
    ``values[stage]``: a value a stage's marker already holds for this slice (the stored centre of
    a resumed slice), which later stages take instead of a task's result."""

    ctx: RunContext
    z: int
    done: TaskState | None = None
    tasks: list[Task] = field(default_factory=list)
    refs: dict[str, list[Ref]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, stage: str, start: int, fn, *args) -> Ref:
        key = (stage, self.z, start)
        self.tasks.append(Task(stage, key, fn, args))
        ref = Ref(key)
        self.refs.setdefault(stage, []).append(ref)
        return ref

    @property
    def nq(self) -> int:
        """Radial bins of the run (the context's, else the store's q coordinate)."""
        from_store = self.ctx.extra.get("nq")
        if from_store:
            return int(from_store)
        return int(open_array(self.ctx.store_path, "q", "r").shape[0])

    def deps(self, stage) -> list[Ref]:
        """The Refs of the tasks added so far by the stages ``stage`` waits for (its ``after``)."""
        return [r for name in stage.after for r in self.refs.get(name, [])]

    def pending(self, stage: str, n: int) -> list[int]:
        """The task numbers ``0 .. n-1`` of ``stage`` in this slice whose done-marker is not set."""
        marks = None if self.done is None else self.done.get(stage)
        return list(range(n)) if marks is None else [i for i in range(n) if not marks[self.z][i]]

    def result(self, stage: str):
        """What a later stage takes from ``stage``: the stored value (resumed) or the Ref of its one task."""
        if stage in self.values:
            return self.values[stage]
        return self.refs[stage][0]

    def stored_value(self, stage: str) -> float | None:
        """The value ``stage``'s marker holds for this slice (None: not set, or no state)."""
        if self.done is None:
            return None
        v = self.done.value(stage)
        return float(v[self.z]) if v is not None and np.isfinite(v[self.z]) else None
