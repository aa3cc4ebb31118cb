"""Dask clusters for a run: batch-system profiles (:mod:`~xrdct_dask.cluster.profiles`), a cluster on
this machine or a running scheduler (:mod:`~xrdct_dask.cluster.local`), the workers' logging, and
side work mapped over the workers (:mod:`~xrdct_dask.cluster.sidework`)."""

from __future__ import annotations

from xrdct_dask.cluster.profiles import ProfileError, job_script, list_profiles, load_profile, make_cluster

__all__ = ["ProfileError", "job_script", "list_profiles", "load_profile", "make_cluster"]
