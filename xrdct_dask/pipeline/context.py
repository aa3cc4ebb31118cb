"""What every task of a run needs to know, built once on the client and sent with each task."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from xrdct_dask.config import Workflow
from xrdct_dask.store.budget import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every task needs to know; built once on the client."""

    workflow: Workflow
    store_path: Path
    monitor_reference: float
    wavelength_A: float
    layout: Layout
    read_threads: int = 8
    check_md5: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.workflow.digest()
