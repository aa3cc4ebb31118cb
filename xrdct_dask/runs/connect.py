"""The run's client and the cluster started for it, made when first needed."""

from __future__ import annotations

import logging

from xrdct_dask.cluster.local import client_for
from xrdct_dask.cluster.lostwork import scheduler_time
from xrdct_dask.config import Workflow

log = logging.getLogger(__name__)


class Connection:
    """The run's client and the cluster started for it, made at the first :meth:`get` (a run whose
    inputs fail their checks never starts one) and shared by store creation and the stages."""

    def __init__(self, wf: Workflow, scheduler_address: str | None = None, cluster=None, jobs: int | None = None,
                 adaptive: bool | None = None, cluster_options: dict | None = None):
        self.args = (wf, scheduler_address, cluster, jobs, adaptive, cluster_options)
        self.client = self.local = None
        self.since: float | None = None  # the scheduler's clock when this run connected (lost workers counted from it)

    def get(self):
        if self.client is None:
            self.client, self.local = client_for(*self.args)
            self.since = scheduler_time(self.client)
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.local is not None:
            self.local.close()
        self.client = self.local = None
