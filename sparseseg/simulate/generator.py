"""Interactions (neutrino-like, particle bomb, cosmic overlay), presets and the public API."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..classes import DELTA, HIP, MICHEL, MIP, PLANES as PLANE_NAMES, SHOWER
from ..event import Event
from . import hadronic
from . import physics as ph
from .deposits import Deposits
from .detector import Conditions, resolve_conditions
from .labels import DELTA_SHOWER_MEV, check_label_rule, delta_parents, fold_unresolved_deltas
from .geometry import (
    CUBE_HI,
    CUBE_LO,
    CUBE_VOXELS,
    N_ROWS,
    PLANES,
    ROW_CM,
    TPC_HI,
    TPC_LO,
    VOXEL_CM,
    X_TRIGGER_OFFSET,
    clip_lines_to_box,
    inside_box,
    project_points,
)
from .render import charge_points, render_plane, render_voxels
from .showers import cascade
from .tracks import concat_steps, propagate_tracks

# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """What one preset simulates and how it is imaged."""

    name: str
    ndim: int  # 2: three wire-plane views; 3: one voxel volume
    shapes: tuple[tuple[int, ...], ...]  # image shape per output Event
    topologies: tuple[tuple[str, float], ...]  # (name, probability)
    cosmic_mean: float  # mean number of cosmic muons (over the full readout / volume)
    crop: int | None = None  # side of the square crop around the vertex (2D only)
    noise_adc: tuple[float, ...] = (2.6, 2.6, 2.4)
    dead_fraction: float = 0.03
    description: str = ""


_NU = (("ccmu", 0.5), ("cce", 0.2), ("ncpi0", 0.3))

PRESETS: dict[str, Preset] = {
    "uboone": Preset(
        "uboone", 2, ((N_ROWS, 2400), (N_ROWS, 2400), (N_ROWS, 3456)), _NU, 20.0,
        description="full MicroBooNE-like readout: one neutrino interaction + cosmic overlay, planes U, V, Y",
    ),
    "crop512": Preset(
        "crop512", 2, ((512, 512),) * 3, (("bomb", 0.25),) + tuple((n, 0.75 * p) for n, p in _NU), 20.0, crop=512,
        description="512 x 512 training views around the interaction vertex, cosmics crossing the window",
    ),
    "pilarnet": Preset(
        "pilarnet", 3, ((CUBE_VOXELS,) * 3,), (("bomb", 0.5),) + tuple((n, 0.5 * p) for n, p in _NU), 1.5,
        noise_adc=(0.0,), dead_fraction=0.0, 
        description="768^3 voxels of 3 mm: particle bombs and neutrino-like interactions",
    ),
}

# cosmic arrival times, as a drift-distance shift, such that some are partly out of the window
COSMIC_SHIFT_RANGE = (-(TPC_HI[0] + X_TRIGGER_OFFSET), N_ROWS * ROW_CM - X_TRIGGER_OFFSET)

# ----------------------------------------------------------------------------- primaries


@dataclass
class Primaries:
    pdg: list = field(default_factory=list)
    start: list = field(default_factory=list)
    dir: list = field(default_factory=list)
    T: list = field(default_factory=list)  # kinetic energy (photons: energy), MeV
    shift: list = field(default_factory=list)
    cosmic: list = field(default_factory=list)
    max_len: list = field(default_factory=list)
    parent: list = field(default_factory=list)  # "nu", "pi0", "cosmic", "bomb"

    def add(self, pdg, start, d, T, shift=0.0, cosmic=False, max_len=np.inf, parent="nu"):
        d = np.asarray(d, float)
        self.pdg.append(int(pdg))
        self.start.append(np.asarray(start, float))
        self.dir.append(d / np.linalg.norm(d))
        self.T.append(float(T))
        self.shift.append(float(shift))
        self.cosmic.append(bool(cosmic))
        self.max_len.append(float(max_len))
        self.parent.append(parent)

    def __len__(self):
        return len(self.pdg)


@dataclass
class Truth:
    """Per-interaction truth, for tests and studies (not part of the Event format)."""

    topology: str
    vertex: np.ndarray  # (3,) cm
    track_pdg: np.ndarray
    track_cluster: np.ndarray
    track_start: np.ndarray
    track_end: np.ndarray
    track_contained: np.ndarray
    track_shift: np.ndarray
    track_cosmic: np.ndarray
    em_pdg: np.ndarray
    em_label: np.ndarray
    em_cluster: np.ndarray
    em_origin: np.ndarray  # where the primary was created
    em_visible_start: np.ndarray  # first deposit (photons: first interaction point); NaN if none
    em_shift: np.ndarray
    em_parent: list
    vertices3d: np.ndarray  # (V, 3) cm
    vertex_shift: np.ndarray  # (V,)
    windows: list = field(default_factory=list)  # (row0, wire0) per plane for crops


def _forward_dir(rng, sharpness=2.2):
    c = 1.0 - 2.0 * rng.random() ** sharpness
    s = np.sqrt(max(0.0, 1 - c * c))
    phi = rng.uniform(0, 2 * np.pi)
    return np.array([s * np.cos(phi), s * np.sin(phi), c])


def _iso_dir(rng):
    return ph.random_directions(rng, 1)[0]


def _add_protons(rng, prim, vtx, mean, cap=4):
    for _ in range(min(int(rng.poisson(mean)), cap)):
        prim.add(2212, vtx, _forward_dir(rng, 0.8), min(25.0 + rng.exponential(70.0), 600.0))


def _add_pi0(rng, prim, vtx, parent="pi0"):
    p = 40.0 + rng.gamma(2.0, 140.0)
    d = _forward_dir(rng, 0.7)
    for pdg, vec, E in hadronic.pi0_photons(rng, p, d):
        prim.add(pdg, vtx, vec, E, parent=parent)


def _neutrino(rng, topology, vtx, prim):
    if topology == "ccmu":
        prim.add(13, vtx, _forward_dir(rng), min(50.0 + rng.gamma(1.8, 330.0), 3000.0))
        _add_protons(rng, prim, vtx, 1.3)
        if rng.random() < 0.3:
            prim.add(211 if rng.random() < 0.7 else -211, vtx, _iso_dir(rng), 40.0 + rng.exponential(150.0))
        if rng.random() < 0.1:
            _add_pi0(rng, prim, vtx)
    elif topology == "cce":
        prim.add(11, vtx, _forward_dir(rng), min(100.0 + rng.gamma(2.0, 300.0), 3000.0))
        _add_protons(rng, prim, vtx, 1.3)
        if rng.random() < 0.15:
            prim.add(211, vtx, _iso_dir(rng), 40.0 + rng.exponential(150.0))
    elif topology == "ncpi0":
        _add_pi0(rng, prim, vtx)
        _add_protons(rng, prim, vtx, 1.2, cap=3)
        if rng.random() < 0.1:
            prim.add(211, vtx, _iso_dir(rng), 40.0 + rng.exponential(150.0))
    elif topology == "bomb":
        kinds = np.array([13, -13, 211, -211, 2212, 11, 22])
        w = np.array([0.15, 0.1, 0.1, 0.1, 0.25, 0.15, 0.15])
        for _ in range(int(rng.integers(2, 7))):
            pdg = int(rng.choice(kinds, p=w))
            if pdg == 2212:
                T = np.exp(rng.uniform(np.log(20.0), np.log(400.0)))
            elif abs(pdg) in (11, 22):
                T = np.exp(rng.uniform(np.log(20.0), np.log(1000.0)))
            else:
                T = np.exp(rng.uniform(np.log(30.0), np.log(1000.0)))
            prim.add(pdg, vtx, _iso_dir(rng), T, parent="bomb")
    else:  # pragma: no cover - guarded by the preset tables
        raise ValueError(topology)


def sample_cosmics(rng, n, lo, hi, ext=400.0):
    """n cosmic muons crossing the box [lo, hi] (y up): entry points, directions, T, pdg, chord.

    Points are drawn on a horizontal plane at the top (extended by ``ext`` cm on each side),
    with zenith pdf ~ cos^3 (cos^2 intensity through a horizontal surface), and kept when
    their line crosses the box; momenta are log-normal around 3 GeV (a few % stop).
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    entry, dirs, chord = [], [], []
    have = 0
    while have < n:
        m = 4 * (n - have) + 8
        p0 = np.empty((m, 3))
        p0[:, 0] = rng.uniform(lo[0] - ext, hi[0] + ext, m)
        p0[:, 1] = hi[1]
        p0[:, 2] = rng.uniform(lo[2] - ext, hi[2] + ext, m)
        c = rng.random(m) ** 0.25
        s = np.sqrt(1 - c * c)
        phi = rng.uniform(0, 2 * np.pi, m)
        d = np.stack([s * np.cos(phi), -c, s * np.sin(phi)], axis=1)
        t_in, t_out = clip_lines_to_box(p0, d, lo, hi)
        ok = np.flatnonzero(t_out - t_in > 5.0)[: n - have]
        entry.append(p0[ok] + d[ok] * t_in[ok, None])
        dirs.append(d[ok])
        chord.append(t_out[ok] - t_in[ok])
        have += ok.size
    entry = np.concatenate(entry) if entry else np.zeros((0, 3))
    dirs = np.concatenate(dirs) if dirs else np.zeros((0, 3))
    chord = np.concatenate(chord) if chord else np.zeros(0)
    p = np.exp(rng.normal(np.log(3000.0), 1.1, n))
    T = np.maximum(np.hypot(p, ph.M_MU) - ph.M_MU, 20.0)
    pdg = np.where(rng.random(n) < 0.556, -13, 13)
    return entry, dirs, T, pdg, chord


