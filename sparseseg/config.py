"""Training configuration: defaults, YAML loading and validation.

A config is a plain nested dict with the sections below. Every key a user writes must be one
of these (an unknown key is an error, so typos never pass silently). Model keyword arguments
are checked by the model's builder.
"""
from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import fields
from typing import Any, Iterable

import yaml


def _weight_defaults() -> dict[str, Any]:
    from .weighting import WeightConfig

    w = WeightConfig()
    return {f.name: (list(v) if isinstance(v := getattr(w, f.name), tuple) else v) for f in fields(w)}


DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": "uresnet"},  # other keys go to the model builder
    "data": {
        "simulate": "crop512",  # simulator preset for on-the-fly training data, or null to read files
        "seed": 1,  # simulator seed of the training stream
        "train": None,  # HDF5 file(s) when not simulating
        "val": None,  # HDF5 file(s) for validation; null -> simulated with val_seed
        "val_seed": 1001,
        "val_images": 48,
        "planes": None,  # restrict to these planes, e.g. [Y]; null = all
        "num_workers": 1,
        "label_rule": "visible",  # label convention of simulated data: visible | legacy (sparseseg.simulate.labels)
        "hadronic": True,  # simulated pions and protons interact with argon nuclei (sparseseg.simulate.hadronic)
        "augment": None,  # detector conditions drawn per simulated interaction (AUGMENT_DEFAULTS); null = nominal
        "balance": False,  # event classifier (cvn): draw the training stream with equal numbers per class
    },
    "train": {
        "batch_size": 8,
        "max_steps": 1000,
        "optimizer": "adam",
        "lr": 1.0e-3,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "schedule": "cosine",
        "warmup_steps": 100,
        "min_lr_ratio": 0.02,
        "val_every": 250,
        "log_every": 10,
        "checkpoint_every": 250,
        "early_stopping": 0,
        "seed": 0,
        "threads": 0,
        "device": "cpu",
        "accumulate": 1,  # micro-batches of batch_size summed per optimizer step
        "precision": "auto",  # auto | fp32 | bf16 (bf16 activations and GEMMs; see train.resolve_precision)
        "init": None,  # checkpoint whose model weights start the run (fine-tuning); optimizer and step start fresh
        "ema": 0.0,  # decay of an exponential moving average of the weights, validated and saved as best.pt; 0 = off
    },
    "weights": _weight_defaults(),  # sparseseg.weighting.WeightConfig's (the shipped 2D recipe)
}

AUGMENT_DEFAULTS: dict[str, Any] = {
    "probability": 0.8,  # fraction of simulated interactions with drawn conditions (the rest: nominal)
    "gain": [0.5, 2.0],  # overall gain, log-uniform, before noise and threshold
    "plane_gain_spread": 0.15,  # log-normal sigma of an extra per-plane gain
    "noise": [2.0, 4.5],  # white-noise sigma (ADC), uniform
    "coherent": [0.0, 2.5],  # coherent-noise sigma (ADC), uniform
    "dead_bands": [0, 2],  # extra bands of dead wires per plane, uniform integer
    "threshold": [10.0, 20.0],  # zero-suppression threshold (ADC): half at the low end, half uniform
}
"""Keys of ``data.augment`` (a mapping overrides some of them; ``true`` takes them all)."""

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in base and where != "model":
            known = ", ".join(sorted(base))
            raise ValueError(f"config: unknown key {where}.{key}; known keys of {where}: {known}")
        out[key] = value
    return out


SEED_MAX = 2**63 - 1
"""Largest seed accepted (seeds are stored as 64-bit integers; numpy and torch take them all)."""

_TYPE_NAMES = {bool: "true or false (bool)", int: "an integer (int)", float: "a number (float or int)",
               str: "a string (str)"}


def _type_error(where: str, expected: type, value: Any) -> ValueError:
    hint = ""
    if expected is float and isinstance(value, str):
        try:
            float(value)
            hint = f"; YAML reads {value} as a string, write it with a decimal point (e.g. 1.0e-3)"
        except ValueError:
            pass
    return ValueError(f"config: {where} must be {_TYPE_NAMES[expected]}, got {value!r} "
                      f"({type(value).__name__}){hint}")


NULLABLE = {"data.simulate"}
"""Keys with a scalar default that may also be null."""


