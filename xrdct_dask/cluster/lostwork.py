"""Workers lost during a run, and the tasks that ran again because of them, from the scheduler's
own event log.

When a worker process dies (SIGKILL, out of memory, a batch job cancelled), the scheduler
removes it and logs a ``remove-worker`` event naming the tasks it was running and the results it
held that are still needed; those tasks run again elsewhere (a task writes only its own chunks
and sets its done-marker after them, so running it again rewrites the same bytes).  The run
reads the events since it started and says how many workers were lost and how many tasks ran
again (:func:`lost_work`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class LostWork:
    workers: int = 0  # worker processes removed without being asked to leave
    tasks: int = 0  # tasks they were running, plus results they held that were needed: each ran again

    def __str__(self) -> str:
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} lost; {self.tasks} task" \
               f"{'s' if self.tasks != 1 else ''} retried on the others"


def scheduler_time(client) -> float:
    """The scheduler's clock now (its events are stamped with it)."""
    try:
        return float(client.run_on_scheduler(time.time))
    except Exception:  # a scheduler that refuses run_on_scheduler: the client's clock
        return time.time()


def lost_work(client, since: float) -> LostWork:
    """The workers removed unexpectedly since ``since`` (:func:`scheduler_time` at the run's
    start) and the tasks that ran again because of them."""
    try:
        events = client.get_events("all")
    except Exception:
        return LostWork()
    workers = tasks = 0
    for stamp, msg in events:
        if stamp < since or not isinstance(msg, dict) or msg.get("action") != "remove-worker" or msg.get("expected"):
            continue
        workers += 1
        tasks += len(msg.get("processing-tasks") or ()) + len(msg.get("lost-computed-tasks") or ())
    return LostWork(workers, tasks)