# ----------------------------------------------------------------------------- physics run

DELTA_TMIN = 1.0  # MeV


def _hadronic_generations(rng, prim: Primaries, ti, mass, d_int, steps, lo, hi):
    """Secondaries of the tracks that interacted (distance ``d_int`` shorter than where they
    stopped or left), appended to ``prim``, propagated, and interacting in turn
    (:mod:`sparseseg.simulate.hadronic`). Returns the steps of all tracks (``ti``'s, then each
    generation's in the order appended) and the interaction points with their time shifts."""
    points, cur, cur_mass, cur_d, cur_steps = [], ti, mass, d_int, steps
    for gen in range(hadronic.GENERATIONS):
        R0 = np.zeros(cur.size)
        for mval in np.unique(cur_mass):
            sel = cur_mass == mval
            R0[sel] = ph.csda_range(np.asarray(prim.T)[cur[sel]], float(mval))
        has = cur_steps.count > 0
        ended = np.full(cur.size, False)
        ended[has] = inside_box(cur_steps.end[has], lo, hi)
        hit = np.flatnonzero(ended & (cur_d < np.minimum(R0, np.asarray(prim.max_len)[cur])))
        new_tracks = []
        for k in hit:
            i = int(cur[k])
            last = cur_steps.first[k] + cur_steps.count[k] - 1
            T_int = float(ph.energy_at_range(np.array([R0[k] - cur_d[k]]), float(cur_mass[k]))[0])
            at = cur_steps.end[k]
            points.append((at, prim.shift[i]))
            for pdg_s, d_s, T_s in hadronic.products(rng, prim.pdg[i], T_int, cur_steps.vec[last]):
                if pdg_s != 22:
                    new_tracks.append(len(prim))
                prim.add(pdg_s, at, d_s, T_s, shift=prim.shift[i], parent=f"hadronic:{i}")
        if not new_tracks:
            break
        cur = np.array(new_tracks)
        cur_mass = m = np.array([ph.PDG_MASS[prim.pdg[i]] for i in cur])
        T_new = np.array([prim.T[i] for i in cur])
        pdg_new = np.array([prim.pdg[i] for i in cur])
        cur_d = hadronic.interaction_distance(rng, pdg_new, T_new, m, np.full(cur.size, gen + 1 < hadronic.GENERATIONS))
        cur_steps = propagate_tracks(rng, np.array([prim.start[i] for i in cur]), np.array([prim.dir[i] for i in cur]),
                                     T_new, m, _track_step(pdg_new), lo, hi, cur_d)
        steps = concat_steps(steps, cur_steps)
    return steps, points


