"""``inputs.pyfai_config``: an integration.json of pyFAI-calib2 / pyFAI-integrate, read by pyFAI's own
``pyFAI.io.integration_config``, fills the workflow's geometry, mask, dark/flat, unit, bins,
sectors, polarisation and error model; keys written in the workflow win; every version loads."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml
from pyFAI.containers import ErrorModel, PolarizationDescription
from pyFAI.io.integration_config import WorkerConfig
from pyFAI.io.ponifile import PoniFile
from pyFAI.units import to_unit

from xrdct_dask.config import WorkflowError, load_workflow
from xrdct_dask.integrate.csr import load_poni
from xrdct_dask.pipeline.integrator import plan_for


def write_v5(path, ai, **kw):
    """An integration.json as pyFAI writes it (WorkerConfig.save, the current version)."""
    cfg = WorkerConfig(poni=PoniFile(ai), **kw)
    cfg.save(str(path))
    return path


def workflow_with(scan, tmp_path, inputs: dict, extra: dict | None = None):
    """The simulated scan's workflow with its ``inputs.poni`` and mask replaced by ``inputs``, no
    ``integrate`` section (what the configuration gives), and ``extra`` keys."""
    raw = yaml.safe_load(scan.workflow.read_text())
    raw["inputs"].pop("poni")
    raw["inputs"].pop("mask")
    raw.pop("integrate")
    raw["inputs"].update(inputs)
    for k, v in (extra or {}).items():
        sec, key = k.split(".")
        raw.setdefault(sec, {})[key] = v
    raw["inputs"]["frames"] = str(scan.root / raw["inputs"]["frames"])
    for key in ("monitor", "scan_file"):
        raw["inputs"][key] = str(scan.root / raw["inputs"][key])
    raw["store"]["path"] = str(tmp_path / "run.zarr")
    wf_path = tmp_path / "workflow.yaml"
    wf_path.write_text(yaml.safe_dump(raw))
    return wf_path


def test_integration_json_fills_the_workflow_and_the_workflow_wins(sim_scan, tmp_path, caplog):
    """A v5 integration.json (pyFAI's writer) gives the geometry (inputs.poni is the file itself),
    mask, bins, unit, sectors, polarisation, splitting and error model; npt_rad written in the
    workflow wins; each key's source is one line in the log; the plan equals that of the same
    keys written by hand (same checksum)."""
    ai = load_poni(sim_scan.poni)
    cfg = write_v5(tmp_path / "integration.json", ai, nbpt_rad=500, nbpt_azim=8, unit=to_unit("q_A^-1"),
                   polarization_description=PolarizationDescription(0.95, 0), error_model=ErrorModel.AZIMUTHAL,
                   method=("bbox", "csr", "cython"), mask_file=str(sim_scan.mask), azimuth_range=[-90, 90],
                   correct_solid_angle=True)
    path = workflow_with(sim_scan, tmp_path, {"pyfai_config": "integration.json"},
                         {"integrate.npt_rad": 400, "pdf.enabled": False})
    with caplog.at_level(logging.INFO, logger="xrdct_dask.io.pyfai_config"):
        wf = load_workflow(path)
    i = wf.integrate
    assert (i.npt_rad, i.npt_azim, i.unit, i.split, i.error_model) == (400, 8, "q_A^-1", "bbox", "azimuthal")
    assert i.azimuth_range == (-90.0, 90.0) and wf.geometry.polarization_factor == 0.95
    assert wf.inputs.poni == cfg and wf.inputs.mask == sim_scan.mask
    assert "integrate.npt_rad = 400: the workflow (integration.json says 500)" in wf.sources
    assert "integrate.unit = q_A^-1: integration.json" in wf.sources
    assert any("integrate.npt_azim = 8: integration.json" in r.getMessage() for r in caplog.records)
    by_hand = load_workflow(sim_scan.workflow, {"integrate.npt_rad": 400, "integrate.npt_azim": 8,
                                                "integrate.unit": "q_A^-1", "integrate.split": "bbox",
                                                "integrate.azimuth_range": [-90, 90], "pdf.enabled": False,
                                                "geometry.polarization_factor": 0.95})
    assert plan_for(wf).checksum == plan_for(by_hand).checksum


def _versions(sim_scan) -> dict[int, dict]:
    """The same integration as written by pyFAI 0.x (v1: a PONI path, method a string, comma-separated
    darks) up to v4 (the geometry in a poni dict), as pyFAI's tests write them."""
    ai = load_poni(sim_scan.poni)
    poni = PoniFile(ai).as_dict()
    geo = {k: poni[k] for k in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength")}
    det = {"detector": poni["detector"], "detector_config": poni["detector_config"]}
    common = {"nbpt_rad": 300, "unit": "q_nm^-1", "do_2D": False, "do_mask": True, "mask_file": str(sim_scan.mask),
              "do_solid_angle": True, "do_polarization": True, "polarization_factor": 0.99, "error_model": "poisson"}
    return {
        1: {"poni": str(sim_scan.poni), "method": "full_csr", **common},
        2: {"version": 2, "application": "pyfai-integrate", **geo, **det, "method": "full_csr", **common},
        3: {"version": 3, "application": "pyfai-integrate", **geo, **det, "method": ["full", "csr", "cython"],
            **common},
        4: {"version": 4, "application": "pyfai-integrate", "poni": {**geo, **det}, "method": ["full", "csr", "cython"],
            **common},
    }


def test_every_version_loads_to_the_same_workflow(sim_scan, tmp_path):
    """Configurations of versions 1 to 4 (and 5, pyFAI's writer) give the same keys and geometry."""
    ai = load_poni(sim_scan.poni)
    write_v5(tmp_path / "v5.json", ai, nbpt_rad=300, unit=to_unit("q_nm^-1"), mask_file=str(sim_scan.mask),
             polarization_description=PolarizationDescription(0.99, 0), error_model=ErrorModel.POISSON,
             method=("full", "csr", "cython"))
    files = {5: tmp_path / "v5.json"}
    for v, cfg in _versions(sim_scan).items():
        files[v] = tmp_path / f"v{v}.json"
        files[v].write_text(json.dumps(cfg))
    seen = {}
    for v, f in files.items():
        (tmp_path / f"w{v}").mkdir()
        wf = load_workflow(workflow_with(sim_scan, tmp_path / f"w{v}", {"pyfai_config": str(f)}))
        geo = load_poni(wf.inputs.poni)
        seen[v] = (wf.integrate.npt_rad, wf.integrate.unit, wf.integrate.split, wf.integrate.error_model,
                   wf.geometry.polarization_factor, wf.inputs.mask, round(geo.dist, 12), round(geo.poni1, 12),
                   round(geo.rot1, 12), geo.detector.max_shape)
    assert len(set(seen.values())) == 1, seen
    assert seen[5][:4] == (300, "q_nm^-1", "full", "poisson")


def test_unknown_method_is_mapped_to_the_nearest_with_one_warning(sim_scan, tmp_path, caplog):
    """pyFAI's ("pseudo", "histogram", "cython") has no equal here: full splitting with CSR, one line."""
    ai = load_poni(sim_scan.poni)
    write_v5(tmp_path / "i.json", ai, nbpt_rad=300, unit=to_unit("2th_deg"), method=("pseudo", "histogram", "cython"))
    with caplog.at_level(logging.INFO, logger="xrdct_dask.io.pyfai_config"):
        wf = load_workflow(workflow_with(sim_scan, tmp_path, {"pyfai_config": "i.json"}))
    assert wf.integrate.split == "full" and wf.integrate.unit == "2th_deg"
    lines = [r.getMessage() for r in caplog.records if "has no equal here" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "(pseudo, histogram, cython)" in lines[0]


def test_bad_configurations_are_refused_in_one_line(sim_scan, tmp_path):
    """A detector shape other than the frames', a unit this project has not, a file pyFAI cannot
    read: one line naming inputs.pyfai_config, and nothing written."""
    import pyFAI

    from xrdct_dask.runs.open import open_run

    other = pyFAI.load(sim_scan.poni)
    other.detector = pyFAI.detectors.Detector(pixel1=0.0011, pixel2=0.0011, max_shape=(200, 180))
    write_v5(tmp_path / "big.json", other, nbpt_rad=300, unit=to_unit("q_nm^-1"))
    wf = load_workflow(workflow_with(sim_scan, tmp_path, {"pyfai_config": "big.json"}, {"pdf.enabled": False}))
    with pytest.raises(WorkflowError) as err:
        open_run(wf)
    assert str(err.value) == ("inputs.pyfai_config: its detector (Detector) is 200 x 180 pixels but the frames are "
                              "209 x 184")
    assert not (tmp_path / "run.zarr").exists()
    write_v5(tmp_path / "rmm.json", load_poni(sim_scan.poni), nbpt_rad=300, unit=to_unit("r_mm"))
    with pytest.raises(WorkflowError, match=r"^inputs.pyfai_config: .*rmm.json: unit r_mm: this project integrates "
                                             r"in q_nm\^-1, q_A\^-1, 2th_deg"):
        load_workflow(workflow_with(sim_scan, tmp_path, {"pyfai_config": "rmm.json"}))
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(WorkflowError, match="inputs.pyfai_config: .*junk.json: not a pyFAI integration configuration"):
        load_workflow(workflow_with(sim_scan, tmp_path, {"pyfai_config": "junk.json"}))
    raw = yaml.safe_load(sim_scan.workflow.read_text())
    raw["inputs"].pop("poni")
    (tmp_path / "np.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(WorkflowError, match="inputs: poni: required key is missing"):
        load_workflow(tmp_path / "np.yaml")


def test_dark_and_flat_from_several_files_or_a_stack(sim_scan, tmp_path):
    """Darks as three files (one with a zinger) -> their median (the zinger gone); flats as one
    3-frame EDF stack -> their mean; the plan equals one built from those images."""
    from fabio.edfimage import EdfImage

    from xrdct_dask.integrate.csr import build_plan, load_image
    from xrdct_dask.io.images import combined_image

    rng = np.random.default_rng(4)
    shape = (209, 184)
    darks = [rng.poisson(5, shape).astype(np.float32) for _ in range(3)]
    darks[1][10, 10] = 1e6  # a zinger in one dark frame
    for k, d in enumerate(darks):
        EdfImage(data=d).write(str(tmp_path / f"dark{k}.edf"))
    flats = rng.uniform(0.9, 1.1, (3,) + shape).astype(np.float32)
    stack = EdfImage(data=flats[0])
    for f in flats[1:]:
        stack.append_frame(data=f)
    stack.write(str(tmp_path / "flats.edf"))
    dark = combined_image([tmp_path / f"dark{k}.edf" for k in range(3)], "median")
    assert dark[10, 10] < 50 and np.allclose(dark, np.median(darks, axis=0))
    np.testing.assert_allclose(combined_image(tmp_path / "flats.edf", "mean"), flats.mean(axis=0), rtol=1e-6)
    wf = load_workflow(sim_scan.workflow, {"inputs.dark": [str(tmp_path / f"dark{k}.edf") for k in range(3)],
                                           "inputs.flat": str(tmp_path / "flats.edf"), "integrate.npt_rad": 300,
                                           "store.path": str(tmp_path / "run.zarr")})
    want = build_plan(load_poni(sim_scan.poni), shape, 300, mask=load_image(sim_scan.mask), dark=dark,
                      flat=flats.astype(np.float64).mean(axis=0), polarization_factor=0.99)
    assert plan_for(wf).checksum == want.checksum

