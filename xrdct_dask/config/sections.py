"""The workflow's sections: one frozen pydantic model per YAML section (``inputs``, ``scan``, ...).

Each model holds its keys, their defaults, bounds and descriptions (the single source of the
defaults and of the workflow-key reference) and the checks of one section; checks that need two
sections are on :class:`~xrdct_dask.config.workflow.Workflow`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xrdct_dask.io.layout import check_template
from xrdct_dask.io.spec import is_hdf5, split_spec

RADIAL_UNITS = ("q_nm^-1", "q_A^-1", "2th_deg")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Positioners(_Section):
    """Names of the scan's motors and counters in a BLISS / NeXus HDF5 scan (looked up as
    ``measurement/<name>``, then ``instrument/positioners/<name>``, ``instrument/<name>/value``;
    a name starting with ``/`` is a path in the file); values in the dataset's ``units``."""

    omega: str = "omega"
    x: str = "x"
    z: str | None = "z"
    monitor: str | None = Field(None, description="a counter giving I0 per frame (instead of inputs.monitor)")


class Inputs(_Section):
    """Where the data are.  Paths may be relative to the workflow file."""

    frames: str = Field(description="a CBF file template with an {index} field (index = acquisition order from 0; "
                                    ".cbf, .cbf.gz, .cbf.bz2), optionally a folder or file per slice and line "
                                    "with {z}, {line} or {omega} fields, {index} then counting within the line "
                                    "(or slice): slice_{z:04d}/line_{line:05d}/frame_{index:06d}.cbf; or an HDF5 / "
                                    "NeXus file: scan.h5 or scan.h5::/entry/data/data (an Eiger master, a BLISS "
                                    "scan's virtual dataset), or one per slice or line: "
                                    "slice_{z:04d}.h5::/entry/data/data")
    poni: Path | None = Field(None, description="pyFAI geometry (.poni); may come from pyfai_config instead")
    pyfai_config: Path | None = Field(None, description="an integration.json of pyFAI-calib2 / pyFAI-integrate (any "
                                                        "version): geometry, mask, dark, flat, unit, bins, sectors, "
                                                        "polarisation, error model; keys set here win")
    mask: Path | None = None
    dark: Path | list[Path] | None = Field(None, description="dark image(s): several files or a stack, their median")
    flat: Path | list[Path] | None = Field(None, description="flat field image(s): several files or a stack, "
                                                            "their mean")
    monitor: Path | None = Field(None, description="text file, one I0 value per frame in acquisition order")
    transmission: Path | None = Field(None, description="text file, one transmission reading (a diode or monitor "
                                                        "after the sample) per frame in acquisition order, as "
                                                        "inputs.monitor: the attenuation map of sinogram.absorption")
    scan_file: Path | None = Field(None, description="CSV written by the acquisition: index,iz,iomega,ix,... per frame")
    check_md5: bool = Field(False, description="verify each frame's Content-MD5 (one md5 per frame); "
                                               "a mismatch flags the frame BAD_CHECKSUM")

    background_scan: BackgroundScan | None = Field(None, description="a measured empty-container / air scan, "
                                                                   "integrated as the frames and subtracted per q")
    positioners: Positioners = Field(default_factory=lambda: Positioners(),
                                       description="names of the scan's motors and counters in an HDF5 scan")
    monitor_max_ratio: float = Field(100.0, gt=1, description="a monitor value more than this factor above or below "
                                                               "the scan's median flags its frame BAD_MONITOR")

    @model_validator(mode="after")
    def _geometry_given(self):
        if self.poni is None:
            raise ValueError("poni: required key is missing (a .poni file, or an integration.json as pyfai_config)")
        return self

    @field_validator("frames")
    @classmethod
    def _has_index_field(cls, v: str) -> str:

        check_frames_template(split_spec(v)[0] if is_hdf5(v) else v, hdf5=is_hdf5(v))
        return v


