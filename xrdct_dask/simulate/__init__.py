"""The simulator: phantoms of known phases, their diffraction patterns and detector frames, written as
a beamline writes a scan (CBF files, Eiger-like HDF5, scan tables), with the ground truth.

Used by ``xrdct simulate``, ``xrdct demo`` and the tests."""

from __future__ import annotations

from xrdct_dask.simulate.detector import DETECTORS, detector_mask, make_integrator, phase_patterns_as_measured
from xrdct_dask.simulate.files import write_hdf5_scan, write_hdf5_units, write_scan_table
from xrdct_dask.simulate.phantom import (
    ATTENUATION_NODE_DEG,
    BEAMSTOP_Q_A,
    ENERGY_KEV,
    Q_GRID_A,
    WAVELENGTH_A,
    Phase,
    attenuated_projections,
    cubic_cluster,
    debye_pattern,
    form_factor,
    make_phantom,
    omega_angles_deg,
    phase_library,
    project,
    random_packed_cluster,
    two_theta_of_q_deg,
)
from xrdct_dask.simulate.scan import (
    SIMULATION_MARKER,
    SimulatedScan,
    check_simulation_folder,
    simulate_scan,
    simulated_workflow,
    stream_frames,
)
from xrdct_dask.simulate.texture import PhaseTexture, axis_difference_deg, parse_texture, sector_truth

__all__ = [
    "ATTENUATION_NODE_DEG", "attenuated_projections", "two_theta_of_q_deg", "ENERGY_KEV", "WAVELENGTH_A", "Q_GRID_A",
    "BEAMSTOP_Q_A", "Phase", "cubic_cluster", "random_packed_cluster", "form_factor", "debye_pattern", "phase_library",
    "make_phantom", "omega_angles_deg", "project", "DETECTORS", "make_integrator", "detector_mask",
    "phase_patterns_as_measured", "SimulatedScan", "SIMULATION_MARKER", "check_simulation_folder", "simulate_scan",
    "simulated_workflow", "stream_frames", "write_hdf5_units", "write_hdf5_scan", "write_scan_table", "PhaseTexture",
    "parse_texture", "sector_truth", "axis_difference_deg",
]