def _track_step(pdg: np.ndarray) -> np.ndarray:
    """Step length (cm) of each track: protons finer, for their Bragg peak."""
    return np.where(pdg == 2212, 0.15, 0.3)


def _propagate(rng, prim: Primaries, lo, hi, hadronic_on: bool):
    """Step every track of ``prim`` (muons, pions, protons); with ``hadronic_on`` pions and
    protons may interact, and their secondaries are appended to ``prim`` and stepped too.
    Returns (steps in track order of the final ``prim``, interaction points with shifts)."""
    pdg = np.array(prim.pdg, dtype=np.int64)
    ti = np.flatnonzero(np.isin(np.abs(pdg), (13, 211, 2212)))
    mass = np.array([ph.PDG_MASS[int(p)] for p in pdg[ti]])
    T = np.array(prim.T)[ti]
    max_len = np.array(prim.max_len)[ti]
    if hadronic_on:
        d_int = hadronic.interaction_distance(rng, pdg[ti], T, mass, ~np.array(prim.cosmic, bool)[ti])
        max_len = np.minimum(max_len, d_int)
    steps = propagate_tracks(rng, np.array(prim.start).reshape(-1, 3)[ti], np.array(prim.dir).reshape(-1, 3)[ti],
                             T, mass, _track_step(pdg[ti]), lo, hi, max_len)
    if not hadronic_on:
        return steps, []
    return _hadronic_generations(rng, prim, ti, mass, d_int, steps, lo, hi)