class BackgroundScan(_Section):
    """A measured background: the empty container (tube, reactor) or air alone, recorded with the
    beamline set as for the sample.  Integrated with the run's plan, normalised by its own monitor
    (relative to the scan's monitor reference) and subtracted from every sinogram per q before the
    other background corrections (xrdct_dask.sinogram.air.subtract_measured)."""

    frames: str = Field(description="a CBF template with an {index} field, or an HDF5 file::/dataset; index 0.. in "
                                    "the order below")
    monitor: Path | None = Field(None, description="text file, one I0 value per background frame (none: every "
                                                   "frame at the scan's monitor reference)")
    extent: Literal["line", "slice"] = Field(
        "line", description="line: scan.nx frames, one translation line at a fixed angle, subtracted from every "
                            "projection (a container centred on the axis, or air); slice: scan.nomega x scan.nx "
                            "frames in the scan's own order (scan.order, scan.fast_axis), subtracted projection by "
                            "projection (any container)")

    @field_validator("frames")
    @classmethod
    def _is_source(cls, v: str) -> str:
        if not is_hdf5(v) and "{index" not in v:
            raise ValueError(f"{v!r}: needs an {{index}} field (a CBF template) or an HDF5 file::/dataset")
        check_frames_template(split_spec(v)[0] if is_hdf5(v) else v, hdf5=is_hdf5(v))
        return v


def check_frames_template(v: str, hdf5: bool = False) -> None:
    """Raise ValueError (one line) unless ``v`` is a frames template of known fields
    (``{z}``, ``{line}``, ``{omega}``, ``{index}``) with integer formats, with ``{index}`` for CBF
    and without it for HDF5 (:func:`xrdct_dask.io.layout.check_template`)."""

    check_template(v, hdf5)


class Scan(_Section):
    """The acquisition grid: nz slices x nomega angles x nx translations."""

    nz: int = Field(gt=0)
    nomega: int = Field(gt=1)
    nx: int = Field(gt=1)
    fast_axis: Literal["x", "omega"] = "x"
    order: Literal["raster", "snake", "interlaced"] = "snake"
    interlace_passes: int = Field(2, ge=1, description="interlaced order: omega lines visited in this many "
                                                       "interleaved passes")
    omega_range_deg: Literal[180, 360] = 180
    positions: Literal["auto", "measured", "nominal"] = Field(
        "auto", description="where omega, x and z come from: measured (scan file columns omega_deg, x_mm, z_mm, or "
                            "the HDF5 scan's positioners), nominal (the grid from nomega, omega_range_deg, "
                            "x_step_mm, ...), or auto: measured where the scan gives them")
    x_step_mm: float = Field(1.0, gt=0)
    z_step_mm: float = Field(1.0, gt=0)
    allow_missing: bool = Field(False, description="run even when the scan leaves whole slices (angles, x steps) of "
                                                   "this grid without a frame, their frames flagged missing; else "
                                                   "that is refused (or `xrdct run` exits 1); not part of the "
                                                   "run's identity (--allow-missing)")

    @property
    def nframes(self) -> int:
        return self.nz * self.nomega * self.nx

    @model_validator(mode="after")
    def _interlaced(self):
        if self.order == "interlaced" and self.fast_axis != "x":
            raise ValueError("order interlaced interleaves omega lines: it needs fast_axis x")
        if self.order == "interlaced" and self.interlace_passes > self.nomega:
            raise ValueError(f"interlace_passes ({self.interlace_passes}) must be <= nomega ({self.nomega})")
        return self


class Geometry(_Section):
    polarization_factor: float | None = Field(0.99, ge=-1, le=1)
    solid_angle: bool = True


