"""The whole workflow: its sections together, the checks that need two of them, and its identity
(:meth:`Workflow.digest`, :meth:`Workflow.work_digest`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from pydantic import PrivateAttr, field_validator, model_validator

from xrdct_dask.config.sections import (
    PDF,
    Compute,
    Geometry,
    Inputs,
    Integrate,
    Recon,
    Scan,
    Sinogram,
    Store,
    Texture,
    View,
    _Section,
)
from xrdct_dask.io.layout import ScanShape, check_for_scan, template_fields
from xrdct_dask.io.scan import INTERLACE_PASSES
from xrdct_dask.io.spec import is_hdf5, split_spec


class Workflow(_Section):
    _sources: list[str] = PrivateAttr(default_factory=list)  # where inputs.pyfai_config's keys came from
    inputs: Inputs
    scan: Scan
    geometry: Geometry = Geometry()
    integrate: Integrate = Integrate()
    store: Store
    sinogram: Sinogram = Sinogram()
    recon: Recon = Recon()
    pdf: PDF = PDF()
    texture: Texture = Texture()
    compute: Compute = Compute()
    view: View = View()

    @field_validator("store", mode="before")
    @classmethod
    def _store_as_path(cls, v):
        return {"path": v} if isinstance(v, (str, Path)) else v

    @model_validator(mode="after")
    def _absorption_inputs(self):
        a = self.sinogram.absorption
        if a == "transmission" and self.inputs.transmission is None:
            raise ValueError("sinogram.absorption: transmission needs inputs.transmission (one reading per frame)")
        if a == "scattering" and self.sinogram.absorption_mu_max_per_mm is None:
            raise ValueError("sinogram.absorption: scattering needs sinogram.absorption_mu_max_per_mm")
        if a != "off" and self.pdf.enabled and self.pdf.order == "pdf-then-recon":
            raise ValueError("sinogram.absorption corrects the reconstruction of I(q): it needs pdf.order "
                             "recon-then-pdf")
        return self

    @model_validator(mode="after")
    def _sectors(self):
        if self.integrate.npt_azim > 1 and self.pdf.enabled:
            raise ValueError("integrate.npt_azim: G(r) is made from one pattern per voxel: set pdf.enabled: false "
                             "with azimuthal sectors (or npt_azim: 1)")
        if self.integrate.npt_azim > 1 and self.inputs.background_scan is not None:
            raise ValueError("inputs.background_scan: a measured background is subtracted from 1D patterns: leave it "
                             "out with azimuthal sectors (integrate.npt_azim > 1)")
        if self.texture.peaks and self.integrate.npt_azim < 2:
            raise ValueError("texture.peaks: texture and strain need azimuthal sectors (integrate.npt_azim > 1)")
        return self

    @model_validator(mode="after")
    def _interlace_layout(self):
        # workflow.prepare_store lays the grid out with io.scan's default number of passes

        s = self.scan
        if s.order == "interlaced" and s.interlace_passes != INTERLACE_PASSES and self.inputs.scan_file is None:
            raise ValueError(f"scan.interlace_passes: {s.interlace_passes} passes need inputs.scan_file "
                             f"(index,iz,iomega,ix per frame); without it the layout uses {INTERLACE_PASSES}")
        return self

    @model_validator(mode="after")
    def _frames_layout(self):
        # {line} / {omega} / {z} are computed from the scan's shape: check they can name its frames

        v = self.inputs.frames
        try:
            check_for_scan(split_spec(v)[0] if is_hdf5(v) else v, ScanShape.of(self.scan), is_hdf5(v))
        except ValueError as err:
            raise ValueError(f"inputs.frames: {err}") from None
        return self

    @property
    def sources(self) -> list[str]:
        """Where the keys an ``inputs.pyfai_config`` gave came from (one line each), as loaded."""
        return list(self._sources)

    @property
    def scan_shape(self):
        """The :class:`~xrdct_dask.io.layout.ScanShape` the frames template's fields count in."""

        return ScanShape.of(self.scan)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)

    def digest(self) -> str:
        """sha256 of the canonical JSON form: two runs with the same digest do the same work."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def work_digest(self) -> str:
        """sha256 of what determines the store's contents: the digest without ``compute`` (how
        many workers), ``view`` (how it is shown), ``store.path``/``store.overwrite`` (where) and
        ``scan.allow_missing`` (what a run accepts).  A run resumes a store only when its work
        digest matches the one the store records."""
        data = json.loads(self.model_dump_json(exclude={"compute": True, "view": True, "store": {"path", "overwrite"},
                                                        "scan": {"allow_missing"}}))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @property
    def frames_hdf5(self) -> bool:
        """``inputs.frames`` is an HDF5 / NeXus source, not a file per frame."""

        return is_hdf5(self.inputs.frames)

    @property
    def frames_templated(self) -> bool:
        """``inputs.frames`` names a file per frame, slice or line (a template), not one HDF5 source."""

        return bool(template_fields(split_spec(self.inputs.frames)[0]))