def _run_physics(rng, prim: Primaries, lo, hi, topology, vertex, label_rule: str = "visible", hadronic_on: bool = False):
    steps, hadronic_points = _propagate(rng, prim, lo, hi, hadronic_on)
    n = len(prim)
    pdg = np.array(prim.pdg, dtype=np.int64)
    start = np.array(prim.start).reshape(n, 3)
    dirs = np.array(prim.dir).reshape(n, 3)
    T = np.array(prim.T)
    shift = np.array(prim.shift)
    cosmic = np.array(prim.cosmic, bool)
    cluster = np.arange(n, dtype=np.int32)
    next_id = n
    deps: list[Deposits] = []

    is_track = np.isin(np.abs(pdg), (13, 211, 2212))
    ti = np.flatnonzero(is_track)
    mass = np.array([ph.PDG_MASS[int(p)] for p in pdg[ti]])
    # knock-ons above DELTA_TMIN are drawn explicitly below, so muons and pions lose only the
    # restricted energy loss along the track (else that charge would be counted twice)
    light_steps = mass[steps.owner] < 500.0 if steps.owner.size else np.zeros(0, bool)
    for mval in np.unique(mass[steps.owner[light_steps]]) if light_steps.any() else ():
        sel = light_steps & (mass[steps.owner] == mval)
        E = steps.energy[sel]
        steps.dedx[sel] *= ph.restricted_dedx(E, float(mval), DELTA_TMIN) / ph.bethe_dedx(E, float(mval))
    tlabel = np.where(pdg[ti] == 2212, HIP, MIP).astype(np.uint8)
    deps.append(Deposits.from_steps(rng, steps, tlabel, cluster[ti], shift[ti], 0.12))

    # delta rays off muons and pions: dN/dx = K/2 Z/A rho / beta^2 (1/Tmin - 1/Tmax)
    em_start, em_dir, em_E, em_photon, em_label, em_cluster, em_shift, em_pdg, em_parent = ([] for _ in range(9))
    light = mass[steps.owner] < 500.0 if steps.owner.size else np.zeros(0, bool)
    if light.any():
        sidx = np.flatnonzero(light)
        m_s = mass[steps.owner[sidx]]
        Ts = steps.energy[sidx]
        tmax = np.minimum(ph.delta_tmax(Ts, m_s), Ts)
        gamma = 1 + Ts / m_s
        b2 = 1 - 1 / (gamma * gamma)
        lam = np.where(tmax > DELTA_TMIN, 0.0966 / b2 * (1 / DELTA_TMIN - 1 / np.maximum(tmax, DELTA_TMIN)), 0.0)
        cnt = rng.poisson(lam * steps.length[sidx])
        sel = np.repeat(sidx, cnt)
        if sel.size:
            tm = np.repeat(tmax, cnt)
            u = rng.random(sel.size)
            Td = 1.0 / (1.0 / DELTA_TMIN - u * (1.0 / DELTA_TMIN - 1.0 / tm))
            pos = steps.start[sel] + steps.vec[sel] * rng.random(sel.size)[:, None]
            d0 = steps.vec[sel] / np.maximum(steps.length[sel], 1e-9)[:, None]
            cth = np.clip(np.sqrt(Td / (Td + 2 * ph.M_E)) * np.sqrt((tm + 2 * ph.M_E) / tm), -1, 1)
            dd = ph.rotate_by(d0, cth, rng.uniform(0, 2 * np.pi, sel.size))
            owner = ti[steps.owner[sel]]
            k = sel.size
            em_start.append(pos); em_dir.append(dd); em_E.append(Td); em_photon.append(np.zeros(k, bool))
            kind = np.where(Td > DELTA_SHOWER_MEV, SHOWER, DELTA) if label_rule == "visible" else np.full(k, DELTA)
            em_label.append(kind.astype(np.uint8)); em_cluster.append(np.arange(next_id, next_id + k, dtype=np.int32))
            em_shift.append(shift[owner]); em_pdg.append(np.full(k, 11)); em_parent += [f"delta:{c}" for c in cluster[owner]]
            next_id += k

    # Michel electrons from stopped mu+ (always), mu- (1/4 escape capture) and pi+ (via mu+)
    tp = pdg[ti]
    cont = steps.contained
    decay = cont & ((tp == -13) | (tp == 211) | ((tp == 13) & (rng.random(ti.size) < 0.25)))
    di = np.flatnonzero(decay)
    mich_pts = steps.end[di]
    mich_shift = shift[ti[di]]
    if di.size:
        k = di.size
        em_start.append(mich_pts); em_dir.append(ph.random_directions(rng, k))
        em_E.append(np.maximum(ph.sample_michel_energy(rng, k) - ph.M_E, 0.5)); em_photon.append(np.zeros(k, bool))
        em_label.append(np.full(k, MICHEL, np.uint8)); em_cluster.append(np.arange(next_id, next_id + k, dtype=np.int32))
        em_shift.append(mich_shift); em_pdg.append(np.full(k, 11)); em_parent += [f"michel:{c}" for c in cluster[ti[di]]]
        next_id += k

    # primary electrons and photons
    ei = np.flatnonzero(np.isin(np.abs(pdg), (11, 22)))
    if ei.size:
        em_start.append(start[ei]); em_dir.append(dirs[ei]); em_E.append(T[ei]); em_photon.append(pdg[ei] == 22)
        em_label.append(np.full(ei.size, SHOWER, np.uint8)); em_cluster.append(cluster[ei])
        em_shift.append(shift[ei]); em_pdg.append(pdg[ei]); em_parent += [prim.parent[i] for i in ei]

    if em_start:
        cat = np.concatenate
        es, ed, eE = cat(em_start), cat(em_dir), cat(em_E)
        res = cascade(rng, es, ed, eE, cat(em_photon), cat(em_label), cat(em_cluster), cat(em_shift), lo, hi)
        deps.append(res.deposits)
        em = dict(pdg=cat(em_pdg), label=cat(em_label), cluster=cat(em_cluster), origin=es,
                  vis=res.visible_start, shift=cat(em_shift))
        conv, conv_shift = res.conversion_vertices, res.conversion_shift
    else:
        em = dict(pdg=np.zeros(0, np.int64), label=np.zeros(0, np.uint8), cluster=np.zeros(0, np.int32),
                  origin=np.zeros((0, 3)), vis=np.zeros((0, 3)), shift=np.zeros(0))
        conv, conv_shift = np.zeros((0, 3)), np.zeros(0)

    # vertices: the interaction vertex, muon decay points, photon conversion points
    vtx = np.asarray(vertex, float).reshape(-1, 3)
    hp = np.array([p for p, _ in hadronic_points]).reshape(-1, 3)
    v3 = np.concatenate([vtx, mich_pts, conv, hp])
    vs = np.concatenate([np.zeros(len(vtx)), mich_shift, conv_shift, np.array([s for _, s in hadronic_points])])
    truth = Truth(
        topology, vtx[0], pdg[ti], cluster[ti], start[ti], steps.end, steps.contained, shift[ti], cosmic[ti],
        em["pdg"], em["label"], em["cluster"], em["origin"], em["vis"], em["shift"], em_parent, v3, vs,
    )
    return Deposits.concat(deps), truth


