"""The library and the workflow agree: a function called without an argument does what a workflow
without that key does (issue 19: the percentile, zinger and polarization defaults had drifted)."""

import inspect

import pytest

from xrdct_dask import config, sinogram
from xrdct_dask.integrate import Integrator
from xrdct_dask.pdf import compute_pdf, structure_functions
from xrdct_dask.recon import reconstruct

# same name, different kind of value: the workflow names a choice, the function takes the data
DIFFERENT_KIND = {("PDF", "background"), ("PDF", "scale")}

PAIRS = [(config.Integrate, Integrator), (config.Geometry, Integrator), (config.Sinogram, sinogram.prepare_sinogram),
         (config.Recon, reconstruct), (config.PDF, compute_pdf), (config.PDF, structure_functions)]


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) == tuple(b)
    return a == b


@pytest.mark.parametrize("section, function", PAIRS, ids=lambda x: getattr(x, "__qualname__", str(x)))
def test_every_shared_parameter_has_the_workflows_default(section, function):
    params = inspect.signature(function).parameters
    shared = [n for n in section.model_fields if n in params and params[n].default is not inspect.Parameter.empty
              and (section.__name__, n) not in DIFFERENT_KIND]
    differ = {n: (section.model_fields[n].default, params[n].default) for n in shared
              if not _same(section.model_fields[n].default, params[n].default)}
    assert not differ, f"{section.__name__} vs {function.__qualname__}: (workflow, library) defaults {differ}"


def test_the_pairs_cover_the_defaults_that_had_drifted():
    """The test above must see the three parameters the issue named (else it checks nothing)."""
    seen = {n for s, f in PAIRS for n in s.model_fields if n in inspect.signature(f).parameters}
    assert {"percentile", "polarization_factor", "zingers"} <= seen
