"""Physically motivated LArTPC simulator: 3D particle trajectories in liquid argon rendered as
three wire-plane views (U, V, Y) or 3 mm voxels, with truth labels, particle ids and vertices.

Public API: :data:`PRESETS`, :func:`simulate`, :func:`simulate_interaction`.
"""
from .generator import PRESETS, Preset, interaction_topology, simulate, simulate_full, simulate_interaction
from .geometry import project_points

SIMULATOR_VERSION = "0.5"
"""Physics and label-convention version of the simulator (docs/simulator_physics.md): 0.2 up
to sparseseg 0.1.0; 0.3 from sparseseg 0.2.0, which adds restricted muon dE/dx with explicit knock-ons, recombination at
273 V/cm, energy-conserving electrons, detector conditions and the ``visible`` label rule;
0.4 from sparseseg 0.3.0: 3D volumes (preset ``pilarnet``) hold energy in MeV, PILArNet-M's
units, without clipping (wire-plane images are bit-identical to 0.3); 0.5 from sparseseg 0.4.0:
the same seed gives the same events on every CPU (a track step of exactly k charge
sub-samples is split into k whatever the last bits of its length, which numpy's AVX2 and
AVX-512 code paths computed differently), and pions and protons interact with argon nuclei
(``hadronic``, on by default; ``hadronic=False`` gives the 0.4 physics).
Simulated files record it in their ``simulator_version`` attribute."""

__all__ = ["PRESETS", "Preset", "SIMULATOR_VERSION", "interaction_topology", "simulate", "simulate_interaction", "simulate_full",
           "project_points"]