class Integrate(_Section):
    npt_rad: int = Field(1000, gt=1)
    unit: str = "q_nm^-1"
    split: Literal["no", "bbox", "full"] = "full"
    error_model: Literal["poisson", "azimuthal", "none"] = "poisson"
    outlier: Literal["none", "sigma-clip", "median"] = "none"
    clip_threshold: float = Field(5.0, gt=0, description="sigma-clip: discard |I-<I>| > threshold*sigma")
    max_iter: int = Field(5, ge=1, description="sigma-clip: iterations")
    percentile: tuple[float, float] = Field((40.0, 60.0), description="median: average between these percentiles")
    radial_range: tuple[float, float] | None = None
    engine: Literal["auto", "numpy", "cupy"] = "auto"
    npt_azim: int = Field(1, ge=1, description="azimuthal sectors: 1 = one pattern per frame; more = (chi, q) bins "
                                               "(reduced/ and recon/ get a chi axis; pyFAI's 2D integration)")
    azimuth_range: tuple[float, float] | None = Field(
        None, description="[lo, hi] chi in degrees (pyFAI's chi, within -180..180); null: the whole ring (sectors: "
                          "-180..180); the sectors must divide it into widths on a 0.001 deg grid")
    keep_sums: bool | None = Field(None, description="store the integrator's sums (signal, variance, normalization, "
                                                     "its square, count) next to I and sigma, to re-bin and merge "
                                                     "exactly (NXazint); null: with sectors")

    @property
    def sums_kept(self) -> bool:
        """``keep_sums``, or where it is null, whether there are sectors."""
        return self.npt_azim > 1 if self.keep_sums is None else self.keep_sums

    @property
    def chi_range(self) -> tuple[float, float] | None:
        """The azimuth range the integrator gets: ``azimuth_range``, or -180..180 with sectors."""
        return self.azimuth_range or ((-180.0, 180.0) if self.npt_azim > 1 else None)

    @model_validator(mode="after")
    def _sectors_divide_the_range(self):
        if self.azimuth_range is not None:
            lo, hi = self.azimuth_range
            if not -180.0 <= lo < hi <= 180.0:
                raise ValueError(f"azimuth_range: needs -180 <= lo < hi <= 180 degrees (pyFAI's chi), got [{lo}, {hi}]")
        if self.npt_azim > 1:
            lo, hi = self.chi_range
            width = (hi - lo) / self.npt_azim
            if abs(width * 1000 - round(width * 1000)) > 1e-6:
                fits = sorted((n for n in range(max(2, self.npt_azim - 12), self.npt_azim + 13)
                               if abs((hi - lo) / n * 1000 - round((hi - lo) / n * 1000)) <= 1e-6),
                              key=lambda n: abs(n - self.npt_azim))
                raise ValueError(f"npt_azim: {self.npt_azim} sectors do not divide the azimuth range {lo:g}..{hi:g} "
                                 f"deg ({width:.6g} deg each, not on a 0.001 deg grid); "
                                 f"e.g. {', '.join(map(str, fits[:2])) or 'another number'}")
        return self

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, v: str) -> str:
        if v not in RADIAL_UNITS:
            raise ValueError(f"must be one of {', '.join(RADIAL_UNITS)} (got {v!r})")
        return v

    @field_validator("percentile")
    @classmethod
    def _ordered(cls, v):
        if not 0 <= v[0] <= v[1] <= 100:
            raise ValueError(f"needs 0 <= low <= high <= 100 (got {v})")
        return v


class Store(_Section):
    path: Path
    omega_chunk: int = Field(16, gt=0, description="omega rows per chunk (and per decode-integrate task)")
    q_chunk: Annotated[int, Field(gt=0)] | Literal["auto"] = Field("auto", description="q bins per chunk of "
                                                               "reduced/ and recon/ (and per "
                                                               "recon task); auto: up to 256, within "
                                                               "compute.task_memory")
    overwrite: bool = False


