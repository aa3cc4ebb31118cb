"""Workflow files: validated on load, one-line errors naming the key, paths relative to the file."""

from pathlib import Path

import pytest
import yaml

from xrdct_dask.config import WorkflowError, load_workflow, parse_overrides, workflow_from_dict
from xrdct_dask.pipeline.frames import frame_path

MINIMAL = {
    "inputs": {"frames": "frames/frame_{index:06d}.cbf", "poni": "geometry.poni"},
    "scan": {"nz": 2, "nomega": 8, "nx": 6},
    "store": "run.zarr",
}


def write(tmp_path, data) -> Path:
    p = tmp_path / "wf.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_minimal_workflow_gets_documented_defaults(tmp_path):
    wf = load_workflow(write(tmp_path, MINIMAL))
    assert wf.integrate.npt_rad == 1000 and wf.integrate.unit == "q_nm^-1" and wf.integrate.split == "full"
    assert wf.scan.order == "snake" and wf.scan.omega_range_deg == 180
    # relative paths resolve against the workflow file's folder
    assert wf.inputs.poni == tmp_path / "geometry.poni"
    assert wf.store.path == tmp_path / "run.zarr"
    assert frame_path(wf, 7) == tmp_path / "frames" / "frame_000007.cbf"


def test_shipped_workflow_template_is_valid():
    from xrdct_dask.resources import WORKFLOW_TEMPLATE

    wf = load_workflow(WORKFLOW_TEMPLATE)
    assert wf.pdf.composition == "Ni"


@pytest.mark.parametrize("patch, key", [
    ({"integrate": {"npt_rad": 100, "unti": "q_nm^-1"}}, "integrate.unti: unknown key"),
    ({"integrate": {"unit": "q_nm"}}, "integrate.unit: must be one of"),
    ({"scan": {"nz": 2, "nomega": 8, "nx": 6, "omega_range_deg": 90}}, "scan.omega_range_deg"),
    ({"scan": {"nz": 0, "nomega": 8, "nx": 6}}, "scan.nz"),
    ({"inputs": {"frames": "frame.cbf", "poni": "g.poni"}}, "inputs.frames: must contain an {index} field"),
    ({"pdf": {"qmin": 20, "qmax": 10}}, "pdf: qmin (20.0) must be below qmax (10.0)"),
    ({"bogus": 1}, "bogus: unknown key"),
])
def test_bad_key_or_unit_is_one_line_naming_the_key(tmp_path, patch, key):
    with pytest.raises(WorkflowError) as err:
        load_workflow(write(tmp_path, {**MINIMAL, **patch}))
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(WorkflowError, match="scan: required key is missing"):
        load_workflow(write(tmp_path, {k: v for k, v in MINIMAL.items() if k != "scan"}))
    p = tmp_path / "bad.yaml"
    p.write_text("inputs: [unclosed")
    with pytest.raises(WorkflowError, match="not valid YAML"):
        load_workflow(p)
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow(tmp_path / "nope.yaml")


def test_overrides_use_dotted_keys_and_yaml_values(tmp_path):
    ov = parse_overrides(["integrate.npt_rad=3000", "store.overwrite=true", "pdf.composition=NaCl"])
    wf = load_workflow(write(tmp_path, MINIMAL), ov)
    assert wf.integrate.npt_rad == 3000 and wf.store.overwrite is True and wf.pdf.composition == "NaCl"
    with pytest.raises(WorkflowError, match="key=value"):
        parse_overrides(["integrate.npt_rad"])


def test_digest_changes_with_content():
    a = workflow_from_dict(MINIMAL)
    b = workflow_from_dict(MINIMAL, overrides={"integrate.npt_rad": 2000})
    assert a.digest() != b.digest() and a.digest() == workflow_from_dict(MINIMAL).digest()


