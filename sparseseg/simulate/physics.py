"""Liquid-argon physics: stopping power and range, recombination, energy-loss fluctuations,
multiple scattering, Michel spectrum. Units: MeV, cm."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

# ----------------------------------------------------------------------------- constants
M_E = 0.51099895
M_MU = 105.6584
M_PI = 139.5704
M_P = 938.2721
M_PI0 = 134.977
MICHEL_EMAX = 52.83

LAR_DENSITY = 1.396  # g/cm3
X0 = 14.0  # radiation length, cm
CONVERSION_LENGTH = 9.0 / 7.0 * X0  # mean photon conversion distance (~18 cm)
E_CRITICAL = 32.0
W_ION = 23.6e-6  # MeV per ionisation electron
ELECTRON_DEDX = 2.1  # mean collision loss of a relativistic electron, MeV/cm

_K = 0.307075  # MeV cm2 / mol
_ZA = 18.0 / 39.948
_I = 188.0e-6  # MeV
_KRHO = _K * _ZA * LAR_DENSITY  # MeV/cm
# Sternheimer density-effect parameters for liquid argon
_C_BAR, _X0S, _X1S, _A_S, _K_S = 5.2146, 0.2, 3.0, 0.19559, 3.0

# recombination: modified box model (ArgoNeuT, JINST 8 P08005) at MicroBooNE's drift field,
# 273 V/cm (the field that goes with the ~1.1 mm/us drift speed of the geometry)
E_FIELD_KV_CM = 0.273
_BOX_A = 0.93
_BOX_B = 0.212 / (LAR_DENSITY * E_FIELD_KV_CM)

PDG_MASS = {13: M_MU, -13: M_MU, 211: M_PI, -211: M_PI, 2212: M_P, 11: M_E, -11: M_E, 22: 0.0}


def _bethe_terms(T, mass: float):
    """(beta^2, (beta gamma)^2, T_max, density correction delta) of kinetic energy T; below
    beta*gamma = 0.05 (where Bethe-Bloch fails) the values at 0.05."""
    T = np.asarray(T, dtype=np.float64)
    gamma = 1.0 + T / mass
    bg = np.sqrt(np.maximum(gamma * gamma - 1.0, 1e-12))
    bg = np.maximum(bg, 0.05)
    gamma = np.sqrt(1.0 + bg * bg)
    b2 = bg * bg / (gamma * gamma)
    r = M_E / mass
    tmax = 2.0 * M_E * bg * bg / (1.0 + 2.0 * gamma * r + r * r)
    x = np.log10(bg)
    delta = np.where(
        x >= _X1S,
        2.0 * np.log(10.0) * x - _C_BAR,
        np.where(x > _X0S, 2.0 * np.log(10.0) * x - _C_BAR + _A_S * (_X1S - x) ** _K_S, 0.0),
    )
    return b2, bg * bg, tmax, delta


def bethe_dedx(T: np.ndarray, mass: float) -> np.ndarray:
    """Mean stopping power (MeV/cm) of a singly charged particle of kinetic energy T in LAr.

    Bethe-Bloch with the Sternheimer density correction; below beta*gamma = 0.05 (where
    Bethe-Bloch fails) the value at 0.05 is used.
    """
    b2, bg2, tmax, delta = _bethe_terms(T, mass)
    L = 0.5 * np.log(2.0 * M_E * bg2 * tmax / (_I * _I)) - b2 - 0.5 * delta
    return _KRHO / b2 * np.maximum(L, 0.5)


def restricted_dedx(T: np.ndarray, mass: float, tcut: float) -> np.ndarray:
    """Mean energy loss (MeV/cm) in collisions transferring less than ``tcut`` MeV (PDG
    restricted Bethe formula): what a track deposits along itself when knock-on electrons
    above ``tcut`` are simulated as particles of their own."""
    b2, bg2, tmax, delta = _bethe_terms(T, mass)
    w = np.minimum(tcut, tmax)
    L = 0.5 * np.log(2.0 * M_E * bg2 * w / (_I * _I)) - 0.5 * b2 * (1.0 + w / tmax) - 0.5 * delta
    return np.minimum(_KRHO / b2 * np.maximum(L, 0.5), bethe_dedx(T, mass))


@lru_cache(maxsize=None)
def range_table(mass: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T grid, dE/dx grid, CSDA range grid) for a particle of this mass; T from 10 keV to 1 TeV."""
    T = np.logspace(-2, 6, 1601)
    dedx = bethe_dedx(T, mass)
    inv = 1.0 / dedx
    R = np.concatenate([[T[0] * inv[0]], T[0] * inv[0] + np.cumsum(0.5 * (inv[1:] + inv[:-1]) * np.diff(T))])
    return T, dedx, R


