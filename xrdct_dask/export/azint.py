"""The ``azint`` entry of a NeXus export: the reduced patterns as an NXazint1d / NXazint2d-style
application entry, with the integrator's accumulators, and the NXprocess that made them.

    azint/                    NXentry, definition NXazint1d (one pattern per frame) or NXazint2d (sectors)
      definition, title, program_name
      instrument/             NXinstrument
        monochromator/        NXmonochromator: wavelength (angstrom), energy (keV)
      reduction/              NXprocess: program, version, date (of the run, and of the export),
                              engine, configuration (NXnote: the whole workflow YAML), input_digests
                              (sha256 of the PONI, mask, dark, flat, monitor, ... by workflow key,
                              path as an attribute), frame_sample, poni and versions (NXnote, JSON)
      data/                   NXdata, signal I, axes [z, omega, x, (azimuthal_axis,) radial_axis]
        I, I_errors           the reduced intensity and sigma
        sum_signal, sum_variance, sum_normalization, sum_normalization_squared, count
                              the accumulators (integrate.keep_sums): I = sum_signal / sum_normalization,
                              I_errors = sqrt(sum_variance) / sum_normalization; bins and frames
                              merge by adding them
        monitor               the frames' I0
        radial_axis, azimuthal_axis, z, omega, x

Every dataset is a hard link to the one the ``reduced`` entry holds (written once), so the entry
costs no space.  pyFAI's own ``save_NXazint1d`` names (I, I_errors, radial_axis, sum_*) are kept.
"""

from __future__ import annotations

import json
import time

from xrdct_dask.store.layout import SUM_ARRAYS

# (name in the entry, dataset of the reduced entry): what the NXdata holds besides the axes
LINKED = (("I", "intensity"), ("I_errors", "sigma"), *((n, n) for n in SUM_ARRAYS), ("monitor", "monitor"))
AXES = {"q": "radial_axis", "chi": "azimuthal_axis", "z": "z", "omega": "omega", "x": "x"}
PLANCK_KEV_ANGSTROM = 12.398419843320026  # h c in keV A


def write_azint(f, root, version: str) -> None:
    """Write the ``azint`` NXentry into the open HDF5 file ``f`` whose ``reduced`` entry was
    exported from the zarr group ``root`` (the run store); see the module docstring."""
    red = f["reduced"]
    sectors = "chi" in (root["reduced/intensity"].metadata.dimension_names or ())
    attrs = dict(root.attrs)
    entry = f.create_group("azint")
    entry.attrs.update({"NX_class": "NXentry", "default": "data"})
    entry.create_dataset("definition", data="NXazint2d" if sectors else "NXazint1d")
    entry.create_dataset("title", data="azimuthal integration of every frame of the scan"
                                       + (" in sectors" if sectors else ""))
    entry.create_dataset("program_name", data="xrdct_dask").attrs["version"] = version

    wavelength = float(attrs.get("wavelength_angstrom") or 0.0)
    inst = entry.create_group("instrument")
    inst.attrs["NX_class"] = "NXinstrument"
    mono = inst.create_group("monochromator")
    mono.attrs["NX_class"] = "NXmonochromator"
    if wavelength > 0:
        mono.create_dataset("wavelength", data=wavelength).attrs["units"] = "angstrom"
        mono.create_dataset("energy", data=PLANCK_KEV_ANGSTROM / wavelength).attrs["units"] = "keV"

    _process(entry.create_group("reduction"), attrs, version)

    data = entry.create_group("data")
    data.attrs.update({"NX_class": "NXdata", "signal": "I"})
    main = red["intensity"]
    for name, source in LINKED:
        if source in red:
            data[name] = red[source][source]
    dims = list(root["reduced/intensity"].metadata.dimension_names)
    axes = []
    for i, dim in enumerate(dims):
        name = AXES[dim]
        data[name] = main[dim]
        data.attrs[f"{name}_indices"] = i
        axes.append(name)
    data.attrs["axes"] = axes
    data.attrs["title"] = "I(z, omega, x, " + ("chi, " if sectors else "") + "q) with its accumulators"


def _process(proc, attrs: dict, version: str) -> None:
    """The NXprocess of the run: what made the patterns, from what."""
    proc.attrs["NX_class"] = "NXprocess"
    proc.create_dataset("program", data="xrdct_dask")
    proc.create_dataset("version", data=version)
    date = proc.create_dataset("date", data=str(attrs.get("created", "")))  # the run's store was made
    date.attrs["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    proc.create_dataset("engine", data=str(attrs.get("engine", "")))
    _note(proc, "configuration", attrs.get("workflow_yaml") or json.dumps(attrs.get("workflow", {})),
          "text/x-yaml" if attrs.get("workflow_yaml") else "application/json",
          "the whole workflow of the run (xrdct run it to reproduce)")
    digests = proc.create_group("input_digests")
    digests.attrs.update({"NX_class": "NXcollection", "algorithm": "sha256"})
    for key, rec in sorted((attrs.get("input_contents") or {}).items()):
        d = digests.create_dataset(key, data=str(rec.get("sha256", "")))
        d.attrs["path"] = str(rec.get("path", ""))
    for name, value, what in (("frame_sample", attrs.get("frame_sample"), "sizes (bytes) of sampled frame files"),
                              ("poni", attrs.get("poni"), "the pyFAI geometry"),
                              ("versions", attrs.get("versions"), "package versions of the run")):
        if value is not None:
            _note(proc, name, json.dumps(value, default=str), "application/json", what)
    if attrs.get("work_digest"):
        proc.create_dataset("work_digest", data=str(attrs["work_digest"])).attrs["algorithm"] = "sha256"


def _note(parent, name: str, text: str, mime: str, description: str) -> None:
    note = parent.create_group(name)
    note.attrs["NX_class"] = "NXnote"
    note.create_dataset("type", data=mime)
    note.create_dataset("data", data=text)
    note.create_dataset("description", data=description)
