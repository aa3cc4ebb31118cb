"""``python -m xrdct_dask.cli ...`` is ``xrdct ...`` (the job service starts its jobs so)."""

from xrdct_dask.cli import main

if __name__ == "__main__":  # not when a walk of the package imports this module
    main()
