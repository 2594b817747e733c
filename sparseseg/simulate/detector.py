"""Detector conditions: the changeable part of the detector response.

A :class:`Conditions` describes how the detector turns drifted charge into ADC pixels: gains,
white and coherent electronics noise, dead wires, the zero-suppression threshold and the
electron lifetime. The physics of an event (particles, deposits, truth) depends only on
(preset, seed, index); the conditions only change the detector response, which is drawn from
the generator's separate detector stream ``rng_det``. Simulating the same (preset, seed, index)
under different conditions therefore gives the same particles and the same truth label and
particle id on every pixel present in both images. (Truth is assigned from the charge before
gain, lifetime and noise, so even the particle id of a pixel shared by two particles does not
move with the conditions.)

``Conditions()`` (all defaults) is the idealised detector of earlier versions of the
simulator: white noise only, fixed gain, no electron lifetime, threshold ``ADC_MIN``.

Preset defaults (:func:`default_conditions`, used when ``conditions=None``)
--------------------------------------------------------------------------
``uboone`` and ``crop512`` simulate a somewhat more realistic detector than ``Conditions()``:

* coherent noise of ``1.0`` ADC (``COHERENT_NOISE_ADC``): a waveform common to each group of
  48 adjacent wires (one MicroBooNE front-end motherboard / ASIC group), correlated over
  ~15 rows (~45 us) along the drift time. MicroBooNE's raw coherent noise was removed to a
  small residual by its noise filter; the images here stand for filtered, deconvolved data,
  so a residual of ~1 ADC, well below the 2.4-2.6 ADC white noise, is used. The white noise
  sigmas of the presets are kept. Because the threshold sits ~4 sigma into the noise tail,
  even this modest extra noise (total sigma 2.6 -> 2.8 ADC) raises the number of noise-only
  pixels severalfold, and they come in short runs along a group's wires: this is the intended
  realism (coherent noise is what makes noise hits look like short tracks).
* an electron lifetime of 20 ms (``LIFETIME_MS``): MicroBooNE achieved lifetimes > 10 ms. At
  the drift velocity of ``geometry.DRIFT_VELOCITY`` (0.111 cm/us) the full 256 cm drift takes
  2.3 ms, so the charge from the cathode side is attenuated by 10.9 % and charge uniform in x
  by 5.6 % on average (0 % at the anode).

``pilarnet`` (3D, energy-like voxel values) keeps ``Conditions()``: only ``gain`` and
``threshold`` apply to 3D volumes; noise, dead wires and lifetime are wire-plane effects.

Everything else (per-plane gains of ``geometry.PLANES``: U/V = 0.85 x Y, white noise
sigmas, the fixed dead-wire maps, the threshold) is unchanged.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from ..event import ADC_MIN

COHERENT_NOISE_ADC = 1.0
"""Default coherent-noise sigma (ADC) of the 2D presets."""
LIFETIME_MS = 20.0
"""Default electron lifetime (ms) of the 2D presets."""


def _num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _bad(name: str, expected: str, v) -> ValueError:
    return ValueError(f"Conditions.{name} must be {expected}, got {v!r}")


@dataclass(frozen=True)
class Conditions:
    """Detector conditions for :func:`sparseseg.simulate.simulate` and friends.

    Parameters
    ----------
    gain : float > 0
        Overall multiplier of the charge, applied before noise and threshold (2D and 3D).
    plane_gain : three floats > 0
        Extra per-plane multipliers (U, V, Y), on top of the planes' fixed relative gains.
    noise_adc : float >= 0 or None
        White-noise sigma (ADC) for all three planes; None keeps the preset's per-plane values.
    coherent_noise_adc : float >= 0
        Sigma (ADC) of the coherent noise: one waveform per group of ``coherent_group_wires``
        adjacent wires, added to every pixel of the group (empty ones included).
    coherent_group_wires : int >= 1
        Wires per coherent-noise group (groups are aligned on absolute wire numbers).
    coherent_corr_rows : float >= 0
        Correlation length of the coherent waveform along the time rows: its autocorrelation
        is ``exp(-d^2 / (2 L^2))`` at a distance of d rows (0: independent rows).
    dead_fraction : float in [0, 1) or None
        Fraction of permanently dead wires (a fixed map per plane); None keeps the preset's.
    extra_dead_bands : int >= 0
        Additional contiguous bands of dead wires per plane, drawn per event from the detector
        stream; each band overlaps the rendered window.
    dead_band_wires : (int, int)
        Inclusive range of the width (wires) of the extra dead bands.
    threshold : float > 0
        Zero-suppression threshold (ADC): pixels below it are dropped (3D: value units).
    lifetime_ms : float > 0 or None
        Electron lifetime (ms): charge drifting x cm is scaled by
        ``exp(-x / DRIFT_VELOCITY / (1000 lifetime_ms))``; None means no attenuation.
    """

    gain: float = 1.0
    plane_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise_adc: float | None = None
    coherent_noise_adc: float = 0.0
    coherent_group_wires: int = 48
    coherent_corr_rows: float = 15.0
    dead_fraction: float | None = None
    extra_dead_bands: int = 0
    dead_band_wires: tuple[int, int] = (16, 64)
    threshold: float = ADC_MIN
    lifetime_ms: float | None = None

    def __post_init__(self) -> None:
        def pos(name, v, allow_zero=False, allow_none=False, allow_inf=False):
            if v is None and allow_none:
                return None
            expected = ("a number >= 0" if allow_zero else "a number > 0") + (" or None" if allow_none else "")
            if not _num(v) or math.isnan(v) or (math.isinf(v) and not allow_inf):
                raise _bad(name, expected, v)
            if v < 0 or (v == 0 and not allow_zero):
                raise _bad(name, expected, v)
            return float(v)

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        set_("gain", pos("gain", self.gain))
        pg = self.plane_gain
        if isinstance(pg, (str, bytes)) or not hasattr(pg, "__len__") or len(pg) != 3:
            raise _bad("plane_gain", "three numbers > 0 (U, V, Y)", pg)
        if not all(_num(g) and math.isfinite(g) and g > 0 for g in pg):
            raise _bad("plane_gain", "three numbers > 0 (U, V, Y)", pg)
        set_("plane_gain", tuple(float(g) for g in pg))
        set_("noise_adc", pos("noise_adc", self.noise_adc, allow_zero=True, allow_none=True))
        set_("coherent_noise_adc", pos("coherent_noise_adc", self.coherent_noise_adc, allow_zero=True))
        if not _int(self.coherent_group_wires) or self.coherent_group_wires < 1:
            raise _bad("coherent_group_wires", "an integer >= 1", self.coherent_group_wires)
        set_("coherent_group_wires", int(self.coherent_group_wires))
        set_("coherent_corr_rows", pos("coherent_corr_rows", self.coherent_corr_rows, allow_zero=True))
        df = self.dead_fraction
        if df is not None:
            if not _num(df) or not (0.0 <= df < 1.0):
                raise _bad("dead_fraction", "a number in [0, 1) or None", df)
            set_("dead_fraction", float(df))
        if not _int(self.extra_dead_bands) or self.extra_dead_bands < 0:
            raise _bad("extra_dead_bands", "an integer >= 0", self.extra_dead_bands)
        set_("extra_dead_bands", int(self.extra_dead_bands))
        bw = self.dead_band_wires
        if (
            isinstance(bw, (str, bytes)) or not hasattr(bw, "__len__") or len(bw) != 2
            or not all(_int(b) for b in bw) or not (1 <= bw[0] <= bw[1])
        ):
            raise _bad("dead_band_wires", "two integers (lo, hi) with 1 <= lo <= hi", bw)
        set_("dead_band_wires", (int(bw[0]), int(bw[1])))
        set_("threshold", pos("threshold", self.threshold))
        set_("lifetime_ms", pos("lifetime_ms", self.lifetime_ms, allow_none=True, allow_inf=True))

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes: Any) -> "Conditions":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict of all fields (tuples as lists)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, base: "Conditions | None" = None) -> "Conditions":
        """Conditions from a mapping (e.g. a JSON/YAML section).

        Missing keys take their values from ``base`` (default: ``Conditions()``); use
        ``base=default_conditions(preset)`` to change a preset's defaults. Unknown keys raise a
        ``ValueError`` naming them.
        """
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ValueError(f"Conditions.from_dict expects a mapping, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in names)
        if unknown:
            raise ValueError(
                f"Conditions: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(names)}"
            )
        base = cls() if base is None else base
        return dataclasses.replace(base, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


IDEAL = Conditions()
"""The idealised detector (white noise only, no lifetime): the simulator's former behaviour."""

REALISTIC = Conditions(coherent_noise_adc=COHERENT_NOISE_ADC, lifetime_ms=LIFETIME_MS)
"""Default conditions of the 2D presets (see the module docstring)."""

PRESET_CONDITIONS: dict[str, Conditions] = {"uboone": REALISTIC, "crop512": REALISTIC, "pilarnet": IDEAL}


def default_conditions(preset: str) -> Conditions:
    """The conditions a preset simulates with when ``conditions=None``."""
    try:
        return PRESET_CONDITIONS[preset]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {preset!r}; valid choices: {', '.join(PRESET_CONDITIONS)}") from None


def resolve_conditions(preset: str, conditions: Conditions | None) -> Conditions:
    """``conditions`` itself, or the preset's default when None; anything else raises."""
    if conditions is None:
        return default_conditions(preset)
    if not isinstance(conditions, Conditions):
        raise ValueError(
            f"conditions must be a Conditions or None, got {type(conditions).__name__}; "
            "for a mapping use Conditions.from_dict(d, base=default_conditions(preset))"
        )
    return conditions