# ----------------------------------------------------------------------------- interactions


def _check_preset(preset: str) -> Preset:
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid choices: {', '.join(PRESETS)}")
    return PRESETS[preset]


def _check_int(name: str, v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v}")
    return int(v)


def _choose(rng, table):
    names = [t[0] for t in table]
    p = np.array([t[1] for t in table], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _crop_windows(rng, vertex, size):
    """(row0, wire0) per plane: a size x size window holding the vertex, jittered."""
    jr = int(rng.integers(-size // 4, size // 4 + 1))
    out = []
    for p in PLANES:
        rw = project_points(vertex[None], p)[0]
        jw = int(rng.integers(-size // 4, size // 4 + 1))
        r0 = int(np.clip(np.floor(rw[0]) - size // 2 + jr, 0, N_ROWS - size))
        w0 = int(np.clip(np.floor(rw[1]) - size // 2 + jw, 0, p.n_wires - size))
        out.append((r0, w0))
    return out


def _cosmics_hitting_windows(entry, dirs, chord, shift, windows, size, margin=24.0):
    """Which straight cosmic chords cross at least one crop window (in any plane)."""
    exit_ = entry + dirs * chord[:, None]
    hit = np.zeros(entry.shape[0], bool)
    for p, (r0, w0) in zip(PLANES, windows):
        a = project_points(entry, p, shift)
        b = project_points(exit_, p, shift)
        lo = np.array([r0 - margin, w0 - margin])
        hi = np.array([r0 + size + margin, w0 + size + margin])
        t_in, t_out = clip_lines_to_box(a, b - a, lo, hi)
        hit |= t_in < np.minimum(t_out, 1.0)
    return hit


def _streams(seed: int, index: int):
    """The three random streams of interaction ``index``: physics, cosmics, detector."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(3))


def interaction_topology(preset: str, seed: int, index: int) -> str:
    """The topology (``ccmu``, ``cce``, ``ncpi0`` or ``bomb``) that ``simulate_full(preset,
    seed, index)`` simulates, found without simulating: it is the first draw of the physics
    stream. Lets a caller pick interactions by class from a stream (e.g. a class-balanced
    training stream) at no cost. 2D presets only (a 3D volume holds several interactions).
    """
    pre = _check_preset(preset)
    if pre.ndim != 2:
        raise ValueError(f"interaction_topology: preset {pre.name!r} is 3D (several interactions per volume); "
                         "use a 2D preset")
    return _choose(_streams(_check_int("seed", seed), _check_int("index", index))[0], pre.topologies)


def simulate_full(
    preset: str, seed: int, index: int, conditions: Conditions | None = None, label_rule: str = "visible",
    hadronic: bool = True,
) -> tuple[list[Event], Truth]:
    """Simulate one interaction; returns its Events and the generator truth.

    ``hadronic`` (default on since simulator 0.5): pions and protons interact inelastically
    with argon nuclei (:mod:`sparseseg.simulate.hadronic`: interaction length 85.7 cm,
    secondaries from the interaction point); off, they only stop or leave, as before 0.5.

    ``label_rule``: "visible" (default) or "legacy", the label convention of
    :mod:`sparseseg.simulate.labels`; it changes labels only, never charge or coordinates.

    ``conditions`` (a :class:`~sparseseg.simulate.detector.Conditions`; None: the preset's
    default, see :func:`~sparseseg.simulate.detector.default_conditions`) changes only the
    detector response: the particles, deposits and truth do not depend on it.
    """
    pre = _check_preset(preset)
    seed = _check_int("seed", seed)
    index = _check_int("index", index)
    check_label_rule(label_rule)
    cond = resolve_conditions(pre.name, conditions)
    rng, rng_cos, rng_det = _streams(seed, index)
    prim = Primaries()
    if pre.ndim == 3:
        # several independent interactions per volume, as in PILArNet
        lo, hi = CUBE_LO, CUBE_HI
        n_int = 1 + min(int(rng.poisson(1.5)), 4)
        topos, verts = [], []
        for _ in range(n_int):
            topos.append(_choose(rng, pre.topologies))
            verts.append(rng.uniform(lo + 40.0, hi - 40.0))
            _neutrino(rng, topos[-1], verts[-1], prim)
        topology = "+".join(topos)
        vertex = np.array(verts)
    else:
        lo, hi = TPC_LO, TPC_HI
        topology = _choose(rng, pre.topologies)  # the first draw: see interaction_topology
        vertex = rng.uniform(TPC_LO + [15.0, 16.0, 30.0], TPC_HI - [15.0, 16.0, 40.0])
        _neutrino(rng, topology, vertex, prim)
    windows = _crop_windows(rng, vertex, pre.crop) if pre.crop else None

    n_cos = int(rng_cos.poisson(pre.cosmic_mean))
    if n_cos:
        entry, cdirs, cT, cpdg, chord = sample_cosmics(rng_cos, n_cos, lo, hi)
        if pre.ndim == 2:
            cshift = rng_cos.uniform(*COSMIC_SHIFT_RANGE, n_cos)
        else:
            cshift = np.zeros(n_cos)
        use = np.ones(n_cos, bool)
        if windows is not None:
            use = _cosmics_hitting_windows(entry, cdirs, chord, cshift, windows, pre.crop)
        for i in np.flatnonzero(use):
            prim.add(cpdg[i], entry[i], cdirs[i], cT[i], cshift[i], cosmic=True, max_len=chord[i] + 10.0, parent="cosmic")

    deps, truth = _run_physics(rng, prim, lo, hi, topology, vertex, label_rule, bool(hadronic))
    parents = delta_parents(truth) if label_rule == "visible" else {}
    truth.windows = windows or []
    meta = {"event_id": index, "preset": pre.name, "seed": seed, "topology": topology}
    meta["hadronic"] = bool(hadronic)
    if pre.ndim == 3:
        pts = charge_points(rng_det, deps, diffuse=False)
        r = render_voxels(pts, conditions=cond)
        verts = (truth.vertices3d / VOXEL_CM - 0.5).astype(np.float32)
        lab, clu = fold_unresolved_deltas(r.coords, pre.shapes[0], r.labels, r.clusters, parents)
        ev = Event(r.coords, r.adc, pre.shapes[0], lab, clu, verts, dict(meta, plane="3D", label_rule=label_rule))
        return [ev], truth
    pts = charge_points(rng_det, deps, diffuse=True)
    events = []
    for k, p in enumerate(PLANES):
        shape = pre.shapes[k]
        r0, w0 = windows[k] if windows else (0, 0)
        r = render_plane(rng_det, pts, p, r0, w0, shape[0], shape[1], pre.noise_adc[k], pre.dead_fraction,
                         conditions=cond)
        v = project_points(truth.vertices3d, p, truth.vertex_shift) - 0.5 - np.array([r0, w0])
        lab, clu = fold_unresolved_deltas(r.coords, shape, r.labels, r.clusters, parents)
        ev = Event(r.coords, r.adc, shape, lab, clu, v.astype(np.float32),
                   dict(meta, plane=PLANE_NAMES[k], label_rule=label_rule))
        events.append(ev)
    return events, truth


def simulate_interaction(preset: str, seed: int, index: int, conditions: Conditions | None = None,
                         label_rule: str = "visible", hadronic: bool = True) -> list[Event]:
    """Simulate interaction ``index`` of the stream ``seed``.

    2D presets ("uboone", "crop512") give three Events, planes U, V, Y in that order;
    "pilarnet" gives one 3D Event. The result depends only on (preset, seed, index) and the
    detector ``conditions`` (None: the preset's default), which never change the physics.
    """
    return simulate_full(preset, seed, index, conditions=conditions, label_rule=label_rule, hadronic=hadronic)[0]


def simulate(preset: str, n: int, seed: int, start: int = 0, conditions: Conditions | None = None,
             label_rule: str = "visible", hadronic: bool = True) -> Iterator[Event]:
    """Yield the Events of interactions start .. start + n - 1, in order (``conditions`` and
    ``hadronic``: as in :func:`simulate_full`)."""
    _check_preset(preset)
    resolve_conditions(preset, conditions)
    check_label_rule(label_rule)
    n = _check_int("n", n)
    seed = _check_int("seed", seed)
    start = _check_int("start", start)

    def gen():
        for i in range(start, start + n):
            yield from simulate_interaction(preset, seed, i, conditions=conditions, label_rule=label_rule,
                                            hadronic=hadronic)

    return gen()
