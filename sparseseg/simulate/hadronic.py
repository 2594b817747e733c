"""Inelastic hadronic interactions of charged pions and protons in liquid argon.

A pion or proton from a neutrino interaction or a particle bomb (cosmic muons are not hadrons)
travels a distance drawn from an exponential law of mean ``INTERACTION_LENGTH`` before it
interacts inelastically with an argon nucleus; if that distance is shorter than its range
(counted from ``T_MIN`` down, below which it is taken not to interact), the track ends there and
secondaries start from the point: a kink or a star instead of a Bragg peak, and no decay at
rest for a pion that interacted.

Products, with approximate channel fractions of pi+- Ar at 0.2-1 GeV/c (the ~0.7-0.9 b
inelastic cross section splits into ~0.15-0.2 b absorption and ~0.05-0.07 b single charge
exchange, the rest quasi-elastic/inelastic scattering: LArIAT and ProtoDUNE-SP pi+-Ar
measurements):

- pion, scattering (``PION_SCATTER``): the pion continues with a fraction U(0.2, 0.8) of its
  kinetic energy at an angle cos(theta) ~ U(-0.5, 1), and 0-2 knocked-out protons;
- pion, absorption (``PION_ABSORB``): no pion; 1-4 protons;
- pion, charge exchange (the rest): a pi0 (two photons) carrying U(0.3, 0.8) of the energy,
  and 0-1 proton;
- proton: 1-4 protons, the leading one forward.

The protons share a fraction U(0.3, 0.7) of the energy left (the rest goes to neutrons,
binding and nuclear de-excitation, none of which is drawn); secondaries below 1 MeV are
dropped. Secondaries interact in turn (``GENERATIONS`` in all). The rates are the physics this
module adds; the final states are a coarse model (no Fermi motion or angular correlations).
"""
from __future__ import annotations

import numpy as np

from . import physics as ph

INTERACTION_LENGTH = 85.7
"""cm: the nuclear interaction length of liquid argon, 119.7 g/cm2 / 1.396 g/cm3 (PDG, "Atomic
and nuclear properties of materials"), used for pions and protons at every energy above T_MIN."""
T_MIN = 20.0
"""MeV: pions and protons below this kinetic energy are taken not to interact (Coulomb barrier
for protons; the remaining range is < 0.4 cm for a proton, < 2.4 cm for a pion)."""
PION_SCATTER, PION_ABSORB = 0.65, 0.25
GENERATIONS = 2
_HADRONS = (211, -211, 2212)


def interaction_distance(rng: np.random.Generator, pdg: np.ndarray, T: np.ndarray, mass: np.ndarray,
                         eligible: np.ndarray) -> np.ndarray:
    """Path length (cm) after which each track interacts, ``inf`` where it does not: for
    eligible pions and protons, an exponential draw of mean :data:`INTERACTION_LENGTH`, kept
    when shorter than the range from ``T`` down to :data:`T_MIN`. One draw per eligible track,
    none otherwise (so a stream without hadrons is unchanged)."""
    pdg, T = np.asarray(pdg), np.asarray(T, float)
    d = np.full(pdg.shape, np.inf)
    who = np.flatnonzero(np.isin(pdg, _HADRONS) & np.asarray(eligible, bool) & (T > T_MIN))
    if who.size == 0:
        return d
    draw = rng.exponential(INTERACTION_LENGTH, who.size)
    for mval in np.unique(mass[who]):
        sel = mass[who] == mval
        reach = ph.csda_range(T[who[sel]], float(mval)) - ph.csda_range(np.array([T_MIN]), float(mval))[0]
        hit = draw[sel] < reach
        d[who[sel][hit]] = draw[sel][hit]
    return d


def _rotate(rng, d, cos_theta):
    return ph.rotate_by(d[None], np.atleast_1d(cos_theta), rng.uniform(0, 2 * np.pi, 1))[0]


def _protons(rng, n: int, budget: float, d: np.ndarray):
    """n protons sharing ``budget`` MeV (flat Dirichlet); the first forward, the rest isotropic."""
    if n <= 0 or budget <= 0:
        return []
    share = rng.dirichlet(np.ones(n)) * budget
    out = []
    for k, T in enumerate(share):
        direction = _rotate(rng, d, rng.uniform(0.3, 1.0)) if k == 0 else ph.random_directions(rng, 1)[0]
        out.append((2212, direction, float(T)))
    return out


def pi0_photons(rng, p: float, d: np.ndarray):
    """The two photons (pdg 22, momentum vector, energy) of a pi0 of momentum ``p`` (MeV/c)
    along the unit vector ``d``, isotropic decay in its rest frame (two draws: cos theta*, phi)."""
    E = np.hypot(p, ph.M_PI0)
    gam, beta = E / ph.M_PI0, p / E
    cs = rng.uniform(-1, 1)
    phi = rng.uniform(0, 2 * np.pi)
    e1, e2 = ph.orthonormal_basis(np.asarray(d, float)[None])
    perp = np.cos(phi) * e1[0] + np.sin(phi) * e2[0]
    half = ph.M_PI0 / 2
    out = []
    for sgn in (1.0, -1.0):
        c = sgn * cs
        s = np.sqrt(max(0.0, 1 - c * c))
        vec = gam * half * (c + beta) * d + sgn * half * s * perp
        out.append((22, vec, float(gam * half * (1 + beta * c))))
    return out


def products(rng: np.random.Generator, pdg: int, T: float, d: np.ndarray) -> list[tuple[int, np.ndarray, float]]:
    """Secondaries (pdg, unit direction, kinetic energy MeV; photons: energy) of a pion or
    proton of kinetic energy ``T`` moving along ``d`` that interacts inelastically."""
    d = np.asarray(d, float) / np.linalg.norm(d)
    out: list[tuple[int, np.ndarray, float]] = []
    if pdg == 2212:
        out += _protons(rng, 1 + min(int(rng.poisson(0.8)), 3), T * rng.uniform(0.3, 0.7), d)
    else:
        u = rng.random()
        if u < PION_SCATTER:
            Tpi = T * rng.uniform(0.2, 0.8)
            out.append((int(pdg), _rotate(rng, d, rng.uniform(-0.5, 1.0)), float(Tpi)))
            out += _protons(rng, min(int(rng.poisson(0.7)), 2), (T - Tpi) * rng.uniform(0.3, 0.7), d)
        elif u < PION_SCATTER + PION_ABSORB:
            out += _protons(rng, 1 + min(int(rng.poisson(0.8)), 3), (T + ph.M_PI) * rng.uniform(0.3, 0.7), d)
        else:
            T0 = T * rng.uniform(0.3, 0.8)
            out += pi0_photons(rng, float(np.sqrt(T0 * (T0 + 2 * ph.M_PI0))), _rotate(rng, d, rng.uniform(0.0, 1.0)))
            out += _protons(rng, int(rng.random() < 0.5), (T - T0) * rng.uniform(0.3, 0.7), d)
    return [o for o in out if o[2] >= 1.0]
