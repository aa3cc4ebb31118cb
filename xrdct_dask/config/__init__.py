"""Workflow schema: a YAML file validated on load into frozen pydantic models.

A wrong key, type or unit is a :class:`WorkflowError` whose one-line message names the key
(``integrate.unit: must be one of q_nm^-1, q_A^-1, 2th_deg (got 'q_nm')``).  Relative paths are
resolved against the YAML file's folder, so a run folder can be moved as a whole.  The models are
the single source of the defaults; ``xrdct_dask/data/workflow.yaml`` documents them (``xrdct init`` writes it).

    sections.py   one model per YAML section (inputs, scan, ..., view): keys, defaults, checks
    workflow.py   the whole workflow: the checks that need two sections, its digests
    load.py       reading one: bounded safe YAML, ``--set`` overrides, relative paths, one-line errors
    compare.py    comparing two: the keys that changed (resume, reprocess)

The schema reads no file of its own; every name is importable from here
(``from xrdct_dask.config import Workflow, load_workflow``).
"""

from xrdct_dask.config.compare import IGNORED, changed_keys, flatten
from xrdct_dask.config.load import (
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    SECTIONS,
    load_changes,
    load_workflow,
    load_yaml_text,
    nesting_depth,
    parse_overrides,
    parse_value,
    read_config_text,
    workflow_from_dict,
    workflow_from_text,
)
from xrdct_dask.config.sections import (
    PDF,
    RADIAL_UNITS,
    BackgroundScan,
    Compute,
    Geometry,
    Inputs,
    Integrate,
    Positioners,
    Recon,
    Scan,
    Sinogram,
    Store,
    Texture,
    TexturePeak,
    View,
    check_frames_template,
)
from xrdct_dask.config.workflow import Workflow
from xrdct_dask.errors import WorkflowError

__all__ = [
    "IGNORED", "MAX_CONFIG_BYTES", "MAX_NESTING", "PDF", "RADIAL_UNITS", "SECTIONS", "BackgroundScan", "Compute",
    "Geometry", "Inputs", "Integrate", "Positioners", "Recon", "Scan", "Sinogram", "Store", "Texture", "TexturePeak",
    "View", "Workflow", "WorkflowError", "changed_keys", "check_frames_template", "flatten", "load_changes",
    "load_workflow", "load_yaml_text", "nesting_depth", "parse_overrides", "parse_value", "read_config_text",
    "workflow_from_dict", "workflow_from_text",
]