def csda_range(T, mass: float) -> np.ndarray:
    """Continuous-slowing-down range (cm) of kinetic energy T (MeV)."""
    Tg, _, Rg = range_table(mass)
    return np.exp(np.interp(np.log(np.maximum(T, Tg[0])), np.log(Tg), np.log(Rg)))


def energy_at_range(R, mass: float) -> np.ndarray:
    """Kinetic energy (MeV) whose CSDA range is R (cm)."""
    Tg, _, Rg = range_table(mass)
    return np.exp(np.interp(np.log(np.maximum(R, Rg[0])), np.log(Rg), np.log(Tg)))


def dedx_at_range(R, mass: float) -> np.ndarray:
    """Mean stopping power (MeV/cm) at residual range R (cm): the Bragg curve."""
    Tg, Dg, Rg = range_table(mass)
    return np.exp(np.interp(np.log(np.maximum(R, Rg[0])), np.log(Rg), np.log(Dg)))


def recombination(dedx) -> np.ndarray:
    """Fraction of ionisation charge that escapes recombination (modified box model)."""
    xi = _BOX_B * np.maximum(np.asarray(dedx, dtype=np.float64), 0.05)
    return np.log(_BOX_A + xi) / xi


def moyal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard Moyal draws (mode 0, mean ~1.27): a cheap Landau look-alike, -ln(Z^2)."""
    z = rng.standard_normal(n)
    return -np.log(np.maximum(z * z, 1e-30))


MOYAL_MEAN = 0.5772156649 + np.log(2.0)


def fluctuate(rng: np.random.Generator, mean: np.ndarray, width: float) -> np.ndarray:
    """Energy loss with Landau-like (Moyal) fluctuations around ``mean``; relative width ``width``."""
    f = 1.0 + width * (moyal(rng, mean.shape[0]) - MOYAL_MEAN)
    return mean * np.clip(f, 0.2, 8.0)


def pbeta(T, mass) -> np.ndarray:
    """p * beta (MeV) of kinetic energy T."""
    T = np.asarray(T, dtype=np.float64)
    return T * (T + 2.0 * mass) / (T + mass)


def highland(pb, length) -> np.ndarray:
    """Highland RMS projected scattering angle (rad) over ``length`` cm for p*beta ``pb`` MeV."""
    t = np.maximum(np.asarray(length, dtype=np.float64), 1e-4) / X0
    return 13.6 / np.maximum(pb, 1e-3) * np.sqrt(t) * np.maximum(1.0 + 0.038 * np.log(t), 0.3)


def delta_tmax(T, mass) -> np.ndarray:
    """Maximum energy transfer to a knock-on electron (MeV)."""
    gamma = 1.0 + np.asarray(T, dtype=np.float64) / mass
    bg2 = gamma * gamma - 1.0
    r = M_E / mass
    return 2.0 * M_E * bg2 / (1.0 + 2.0 * gamma * r + r * r)


_MICHEL_X = np.linspace(0.0, 1.0, 513)
_MICHEL_CDF = 2.0 * _MICHEL_X**3 - _MICHEL_X**4


def sample_michel_energy(rng: np.random.Generator, n: int) -> np.ndarray:
    """Michel electron total energies (MeV): pdf ~ x^2 (3 - 2x), x = E / 52.8 MeV."""
    return MICHEL_EMAX * np.interp(rng.random(n), _MICHEL_CDF, _MICHEL_X)


def random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def orthonormal_basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (n, 3) orthogonal to unit directions d (n, 3) and to each other."""
    a = np.where(np.abs(d[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    e1 = np.cross(d, a)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(d, e1)
    return e1, e2


def rotate_by(d: np.ndarray, cos_theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Directions at polar angle theta (cos given) and azimuth phi around unit vectors d."""
    e1, e2 = orthonormal_basis(d)
    st = np.sqrt(np.clip(1.0 - cos_theta * cos_theta, 0.0, 1.0))
    out = cos_theta[:, None] * d + st[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    return out / np.linalg.norm(out, axis=1, keepdims=True)
