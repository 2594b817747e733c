"""Energy deposits: straight segments with energy, truth class, particle id and arrival time."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import physics as ph
from .tracks import Steps


@dataclass
class Deposits:
    start: np.ndarray  # (M, 3) cm
    vec: np.ndarray  # (M, 3) cm
    energy: np.ndarray  # (M,) deposited energy, MeV
    charge: np.ndarray  # (M,) energy equivalent of the charge surviving recombination, MeV
    label: np.ndarray  # (M,) uint8 class code
    cluster: np.ndarray  # (M,) int32 particle instance id
    shift: np.ndarray  # (M,) arrival time as a drift distance, cm

    def __len__(self) -> int:
        return self.energy.shape[0]

    @staticmethod
    def empty() -> "Deposits":
        z3 = np.zeros((0, 3))
        z = np.zeros(0)
        return Deposits(z3, z3, z, z, np.zeros(0, np.uint8), np.zeros(0, np.int32), z)

    @staticmethod
    def concat(parts: list["Deposits"]) -> "Deposits":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Deposits.empty()
        return Deposits(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("start", "vec", "energy", "charge", "label", "cluster", "shift")))

    @staticmethod
    def from_steps(
        rng: np.random.Generator,
        steps: Steps,
        label: np.ndarray,
        cluster: np.ndarray,
        shift: np.ndarray,
        fluct_width: float,
    ) -> "Deposits":
        """Deposits of stepped particles; per-particle label/cluster/shift arrays (P,)."""
        o = steps.owner
        mean = steps.dedx * steps.length
        dE = ph.fluctuate(rng, mean, fluct_width)
        local = dE / np.maximum(steps.length, 1e-4)
        q = dE * ph.recombination(local)
        return Deposits(
            steps.start,
            steps.vec,
            dE,
            q,
            np.asarray(label, np.uint8)[o],
            np.asarray(cluster, np.int32)[o],
            np.asarray(shift, np.float64)[o],
        )
