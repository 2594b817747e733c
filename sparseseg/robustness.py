"""Robustness of a segmentation model to the detector: the same simulated events re-rendered
under other detector conditions (gain, noise, dead wires, threshold), scored each time.

The physics of an event depends only on (preset, seed, index), the detector response on
:class:`~sparseseg.simulate.detector.Conditions`, so every row of the table sees the same
particles; only what the detector makes of them changes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .classes import CLASS_NAMES

CONDITIONS: list[tuple[str, dict[str, Any]]] = [
    ("nominal", {}),
    ("gain 0.5", {"gain": 0.5}),
    ("gain 0.7", {"gain": 0.7}),
    ("gain 1.5", {"gain": 1.5}),
    ("gain 2.0", {"gain": 2.0}),
    ("noise 2.5", {"noise_adc": 2.5}),
    ("noise 3.5", {"noise_adc": 3.5}),
    ("noise 4.5", {"noise_adc": 4.5}),
    ("dead +10%", {"dead_fraction_add": 0.10}),
    ("threshold 15", {"threshold": 15.0}),
    ("threshold 20", {"threshold": 20.0}),
]
"""(name, change to the preset's nominal conditions) for 2D presets."""

CONDITIONS_3D: list[tuple[str, dict[str, Any]]] = [
    ("nominal", {}),
    ("scale 0.5", {"gain": 0.5}),
    ("scale 0.7", {"gain": 0.7}),
    ("scale 1.5", {"gain": 1.5}),
    ("scale 2.0", {"gain": 2.0}),
]
"""3D volumes have no wire-plane effects: only the energy scale changes."""


def parse_gains(text: str | None, option: str = "--gains") -> list[float]:
    """``"0.5,2"`` -> [0.5, 2.0] (None or "" -> []); a ValueError with the message a command
    line prints otherwise."""
    if not text:
        return []
    try:
        gains = [float(g) for g in text.split(",")]
    except ValueError:
        raise ValueError(f"{option}: expected numbers separated by commas, got {text!r}") from None
    if any(not g > 0 for g in gains):
        raise ValueError(f"{option}: every value must be > 0, got {text!r}")
    return gains


def conditions_for(preset: str, change: dict[str, Any]):
    """The preset's nominal :class:`Conditions` with ``change`` applied (``dead_fraction_add``
    adds to the preset's dead-wire fraction)."""
    from .simulate.detector import default_conditions
    from .simulate.generator import PRESETS

    base = default_conditions(preset)
    change = dict(change)
    if "dead_fraction_add" in change:
        nominal = base.dead_fraction if base.dead_fraction is not None else PRESETS[preset].dead_fraction
        change["dead_fraction"] = nominal + change.pop("dead_fraction_add")
    return dataclasses.replace(base, **change)


def run(weights: str | None, preset: str = "uboone", n: int = 40, seed: int = 5151, precision: str = "auto",
        label_rule: str = "visible", only: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Score ``weights`` on ``n`` interactions of ``preset`` under every condition.

    Returns {"rows": [{"condition", "accuracy", "track_shower_accuracy", "efficiency": {...},
    "purity": {...}, "pixels"}], "nominal_accuracy", "worst_gain_accuracy", ...}.
    """
    from tqdm import tqdm

    from .infer import Predictor
    from .metrics import ConfusionAccumulator
    from .simulate import PRESETS, simulate_interaction

    if preset not in PRESETS:
        raise ValueError(f"robustness: unknown preset {preset!r}; valid choices: {', '.join(PRESETS)}")
    if n < 1:
        raise ValueError(f"robustness: -n must be >= 1, got {n}")
    table = CONDITIONS_3D if PRESETS[preset].ndim == 3 else CONDITIONS
    if only:
        names = [name for name, _ in table]
        bad = [o for o in only if o not in names]
        if bad:
            raise ValueError(f"robustness: unknown condition(s) {', '.join(bad)}; choose from {', '.join(names)}")
        table = [row for row in table if row[0] in only]
    predictor = Predictor(weights=weights, precision=precision)
    rows = []
    bar = tqdm(total=len(table) * n, desc="robustness", unit="event", disable=not progress)
    for name, change in table:
        cond = conditions_for(preset, change)
        acc = ConfusionAccumulator()
        for k in range(n):
            events = simulate_interaction(preset, seed, k, conditions=cond, label_rule=label_rule)
            for ev, (pred, _) in zip(events, predictor.predict(events)):
                acc.add_event(ev, pred)
            bar.update(1)
        s = acc.summary()
        rows.append({"condition": name, "change": change, "accuracy": s["accuracy"],
                     "track_shower_accuracy": s["track_shower_accuracy"], "efficiency": s["efficiency"],
                     "purity": s["purity"], "pixels": s["pixels"]})
    bar.close()
    res: dict[str, Any] = {"weights": weights, "preset": preset, "n": n, "seed": seed, "label_rule": label_rule,
                           "precision": predictor.precision, "rows": rows}
    by = {r["condition"]: r for r in rows}
    if "nominal" in by:
        nom = by["nominal"]["accuracy"]
        res["nominal_accuracy"] = nom
        gains = [r["accuracy"] for r in rows if r["condition"].startswith(("gain", "scale"))]
        if gains:
            res["worst_gain_accuracy"] = min(gains)
            res["worst_gain_drop"] = nom - min(gains)
    return res


def format_table(res: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s rows."""
    head = "| condition | 5-class acc. | track/shower acc. | " + " | ".join(f"{c} eff." for c in CLASS_NAMES) + " |"
    lines = [head, "|---|" + "---:|" * (2 + len(CLASS_NAMES))]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in res["rows"]:
        lines.append(f"| {r['condition']} | {fmt(r['accuracy'])} | {fmt(r['track_shower_accuracy'])} | "
                     + " | ".join(fmt(r["efficiency"][c]) for c in CLASS_NAMES) + " |")
    lines.append("")
    lines.append(f"{res['n']} `{res['preset']}` interactions, seed {res['seed']}, label rule {res['label_rule']}, "
                 f"precision {res['precision']}, weights {res['weights'] or 'shipped default'}.")
    if "worst_gain_drop" in res:
        lines.append(f"Worst accuracy over the gain/scale rows: {res['worst_gain_accuracy']:.3f} "
                     f"(nominal - {res['worst_gain_drop']:.3f}).")
    return "\n".join(lines)