class Sinogram(_Section):
    """Sinogram preparation (xrdct_dask.sinogram.corrections.prepare_sinogram): every correction switchable."""

    center: float | Literal["auto"] = Field("auto", description="rotation axis in pixels from the first x, or auto")
    fill_bad: bool = Field(True, description="fill frames flagged bad from their neighbours (else: zeros)")
    zingers: bool = Field(True, description="replace isolated spikes (one frame, one q bin) by their 3x3 median")
    zinger_threshold: float = Field(8.0, gt=0, description="spike: exceeds all 8 neighbours by this many noise levels")
    background: bool | Literal["auto"] = Field(
        "auto", description="auto: find the columns that are air in every projection and subtract the air modelled "
                            "per q as a line in x (nothing where no column is air: the run's log says why); true: "
                            "subtract the mean of background_columns fixed edge columns; false: none")
    background_columns: int = Field(2, ge=1, description="sample-free columns used at each edge")
    background_per_projection: bool = Field(False, description="one background per projection instead of per scan")
    stripes: bool = Field(False, description="stripe (ring artefact) removal: stripes of any width up to "
                                             "stripe_max_width_px, over all or part of omega, sorting-based")
    stripe_snr: float = Field(3.0, gt=0, description="stripe: a run of columns off all predictions from its "
                                                     "neighbours by this many noise levels")
    stripe_max_width_px: int = Field(6, ge=1, description="widest stripe looked for, in columns (x steps)")

    @field_validator("background", mode="before")
    @classmethod
    def _background_choice(cls, v):
        words = ("auto", "true", "false", "yes", "no", "on", "off", "1", "0")
        if isinstance(v, str) and v.strip().lower() not in words:
            raise ValueError(f"must be true, false or auto (got {v!r})")
        return v.strip().lower() if isinstance(v, str) and v.strip().lower() == "auto" else v
    jitter: bool = Field(False, description="per-projection shift correction from the centre of mass")
    max_jitter_px: float = Field(3.0, gt=0, description="largest jitter correction, pixels")
    absorption: Literal["off", "transmission", "scattering"] = Field(
        "off", description="self-absorption correction (xrdct_dask.sinogram.absorption): the attenuation map from "
                           "inputs.transmission, or from the total scattering (absorption_mu_max_per_mm)")
    absorption_exit: Literal["scattering-angle", "beam"] = Field(
        "scattering-angle", description="exit path of the scattered beam: at 2theta(q), averaged over azimuth; or "
                                        "along the beam (small angles: every frame divided by its transmission)")
    absorption_iterations: int = Field(2, ge=0, description="effective-transmission updates after the first "
                                                            "(transmission-divided) reconstruction")
    absorption_air: float | None = Field(None, gt=0, description="transmission reading without sample (monitor-"
                                                                  "normalised); null: median of the edge columns "
                                                                  "(background_columns at each edge: air)")
    absorption_mu_max_per_mm: float | None = Field(None, gt=0, description="absorption: scattering: linear "
                                                   "attenuation (1/mm) of the strongest-scattering voxels; "
                                                   "attenuation taken proportional to the total scattering")

    @field_validator("absorption", mode="before")
    @classmethod
    def _off_is_false(cls, v):
        # YAML 1.1 reads a bare `off` (and `no`, `false`) as False
        if v is False:
            return "off"
        if v is True:
            raise ValueError("say which: transmission or scattering (or off)")
        return v


class Recon(_Section):
    algorithm: Literal["fbp", "sirt", "cgls"] = "fbp"
    filter: Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"] = "ramp"
    iterations: int | None = Field(None, ge=1, description="sirt/cgls iterations (default: 100 sirt, 20 cgls)")
    nonneg: bool = Field(True, description="sirt/cgls: non-negative voxel intensities")
    engine: Literal["auto", "numpy", "cupy", "astra"] = Field(
        "auto", description="auto | numpy | cupy: the project's projectors; astra: the ASTRA toolbox (FBP_CUDA etc. "
                            "where it sees a GPU), same axis convention and store (pip install astra-toolbox)")


