"""Physically motivated LArTPC simulator: 3D particle trajectories in liquid argon rendered as
three wire-plane views (U, V, Y) or 3 mm voxels, with truth labels, particle ids and vertices.

Public API: :data:`PRESETS`, :func:`simulate`, :func:`simulate_interaction`.
"""
from .generator import PRESETS, Preset, simulate, simulate_full, simulate_interaction
from .geometry import project_points

__all__ = ["PRESETS", "Preset", "simulate", "simulate_interaction", "simulate_full", "project_points"]
