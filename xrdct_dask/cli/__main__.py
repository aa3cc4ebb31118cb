"""``python -m xrdct_dask.cli ...`` is ``xrdct ...`` (the job service starts its jobs so)."""

from xrdct_dask.cli import main

main()