class PDF(_Section):
    """PDFgetX3-style ad hoc transform parameters, Q in 1/Angstrom, r in Angstrom.

    ``config`` names a PDFgetX3 configuration file (its ``[DEFAULT]``, then ``config_section``
    on top) that sets composition, Q and r limits, rpoly, bgscale and the background file; keys
    written in the workflow's ``pdf`` section win over the file's.
    """

    config: Path | None = Field(None, description="PDFgetX3 configuration file (.cfg, or a PDFgetX3 output file) "
                                                  "setting the keys not given here")
    config_section: str | None = Field(None, description="section of pdf.config applied over its [DEFAULT]")
    enabled: bool = True
    composition: str = "Ni"
    qmin: float = Field(1.0, ge=0)
    qmax: float = Field(20.0, gt=0)
    qmaxinst: float | None = None
    rpoly: float = Field(0.9, gt=0)
    rmin: float = Field(0.5, ge=0)
    rmax: float = Field(20.0, gt=0)
    rstep: float = Field(0.01, gt=0)
    lorch: bool = Field(False, description="Lorch window on F(Q): less termination ripple, broader peaks")
    order: Literal["recon-then-pdf", "pdf-then-recon"] = Field(
        "recon-then-pdf", description="G(r) of every reconstructed voxel, or of every frame and then reconstruct G(r)")
    scale_method: Literal["pdfgetx3", "upper-half-fit"] = Field(
        "pdfgetx3", description="per-pattern N: pdfgetx3 (mean of I/<f^2> over Q >= 0.6 qmaxinst, PDFgetX3's "
                                "scale) or upper-half-fit (least squares of N <f^2> to I over the upper half of "
                                "[qmin, qmaxinst], this package's scale before)")
    normalization: Literal["per-pattern", "fixed"] = Field(
        "per-pattern", description="scale N of S(Q): each voxel's own self-scattering level, or pdf.scale for all "
                                   "(fixed: G is linear in I(Q), both orders agree)")
    scale: float = Field(1.0, gt=0, description="fixed N (intensity per atom) for normalization: fixed")
    background: Literal["none", "file", "edge"] = Field(
        "none", description="pattern subtracted before the transform: a measured file, or the mean of the edge "
                            "voxels (recon-then-pdf) / edge frames (pdf-then-recon) of each slice")
    background_file: Path | None = Field(None, description="two columns: radial position in integrate.unit, intensity")
    bgscale: float = Field(1.0, description="I = I_sample - bgscale * I_background")
    edge_width: int = Field(2, gt=0, description="voxels (or x steps) at the edge that make the edge background")
    lowr_max: float | None = Field(None, gt=0, description="quality: G on [rpoly, lowr_max] should be -4 pi rho0 r "
                                                            "(null: 2 rpoly); keep it below the shortest distance")
    min_relative_scale: float = Field(0.05, ge=0, lt=1, description="per-pattern: voxels scattering less than this "
                                                                    "fraction of the slice's strongest get G = 0")
    r_chunk: int = Field(512, gt=0, description="r bins per chunk of pdf/G (and per pdf-then-recon task)")
    engine: Literal["auto", "numpy", "cupy"] = "auto"

    @model_validator(mode="after")
    def _ranges(self):
        if self.qmin >= self.qmax:
            raise ValueError(f"qmin ({self.qmin}) must be below qmax ({self.qmax})")
        if self.qmaxinst is not None and self.qmaxinst < self.qmax:
            raise ValueError(f"qmaxinst ({self.qmaxinst}) must be >= qmax ({self.qmax})")
        if self.rmin >= self.rmax:
            raise ValueError(f"rmin ({self.rmin}) must be below rmax ({self.rmax})")
        if self.background == "file" and self.background_file is None:
            raise ValueError("background: file needs background_file")
        if self.lowr_max is not None and self.lowr_max <= self.rpoly:
            raise ValueError(f"lowr_max ({self.lowr_max}) must be above rpoly ({self.rpoly})")
        if self.config_section is not None and self.config is None:
            raise ValueError("config_section needs config (a PDFgetX3 configuration file)")
        return self