def test_workflow_pdf_config(tmp_path):
    """pdf.config in the workflow: the file's values for keys not written in the pdf section, the
    section's own keys win; a missing file is a one-line WorkflowError naming it."""
    cfg = Path(__file__).parent / "data" / "pdfgetx3.cfg"  # [DEFAULT] and a [nacl] section
    wf_path = write(tmp_path, MINIMAL | {"pdf": {"config": str(cfg), "config_section": "nacl", "rmax": 8.0}})
    p = load_workflow(wf_path).pdf
    assert (p.composition, p.qmax, p.qmaxinst, p.rpoly, p.rmax, p.bgscale) == ("NaCl", 20.0, 24.0, 1.1, 8.0, 0.8)
    with pytest.raises(WorkflowError) as err:
        load_workflow(wf_path, {"pdf.config": str(tmp_path / "none.cfg")})
    assert "none.cfg not found" in str(err.value) and "\n" not in str(err.value)


def test_pdfgetx3_configuration_is_read_by_the_loader_not_the_schema(tmp_path, monkeypatch):
    """The schema does no I/O: validating a section never opens the PDFgetX3 file (a stored
    workflow names a file that may be gone); loading reads it once, and its errors blame the key,
    or the --set that gave it.  A background file the configuration names is in the file's
    dataformat (QA here): integrating in q_nm^-1 with it is a one-line error."""
    from xrdct_dask.config.sections import PDF
    from xrdct_dask.pdf import pdfgetx3

    cfg = tmp_path / "bg.cfg"
    (tmp_path / "air.chi").write_text("1 1\n2 1\n")
    cfg.write_text((Path(__file__).parent / "data" / "pdfgetx3.cfg").read_text().replace(
        "outputtypes = gr", "outputtypes = gr\nbackgroundfile = air.chi"))
    opened = []
    monkeypatch.setattr(pdfgetx3, "_parser", lambda p, f=pdfgetx3._parser: opened.append(p) or f(p))
    PDF.model_validate({"config": str(tmp_path / "gone.cfg"), "composition": "Ni"})
    assert opened == []
    wf = workflow_from_dict(MINIMAL | {"integrate": {"unit": "q_A^-1"}, "pdf": {"config": str(cfg)}})
    assert (wf.pdf.composition, wf.pdf.background, Path(wf.pdf.background_file)) == ("Ni", "file", tmp_path / "air.chi")
    with pytest.raises(WorkflowError) as err:
        workflow_from_dict(MINIMAL | {"integrate": {"unit": "q_nm^-1"}, "pdf": {"config": str(cfg)}})
    assert str(err.value) == ("workflow: pdf.config: its backgroundfile is in q_A^-1 (dataformat) but integrate.unit "
                              "is q_nm^-1; integrate in q_A^-1 or give pdf.background_file in q_nm^-1")
    with pytest.raises(WorkflowError, match=r"^--set pdf.config=\S+: pdf.config: \S+none.cfg not found$"):
        workflow_from_dict(MINIMAL, overrides={"pdf.config": str(tmp_path / "none.cfg"), "pdf.rmax": 3.0})


def test_interlaced_config_is_validated():
    from xrdct_dask.config import WorkflowError, workflow_from_dict

    base = {"inputs": {"frames": "f_{index}.cbf", "poni": "g.poni"}, "store": "run.zarr",
            "scan": {"nz": 1, "nomega": 8, "nx": 4, "order": "interlaced"}}
    assert workflow_from_dict(base).scan.interlace_passes == 2
    with pytest.raises(WorkflowError, match="interlaced interleaves omega lines: it needs fast_axis x"):
        workflow_from_dict(base, overrides={"scan.fast_axis": "omega"})
    with pytest.raises(WorkflowError, match="scan.interlace_passes: 4 passes need inputs.scan_file"):
        workflow_from_dict(base, overrides={"scan.interlace_passes": 4})
    assert workflow_from_dict(base, overrides={"scan.interlace_passes": 4, "inputs.scan_file": "s.csv"})