def _check_scalar_types(values: dict, defaults: dict, where: str) -> None:
    """Values of keys with a bool, int, float or str default must have that type (bools are
    not integers here, and floats accept integers)."""
    for key, default in defaults.items():
        value = values.get(key, default)
        name = f"{where}.{key}"
        if value is None and name in NULLABLE:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _type_error(name, bool, value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(name, int, value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _type_error(name, float, value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise _type_error(name, str, value)


def _check_pair(name: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, kind) for v in value)):
        what = "integers" if integer else "numbers"
        raise ValueError(f"config: {name} must be a list of two {what} [low, high], got {value!r}")
    if value[0] > value[1]:
        raise ValueError(f"config: {name} must be [low, high] with low <= high, got {value!r}")


def _check_files(name: str, value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"config: {name} must be a file name, a list of file names or null, got {value!r}")


def _check_other_types(cfg: dict) -> None:
    """Keys whose default is null, a list or a mapping."""
    m, d, t, w = cfg["model"], cfg["data"], cfg["train"], cfg["weights"]
    if not isinstance(m.get("name"), str):
        raise _type_error("model.name", str, m.get("name"))
    if d["simulate"] is not None and not isinstance(d["simulate"], str):
        raise ValueError(f"config: data.simulate must be a simulator preset name or null, got {d['simulate']!r}")
    _check_files("data.train", d["train"])
    _check_files("data.val", d["val"])
    planes = d["planes"]
    if planes is not None and (not isinstance(planes, list) or not all(isinstance(p, str) for p in planes)):
        raise ValueError(f"config: data.planes must be a list of plane names (e.g. [Y]) or null, got {planes!r}")
    if t["init"] is not None and not isinstance(t["init"], str):
        raise ValueError(f"config: train.init must be a checkpoint file name or null, got {t['init']!r}")
    for where, value in (("train.seed", t["seed"]), ("data.seed", d["seed"]), ("data.val_seed", d["val_seed"])):
        _check_seed(where, value)
    for where, value in (("train.threads", t["threads"]), ("data.num_workers", d["num_workers"]),
                         ("train.early_stopping", t["early_stopping"]), ("train.warmup_steps", t["warmup_steps"]),
                         ("data.val_images", d["val_images"])):
        if value < 0:
            raise ValueError(f"config: {where} must be 0 or more, got {value!r}")
    _check_pair("weights.cluster_clip", w["cluster_clip"])
    cv = w["class_values"]
    if cv is not None and (not isinstance(cv, list)
                           or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in cv)):
        raise ValueError(f"config: weights.class_values must be a list of numbers (one per class) or null, got {cv!r}")
    plane = w["plane"]
    if not isinstance(plane, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in plane.values()):
        raise ValueError(f"config: weights.plane must be a mapping plane -> number (e.g. {{Y: 1.5}}), got {plane!r}")


def _check_seed(name: str, value: Any) -> None:
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"config: {name} must be an integer from 0 to 2**63 - 1, got {value!r}")


def resolve(user: dict | None) -> dict:
    """Merge a user config over the defaults and validate it. Returns a new dict."""
    user = user or {}
    if not isinstance(user, dict):
        raise ValueError(f"config: expected a mapping at the top level, got {type(user).__name__}")
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config: unknown section(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    cfg = {}
    for section, defaults in DEFAULTS.items():
        value = user.get(section) or {}
        if not isinstance(value, dict):
            raise ValueError(f"config: section {section} must be a mapping, got {type(value).__name__}")
        cfg[section] = _merge(defaults, value, section)
    for section, defaults in DEFAULTS.items():
        _check_scalar_types(cfg[section], defaults, section)
    _check_other_types(cfg)
    t, d = cfg["train"], cfg["data"]
    if t["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"config: train.optimizer {t['optimizer']!r} unknown; expected one of {', '.join(OPTIMIZERS)}")
    if t["schedule"] not in SCHEDULES:
        raise ValueError(f"config: train.schedule {t['schedule']!r} unknown; expected one of {', '.join(SCHEDULES)}")
    if t["precision"] not in PRECISIONS:
        raise ValueError(f"config: train.precision {t['precision']!r} unknown; expected one of {', '.join(PRECISIONS)}")
    for key in ("batch_size", "max_steps", "val_every", "log_every", "checkpoint_every", "accumulate"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise ValueError(f"config: train.{key} must be a positive integer, got {t[key]!r}")
    if not 0.0 <= t["ema"] < 1.0:
        raise ValueError(f"config: train.ema must be 0 (off) or a decay in (0, 1), e.g. 0.998, got {t['ema']!r}")
    if d["balance"] and cfg["model"]["name"] != "cvn":
        raise ValueError(f"config: data.balance applies to the event classifier (model.name: cvn) only, "
                         f"not to {cfg['model']['name']!r}; remove it")
    if d["label_rule"] not in ("visible", "legacy"):
        raise ValueError(f"config: data.label_rule {d['label_rule']!r} unknown; expected visible or legacy")
    if d["augment"] is True:
        d["augment"] = copy.deepcopy(AUGMENT_DEFAULTS)
    elif d["augment"]:
        if not isinstance(d["augment"], dict):
            raise ValueError(f"config: data.augment must be a mapping, true or null, got {d['augment']!r}")
        d["augment"] = _merge(AUGMENT_DEFAULTS, d["augment"], "data.augment")
    if d["augment"]:
        a = d["augment"]
        _check_scalar_types(a, AUGMENT_DEFAULTS, "data.augment")
        for key in ("gain", "noise", "coherent", "threshold"):
            _check_pair(f"data.augment.{key}", a[key])
        _check_pair("data.augment.dead_bands", a["dead_bands"], integer=True)
    else:
        d["augment"] = None
    if d["simulate"] is None and not d["train"]:
        raise ValueError("config: set data.simulate to a simulator preset or data.train to HDF5 file(s)")
    return cfg


PRECISIONS = ("auto", "fp32", "bf16")


def load(path: str | Path) -> dict:
    """Read a YAML config file and resolve it (see :func:`resolve`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        user = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config {path}: not valid YAML ({err})") from None
    if user is None:
        # an empty file would otherwise train the defaults (a truncated or mis-written config
        # must not start a run that looks like the intended one)
        raise ValueError(f"config {path}: the file is empty (write at least one section, e.g. "
                         "'model: {name: uresnet}'; configs/*.yaml are complete examples)")
    try:
        return resolve(user)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# --------------------------------------------------------------------------- option checks of the model builders
def config_from(cls: type, label: str, kwargs: dict[str, Any]):
    """``cls(**kwargs)`` for a config dataclass; ``ValueError`` naming unknown options first."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"{label}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**kwargs)


def require_positive(obj: Any, names: Iterable[str], prefix: str) -> None:
    """``ValueError`` "<prefix><name> must be >= 1, got X" for the first attribute below 1."""
    for name in names:
        if int(getattr(obj, name)) < 1:
            raise ValueError(f"{prefix}{name} must be >= 1, got {getattr(obj, name)}")
