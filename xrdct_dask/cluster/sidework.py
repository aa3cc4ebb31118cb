"""Side work done on the dask workers: the pieces of store creation, reprocess's chunk links or
copies, and export, each a plain function of one piece mapped over the cluster.

At 1000^3 these are minutes to hours when the client does them one after the other (writing the
template's per-frame arrays: 0.57 s a slice; linking 1.3M chunk files; copying 12.6 TB across file
systems).  :func:`map_pieces` runs ``fn(piece)`` for every piece as one task each on the
workers (task keys ``{name}-{k}-{token}``, so the dashboard and the tests see them), results
gathered in order; with no client it runs them here, one after the other, with the same
function: the result is the same either way.  A failing piece raises its own exception here.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from distributed import as_completed

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()
MAX_IN_FLIGHT = 4096  # pieces submitted at once: the scheduler never holds more of them


def resolve_client(client):
    """A client, ``None``, or a callable making one on first use (a run connects only when needed)."""
    return client() if callable(client) else client


def map_pieces(client, fn: Callable[..., T], pieces: Iterable, name: str, in_flight: int = MAX_IN_FLIGHT) -> list[T]:
    """``[fn(p) for p in pieces]``, each call a task on the workers of ``client`` (see the module).

    ``pieces`` is consumed lazily: at most ``in_flight`` are submitted (and held here) at a time,
    the next one as soon as one finishes, so a generator that reads its pieces from disk keeps the
    client's memory bounded by ``in_flight`` pieces."""
    t0 = time.perf_counter()
    done = dict(imap_pieces(client, fn, pieces, name, in_flight))
    out = [done[i] for i in range(len(done))]
    where = "client" if resolve_client(client) is None else "workers"
    log.info("%s: %d pieces on the %s in %.2f s", name, len(out), where, time.perf_counter() - t0)
    return out


def imap_pieces(client, fn: Callable[..., T], pieces: Iterable, name: str,
                in_flight: int = MAX_IN_FLIGHT) -> Iterator[tuple[int, T]]:
    """``(k, fn(piece k))`` as each finishes (in any order on workers; in order here without a
    client): a caller that merges the results as they come holds one at a time, not all of them
    (:func:`map_pieces` gathers them in order)."""
    client = resolve_client(client)
    it = iter(pieces)
    if client is None:
        yield from ((k, fn(p)) for k, p in enumerate(it))
        return
    token = uuid.uuid4().hex[:8]
    order: dict[str, int] = {}
    # the client's own loop: a run's client is not the process's default (as_completed() alone
    # asks for the default client, and there is none)
    running = as_completed(loop=client.loop)

    def submit(k: int, piece) -> None:
        f = client.submit(fn, piece, key=f"{name}-{k}-{token}", pure=False)
        order[f.key] = k
        running.add(f)

    k = 0
    for piece in itertools.islice(it, max(1, in_flight)):
        submit(k, piece)
        k += 1
    for f in running:
        result = f.result()  # raises the failed piece's own exception
        f.release()
        yield order.pop(f.key), result
        piece = next(it, _END)
        if piece is not _END:
            submit(k, piece)
            k += 1


def slabs(n: int, pieces: int) -> list[tuple[int, int]]:
    """``[(a, b), ...]`` half-open ranges splitting ``range(n)`` into at most ``pieces`` near-equal slabs."""
    pieces = max(1, min(n, pieces))
    edges = [round(k * n / pieces) for k in range(pieces + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