class TexturePeak(_Section):
    """A reflection followed sector by sector: named by its d-spacing (a window of ``d_window`` about
    it) or by its radial range in ``integrate.unit``."""

    name: str | None = Field(None, description="label (default: its d-spacing or range)")
    d_angstrom: float | None = Field(None, gt=0, description="d-spacing of the reflection, angstrom")
    d_window: float = Field(0.05, gt=0, lt=0.5, description="half-width of the window about d_angstrom, relative "
                                                            "(0.05: d +- 5 %); it should reach ~3 peak widths "
                                                            "beyond the peak (the background is fitted with it)")
    q_range: tuple[float, float] | None = Field(None, description="[lo, hi] in integrate.unit, instead of d_angstrom")
    d0_angstrom: float | None = Field(None, gt=0, description="strain-free d (angstrom) of the strain (d - d0) / d0; "
                                                              "null: each voxel's mean d over its sectors")

    @model_validator(mode="after")
    def _named_once(self):
        if (self.d_angstrom is None) == (self.q_range is None):
            raise ValueError("give d_angstrom or q_range (one of them)")
        if self.q_range is not None and not self.q_range[0] < self.q_range[1]:
            raise ValueError(f"q_range: needs lo < hi, got {list(self.q_range)}")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return f"d = {self.d_angstrom:g} A" if self.d_angstrom else f"{self.q_range[0]:g}..{self.q_range[1]:g}"


class Texture(_Section):
    """Texture and strain per voxel from the reconstructed sectors (``integrate.npt_azim > 1``)."""

    peaks: list[TexturePeak] = Field([], description="reflections whose intensity and position "
                                                                       "are followed over the sectors")


class Compute(_Section):
    _sizes = field_validator("memory_limit", "task_memory", "gpu_memory", mode="before")(lambda v: _check_bytes(v))

    n_workers: int | None = Field(None, gt=0, description="LocalCluster workers (default: cores / threads_per_worker)")
    threads_per_worker: int = Field(1, gt=0)
    memory_limit: str = "auto"
    task_memory: str | None = Field(None, description="bytes one task may hold (e.g. 2GB): sets the blocks of the "
                                                      "recon and pdf tasks; default: half of memory_limit per thread")
    dashboard_address: str = "127.0.0.1:0"
    workers_per_gpu: int | None = Field(None, ge=1, description="local GPU runs: worker processes sharing each GPU "
                                                             "(each its own engine and GIL for reading frames); "
                                                             "default: as many as fit (one per 20 GB of the card, "
                                                             "1 to 6; compute.gpu_memory)")
    gpu_memory: str = Field("auto", description="local GPU runs: the GPU memory every process on a card is sized "
                                                "to together (70 % of it): auto (the card's), or a size such as "
                                                "24GB (a smaller card simulated)")
    cache_dir: str | None = Field(None, description="where integration plans are kept between runs and shared by "
                                                    "workers (default $XRDCT_CACHE_DIR, else ~/.cache/xrdct-dask)")
    read_threads: int = Field(8, gt=0, description="threads per worker process reading frame files (on a "
                                                   "GPU worker shared by its tasks)")
    max_tasks: int = Field(20_000, ge=10, description="tasks the scheduler holds at once: larger runs go in "
                                                       "waves of z-slabs, two waves of max_tasks/2 in flight")
    cluster: str | None = Field(None, description="cluster profile (a name from `xrdct cluster list`, or a path) "
                                                  "instead of a LocalCluster")
    jobs: int = Field(1, gt=0, description="batch jobs to start with a cluster profile (adaptive: the maximum)")
    adaptive: bool = Field(False, description="with a cluster profile: scale between 0 and `jobs` jobs with the load")


class View(_Section):
    """What ``xrdct view`` shows and the small copy the run writes for it (display only: not part
    of the run's identity, so changing it never reruns anything)."""

    write_copy: bool = Field(True, description="write the view copy (view/: maps and patterns binned for the browser) "
                                         "of each slice after its recon and G(r)")
    map_pixels: int = Field(512, ge=16, description="the view copy's maps have at most this many pixels a side "
                                                    "(larger slices: voxels averaged in s x s blocks)")
    phases: dict[str, list[Annotated[float, Field(gt=0)]]] = Field(
        {}, description="d-spacings (angstrom) marked on voxel patterns, by phase: "
                                          "{Ni: [2.034, 1.762, 1.246]}")


def _check_bytes(v):
    if v is None or v == "auto":
        return v

    try:
        from dask.utils import parse_bytes  # lazy: dask's import would double the CLI's start-up

        if parse_bytes(str(v).replace(" ", "")) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"must be a size such as 2GB or 1500MB (got {v!r})") from None
    return str(v)
