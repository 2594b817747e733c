"""Full-image inference: segment every plane of every event of HDF5 files, without cropping.

Output files have the input's layout plus two per-pixel datasets: ``pred`` (uint8 class
code) and ``scores`` (float16 softmax, 5 per pixel); truth labels are copied when present.
Outputs are written through a crash-safe ``<output>.partial`` folder of segments assembled at the
end, so a rerun after an interruption (a crash, kill -9, eviction, a full disk) resumes where it
stopped and gives the same file as an uninterrupted run; the partial records the input, weights
and settings, and a rerun with other ones is refused.
"""
from __future__ import annotations

import gc
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .classes import CLASS_NAMES, class_index
from .memory import peak_rss_mb

from .registry import default_weights, sha256, shipped_for

DEFAULT_WEIGHTS = {2: default_weights(2), 3: default_weights(3)}
"""Default segmentation weights per dimension (:mod:`sparseseg.registry`)."""
EXTRAS = {"pred": ("uint8", ()), "scores": ("float16", (len(CLASS_NAMES),))}


def parse_min_scores(items: list[str] | None) -> dict[int, float]:
    """``["delta=0.5", "Michel=0.3"]`` -> {3: 0.5, 4: 0.3}."""
    out: dict[int, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--min-score {item!r}: expected CLASS=SCORE, e.g. delta=0.5")
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"--min-score {item!r}: {value!r} is not a number") from None
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"--min-score {item!r}: score must be within 0..1")
        out[class_index(name)] = score
    return out


def biased_argmax(scores: np.ndarray, class_bias=None) -> np.ndarray:
    """argmax over classes of log(score) + class_bias (class_bias None or zeros: plain argmax)."""
    if class_bias is None or not np.any(class_bias):
        return scores.argmax(axis=1)
    return (np.log(np.maximum(scores, 1e-30)) + np.asarray(class_bias, np.float32)[None, :]).argmax(axis=1)


BIAS_OBJECTIVES = ("macro-f1", "accuracy")
"""What :func:`choose_class_bias` maximises."""


def choose_class_bias(scores: np.ndarray, labels: np.ndarray, grid=np.arange(-1.0, 3.01, 0.25), rounds: int = 3,
                      objective: str = "macro-f1", min_purity: float = 0.8):
    """Per-class log-score offsets (C,) for (scores (N, C), labels (N,)); MIP (code 1) stays at
    0. Coordinate ascent over ``grid``, ``rounds`` passes. Returns (offsets, objective value).

    ``objective``: "macro-f1" maximises the macro-averaged F1 (rare classes weigh as much as
    MIP); "accuracy" maximises the pixel accuracy, subject to no class's purity falling below
    min(``min_purity``, its purity without offsets), so a rare class is not bought with
    false positives."""
    from .metrics import confusion_matrix

    if objective not in BIAS_OBJECTIVES:
        raise ValueError(f"objective {objective!r} unknown; expected one of {', '.join(BIAS_OBJECTIVES)}")
    c = scores.shape[1]
    logp = np.log(np.maximum(scores, 1e-30))

    def confusion(bias):
        return confusion_matrix(labels, (logp + bias[None, :]).argmax(1), c).astype(np.float64)

    def purity(cm):
        return np.where(cm.sum(0) > 0, np.diag(cm) / np.maximum(cm.sum(0), 1), np.nan)

    floor = np.fmin(purity(confusion(np.zeros(c))), min_purity)  # NaN (never predicted): min_purity

    def value(bias):
        cm = confusion(bias)
        tp = np.diag(cm)
        if objective == "macro-f1":
            f1 = 2 * tp / np.maximum(cm.sum(0) + cm.sum(1), 1)
            return float(f1[cm.sum(1) > 0].mean())
        pur = purity(cm)
        if np.any(pur < floor - 1e-12):
            return -np.inf
        return float(tp.sum() / max(cm.sum(), 1))

    bias = np.zeros(c)
    best = value(bias)
    for _ in range(rounds):
        for k in [k for k in range(c) if k != 1]:
            for v in grid:
                trial = bias.copy()
                trial[k] = v
                f = value(trial)
                if f > best + 1e-6:
                    best, bias = f, trial
    return bias, best


def apply_min_scores(scores: np.ndarray, min_scores: dict[int, float], class_bias=None) -> np.ndarray:
    """Argmax class per pixel (of log score + ``class_bias``, the offsets shipped with the
    weights); a pixel whose best class c has score < min_scores[c] takes its best other class
    instead (MicroBooNE's SparseSSNet talk, R. Itay, CTD 2020: "delta score > 0.5")."""
    pred = biased_argmax(scores, class_bias)
    for c, threshold in min_scores.items():
        weak = (pred == c) & (scores[:, c] < threshold)
        if weak.any():
            other = scores[weak].copy()
            other[:, c] = -np.inf
            pred[weak] = other.argmax(axis=1)
    return pred.astype(np.uint8)


def parse_planes(text: str | None, option: str = "--planes") -> tuple[str, ...] | None:
    """``"U,V"`` -> ("U", "V"); None or "" -> None (every plane)."""
    if text is None:
        return None
    names = [t.strip() for t in str(text).split(",")]
    if not text.strip() or any(not n for n in names):
        raise ValueError(f"{option} {text!r}: expected comma-separated plane names, e.g. U,V or Y")
    return tuple(dict.fromkeys(names))


def _entry_plane(f, i: int) -> str:
    """The plane name of file entry ``i`` (see :func:`sparseseg.event.plane_name`), without
    reading its pixels."""
    from .event import plane_name

    name = str(f.planes[i]) if f.planes[i] else None
    if name is None and hasattr(f, "meta"):
        name = f.meta(i).get("plane")  # a plane name too long for its column is kept in the JSON
    return plane_name(name, f.D)


def _selected_entries(path: str, f, planes) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Entries of ``f`` whose plane is one of ``planes`` (all when None), and the selection as
    the file spells the names; ``ValueError`` when a name is not in the file."""
    if planes is None:
        return np.arange(len(f)), None
    names = [_entry_plane(f, i) for i in range(len(f))]
    spelled = {n.upper(): n for n in names}
    missing = [q for q in planes if q.upper() not in spelled]
    if missing:
        raise ValueError(f"{path}: --planes {','.join(planes)}: no image of plane {', '.join(missing)} "
                         f"(the file holds planes {', '.join(dict.fromkeys(names)) or 'none'})")
    wanted = {q.upper() for q in planes}
    return (np.array([i for i, n in enumerate(names) if n.upper() in wanted], dtype=np.int64),
            tuple(spelled[q.upper()] for q in planes))


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/10"`` -> (2, 10): this job handles files i with i % 10 == 2."""
    if not text:
        return 0, 1
    k, sep, n = text.partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N with integers, e.g. 0/4") from None
    if not sep or n_i < 1 or not 0 <= k_i < n_i:
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N")
    return k_i, n_i


@dataclass
class Predictor:
    """Loads models lazily per dimension and segments lists of events."""

    weights: str | None = None
    device: str = "cpu"
    min_scores: dict[int, float] = field(default_factory=dict)
    precision: str = "auto"
    """auto, fp32 or bf16 for the sparse UResNet on CPU (:mod:`sparseseg.models.sparse_infer`):
    bf16 keeps activations and runs gathers and GEMMs in bfloat16 (the GEMMs accumulate in
    float32); auto picks bf16 where the CPU has native bfloat16 instructions (AVX512-BF16 or
    AMX), fp32 elsewhere and on GPUs. ``sparseseg bench`` prints bf16's agreement with fp32."""
    use_class_bias: bool = True
    """Apply the per-class offsets stored with the weights (``class_bias``); False: plain argmax."""
    flips: bool = False
    """Average each sparse UResNet's scores over the 2^D mirror images of the input (every
    subset of the axes reversed; the mean of log-softmax, renormalised): +0.002 pixel accuracy
    on held-out uboone images and pilarnet volumes, for 2^D forwards per event. The network is
    not mirror symmetric by construction, the physics is, so the average is a small ensemble
    without other weights."""
    model_name: str | None = None
    """None: whatever the weights hold; "patch-cnn" (or "uresnet") also checks the weights
    hold that model. No patch-cnn weights are shipped: patch-cnn needs ``weights``."""
    _models: dict = field(default_factory=dict)
    _bias: dict = field(default_factory=dict)
    _task: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .devices import check_device

        check_device(self.device, "device", need_cuda=False)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision {self.precision!r} unknown; expected auto, fp32 or bf16")
        cpu = torch.device(self.device).type == "cpu"
        if self.precision == "auto":
            from .models.sparse_infer import cpu_has_bf16

            self.precision = "bf16" if cpu and cpu_has_bf16() else "fp32"
        if self.precision == "bf16" and not cpu:
            raise ValueError(f"precision bf16 is for CPU inference; on {self.device} use fp32 (or auto)")

    def model(self, dim: int):
        if dim not in self._models:
            from .checkpoint import build_from, check_dim, load
            from .devices import check_device

            check_device(self.device, "device", fix="device='cpu'")

            if self.weights:
                path = Path(self.weights)
            else:
                path = _weights_path(self, dim)
                if not path.exists():
                    raise FileNotFoundError(f"no shipped {dim}D weights at {path}; pass --weights PATH")
            ckpt = load(path)
            bias = ckpt.get("class_bias")
            self._bias[dim] = np.asarray(bias, np.float32) if bias is not None and self.use_class_bias else None
            name = (ckpt["config"].get("model") or {}).get("name")
            if self.model_name and name != self.model_name:
                raise ValueError(f"weights file {path}: holds model {name!r}, not {self.model_name!r}")
            from .models import FAMILIES

            spec = FAMILIES.get(name)
            if spec is not None and not (spec.sparse or spec.task == "patch"):
                raise ValueError(f"weights file {path}: holds model {name!r}, which does not segment events; "
                                 "predict takes uresnet (sparse) or patch-cnn weights")
            self._task[dim] = spec.task if spec is not None else None
            if name == "patch-cnn":
                if dim != 2:
                    raise ValueError(f"weights file {path}: patch-cnn works on 2D planes, the input events are {dim}D")
                model = build_from(ckpt, path, self.device, "patch-cnn").eval()
            else:
                from .models.uresnet import cpu_path

                model = build_from(ckpt, path, self.device).eval()
                check_dim(model, path, dim)
                path_kind = cpu_path(self.device, dim, self.precision, grad=False)
                if path_kind == "infer":
                    from .models.sparse_infer import FastUResNet

                    model = FastUResNet(model, self.precision)
                    gc.collect()  # the modules' weights: spconv's layers sit in reference cycles
                elif path_kind == "graph":
                    model.backend = "graph"
            self._models[dim] = model
        return self._models[dim]

    @torch.no_grad()
    def scores(self, events) -> list[np.ndarray]:
        """Softmax scores (N_i, 5) float32 for each event, one forward for the whole list."""
        from .models.uresnet import collate, split_by_batch

        model = self.model(events[0].ndim)
        out = [np.zeros((len(ev), len(CLASS_NAMES)), np.float32) for ev in events]
        if self._task.get(events[0].ndim) == "patch":
            from .patches import score_event, to_class_scores

            return [to_class_scores(score_event(model, ev, device=self.device)) if len(ev) else o
                    for ev, o in zip(events, out)]
        keep = [i for i, ev in enumerate(events) if len(ev)]
        if keep:
            idx, feats, shape, b = collate([events[i] for i in keep], events[0].ndim)
            probs = torch.softmax(self._log_scores(model, idx, feats, shape), dim=1)
            for i, part in zip(keep, split_by_batch(probs, idx, b)):
                out[i] = part.cpu().numpy()
        return out

    def _log_scores(self, model, idx: torch.Tensor, feats: torch.Tensor, shape) -> torch.Tensor:
        """log-softmax (N, C) of one batch; with ``flips``, the mean over its mirror images."""
        if not self.flips:
            return torch.log_softmax(model(idx, feats, shape).float(), dim=1)
        dim = idx.shape[1] - 1
        total = None
        for axes in itertools.chain.from_iterable(itertools.combinations(range(dim), r) for r in range(dim + 1)):
            mirrored = idx.clone()
            for a in axes:  # coordinate x -> size - 1 - x along axis a (column 0 is the batch)
                mirrored[:, 1 + a] = int(shape[a]) - 1 - idx[:, 1 + a]
            part = torch.log_softmax(model(mirrored, feats, shape).float(), dim=1)
            total = part if total is None else total + part
        return total / 2 ** dim

    def input_norm(self, dim: int) -> str:
        """The input normalisation of this dimension's model ("none" or "mip")."""
        config = getattr(self.model(dim), "config", None)  # UResNet and its inference engine; None: patch-cnn
        return getattr(config, "input_norm", "none") or "none"

    def class_bias(self, dim: int):
        """The per-class log-score offsets shipped with this dimension's weights (None if none)."""
        self.model(dim)
        return self._bias.get(dim)

    def predict(self, events) -> list[tuple[np.ndarray, np.ndarray]]:
        """(pred uint8 (N,), scores float32 (N, 5)) per event. The predicted class is the argmax
        of log score + the weights' ``class_bias`` (when they ship one), then ``min_scores``."""
        if not events:
            return []
        bias = self.class_bias(events[0].ndim)
        return [(apply_min_scores(s, self.min_scores, bias), s) for s in self.scores(events)]


SIMULATOR_FEATURE_MEDIAN = 60.0
"""Typical median feature value of the simulator's images and volumes (ADC-like charge; a MIP
gives ~58 per pixel): the scale models without ``input_norm`` were trained on."""
MAX_TRAINED_SIZE = {2: 3456, 3: 768}
"""Largest image side (2D: wires or downsampled ticks of a MicroBooNE plane) and volume side
(3D) of the data the shipped weights were made for."""
MAX_TRAINED_OCCUPANCY = {2: 0.05, 3: 0.01}
"""Occupancy far above anything in the training data (2D views: 0.3-2 %)."""


def input_warnings(events, input_norm: str, dim: int) -> list[str]:
    """One-line warnings for inputs unlike the data the weights were trained on: feature scale
    (for weights without ``input_norm``; e.g. MeV-scale PILArNet-M voxels given to weights
    trained on ADC), image size, occupancy. ``events`` is a sample (e.g. the first event)."""
    out: list[str] = []
    feats = [ev.features[:, 0] for ev in events if len(ev)]
    if input_norm == "none" and feats:
        median = float(np.median(np.concatenate(feats)))
        if not SIMULATOR_FEATURE_MEDIAN / 5 <= median <= SIMULATOR_FEATURE_MEDIAN * 5:
            out.append(f"feature values have median {median:.3g}, but these weights were trained on ADC-like charge "
                       f"with median ~{SIMULATOR_FEATURE_MEDIAN:g} (a MIP ~58); MeV-scale inputs such as PILArNet-M "
                       "voxels are outside their training data: rescale the features or use weights trained on them")
    big = max((max(ev.shape) for ev in events), default=0)
    if big > 1.5 * MAX_TRAINED_SIZE[dim]:
        shape = next(" x ".join(map(str, ev.shape)) for ev in events if max(ev.shape) == big)
        out.append(f"an image of {shape} is far larger than the data the weights were made for (sides up to "
                   f"{MAX_TRAINED_SIZE[dim]}; MicroBooNE planes are 1008 ticks, downsampled by 6, x 2400/3456 wires): "
                   "time and memory grow with the image; downsample the ticks first")
    occ = max((ev.occupancy for ev in events), default=0.0)
    if occ > MAX_TRAINED_OCCUPANCY[dim]:
        out.append(f"an image has {100 * occ:.1f} % of its pixels above threshold, far above the training data "
                   f"(<= {100 * MAX_TRAINED_OCCUPANCY[dim]:g} %): is the threshold applied (ADC >= 10) and the "
                   "pedestal subtracted? time and memory grow with the pixel count")
    return out


MAX_GROUP_IMAGES = 8
"""Most images segmented in one forward pass by :func:`predict_file`: the planes of one
interaction go together, but a file without event ids (or with one id for all its images)
is split into batches of this many, so memory does not grow with the file."""


def _groups(event_ids: np.ndarray, start: int, cap: int | None = None) -> list[list[int]]:
    """Consecutive entries sharing an event id (the planes of one interaction), from ``start``,
    at most ``cap`` (default :data:`MAX_GROUP_IMAGES`) entries per group."""
    cap = MAX_GROUP_IMAGES if cap is None else int(cap)
    groups: list[list[int]] = []
    for i in range(start, len(event_ids)):
        if groups and len(groups[-1]) < cap and event_ids[i] == event_ids[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


DEFAULT_CLIP = 300.0
"""Features above this (or the input file's ``adc_max`` attribute) are clipped before the model."""


def same_path(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name the same file (or would, once created)."""

    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _weights_path(predictor: Predictor, dim: int) -> Path:
    """The weights file the predictor uses for ``dim``-D events."""
    if predictor.weights:
        return Path(predictor.weights)
    if predictor.model_name == "patch-cnn":
        raise ValueError("no patch-cnn weights are shipped: train them (sparseseg config patch_cnn) "
                         "and pass --weights PATH")
    if dim not in DEFAULT_WEIGHTS:
        raise ValueError(f"no default weights for {dim}-D events; pass --weights PATH")
    return DEFAULT_WEIGHTS[dim]


def _input_identity(path: str, f) -> dict:
    """Size, modification time and a hash of the offsets and attributes of an input file."""
    import hashlib
    import json

    st = os.stat(path)
    offsets = getattr(f, "offsets", None)  # a PILArNet-M file has none (its size and mtime stand for it)
    h = hashlib.sha256(np.ascontiguousarray(offsets if offsets is not None else [len(f)], dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(f.event_ids, dtype=np.int64).tobytes())
    h.update(json.dumps(f.attrs, sort_keys=True, default=str).encode())
    return {"name": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def _describe(f, i: int) -> str:
    eid = int(f.event_ids[i])
    parts = [f"event {i}"]
    if eid != np.iinfo(np.int64).min:
        parts.append(f"event id {eid}")
    if f.planes[i]:
        parts.append(f"plane {f.planes[i]}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _clip_value(f) -> float:
    value = f.attrs.get("adc_max")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0:
        return float(value)
    return DEFAULT_CLIP


def _checked_features(path: str, f, i: int, ev, clip: float):
    """``ev`` with its features checked (finite, >= 0) and clipped at ``clip``; (event, clipped count)."""
    import copy

    feats = ev.features
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).sum())
        raise ValueError(f"{path}: {_describe(f, i)} has {bad} non-finite feature value(s) (NaN or inf); "
                         "features must be finite ADC values >= 0")
    if len(feats) and feats.min() < 0:
        bad = int((feats < 0).sum())
        raise ValueError(f"{path}: {_describe(f, i)} has {bad} negative feature value(s) (min {float(feats.min()):g}); "
                         "features must be finite ADC values >= 0")
    over = feats > clip
    n_over = int(over.sum())
    if not n_over:
        return ev, 0
    clipped = copy.copy(ev)
    object.__setattr__(clipped, "features", np.minimum(feats, np.float32(clip)))
    return clipped, n_over


def predict_file(path: str, output: str, predictor: Predictor, progress: bool = True, *,
                 restart: bool = False, warn=None, command: str | None = None, planes=None) -> dict:
    """Segment every image of ``path`` (or, with ``planes``, those of these planes) into ``output``.

    The output is written through a crash-safe ``<output>.partial`` folder
    (:class:`~sparseseg.io.EventWriter`): a rerun after an interruption resumes after the last
    saved segment and gives the same file as an uninterrupted run, provided the input, the
    weights and the settings are the same (they are recorded; a difference raises
    ``ValueError`` naming it). ``restart=True`` discards a partial output first.

    ``planes`` (e.g. ``("Y",)``, names matched without regard to case) segments and writes only
    the images of those planes; the others are skipped and counted in the result's
    ``skipped``. The selection is part of the output's identity (a resume with another one is
    refused) and is recorded in its ``planes`` attribute. A name the file does not hold raises
    ``ValueError``.

    Features are checked at the boundary: non-finite or negative values raise ``ValueError``
    naming the event; values above the clip (the file's ``adc_max`` attribute, else 300) are
    clipped for the model, reported once per file through ``warn`` (default
    :func:`warnings.warn`) and counted in the result's ``clipped``. Non-finite model scores
    raise ``ValueError`` before anything of that event is written.

    Provenance (root attributes of the output, shown by ``sparseseg info``): ``weights_name``
    (registry name, or "" for other weights), ``weights_file``, ``weights_sha256``,
    ``sparseseg_version``, ``precision``, ``flips`` ("yes" when mirror images were averaged),
    ``min_scores``, ``class_bias``, ``input_file``,
    ``input_sha256`` (hash of the input's offsets, event ids and attributes) and ``command``
    (``command``, the command line; a resumed run keeps the first run's).
    """
    import warnings

    from tqdm import tqdm

    from . import __version__
    from .io import EventWriter, open_event_file
    from .io import RESERVED_ATTRS

    if same_path(path, output):
        raise ValueError(f"-o {output}: is the input file {path}; choose another output name")
    if warn is None:
        def warn(message: str) -> None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
    t0 = time.perf_counter()
    times: list[float] = []
    clipped_total = 0
    with open_event_file(path) as f:
        attrs = {k: v for k, v in f.attrs.items()
                 if isinstance(v, (int, float, str)) and k not in RESERVED_ATTRS}
        if f.attrs.get("format") == "pilarnet-m":
            attrs["source_format"] = "pilarnet-m"
        attrs["source_file"] = str(Path(path).name)
        attrs["min_scores"] = ";".join(f"{CLASS_NAMES[c]}={s}" for c, s in sorted(predictor.min_scores.items()))
        attrs["precision"] = predictor.precision
        attrs["flips"] = "yes" if predictor.flips else "no"
        identity = {"command": "predict", "input": _input_identity(path, f), "precision": predictor.precision,
                    "flips": bool(predictor.flips),
                    "min_scores": attrs["min_scores"], "model": predictor.model_name,
                    "class_bias": getattr(predictor, "use_class_bias", None), "sparseseg": __version__}
        attrs["sparseseg_version"] = __version__
        attrs["input_file"] = os.path.abspath(path)
        attrs["input_sha256"] = identity["input"]["sha256"]
        if len(f):
            predictor.model(f.D)  # fail early on missing or mismatched weights
            wpath = _weights_path(predictor, f.D)
            identity["weights_sha256"] = sha256(wpath)
            shipped = shipped_for(wpath)
            attrs["weights_name"] = shipped.name if shipped else ""
            attrs["weights_file"] = os.path.abspath(wpath)
            attrs["weights_sha256"] = identity["weights_sha256"]
            bias = predictor.class_bias(f.D)
            attrs["class_bias"] = "" if bias is None else ";".join(
                f"{CLASS_NAMES[c]}={float(b):g}" for c, b in enumerate(bias) if b)
        if command:
            attrs["command"] = command
        order, chosen = _selected_entries(path, f, planes)
        if chosen is not None:
            attrs["planes"] = identity["planes"] = ",".join(chosen)
        clip = _clip_value(f)
        with EventWriter(output, extras=EXTRAS, attrs=attrs, resume=not restart, identity=identity) as w:
            start = w.n_done
            bar = tqdm(total=len(order), initial=start, desc=Path(path).name, unit="image", disable=not progress)
            for k, group in enumerate(_groups(f.event_ids[order], start)):
                rows = [int(order[j]) for j in group]
                events = [f[i] for i in rows]
                if k == 0:
                    for message in input_warnings(events, predictor.input_norm(f.D), f.D):
                        warn(f"{path}: {message}")
                model_events = []
                for i, ev in zip(rows, events):
                    ev_in, n_over = _checked_features(path, f, i, ev, clip)
                    if n_over and not clipped_total:
                        warn(f"{path}: {_describe(f, i)} has {n_over} feature value(s) above {clip:g} "
                             f"(the {'adc_max attribute' if clip != DEFAULT_CLIP else 'default clip'}); "
                             "clipped for the model (later ones are counted, not reported)")
                    clipped_total += n_over
                    model_events.append(ev_in)
                tic = time.perf_counter()
                results = predictor.predict(model_events)
                times.append(time.perf_counter() - tic)
                for i, (pred, scores) in zip(rows, results):
                    if not np.isfinite(scores).all():
                        bad = int((~np.isfinite(scores)).any(axis=1).sum())
                        raise ValueError(f"{path}: the model gave non-finite scores for {bad} pixel(s) of "
                                         f"{_describe(f, i)}; nothing of it was written")
                for ev, (pred, scores) in zip(events, results):
                    w.append(ev, extras={"pred": pred, "scores": scores.astype(np.float16)})
                bar.update(len(rows))
            bar.close()
            resumed = start
    return {"input": path, "output": output, "images": len(order), "skipped": len(f) - len(order),
            "planes": None if chosen is None else list(chosen), "resumed_from": resumed,
            "events": len(times), "time_per_event_s": float(np.mean(times)) if times else 0.0,
            "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "clipped": clipped_total,
            "clip": clip}


def output_paths(inputs: list[str], output: str, shard: tuple[int, int]) -> list[tuple[str, str]]:
    """(input, output) pairs for this shard. One input: ``output`` is the file, unless it is an
    existing folder or ends with a path separator; several: ``output`` is a folder. A folder
    receives ``<stem>.pred.h5`` per input."""
    k, n = shard
    for p in inputs:
        if not Path(p).exists():
            raise FileNotFoundError(f"input file {p} does not exist")

    if len(inputs) == 1 and not Path(output).is_dir() and not output.endswith(("/", os.sep)):
        pairs = [(inputs[0], output)]
    else:
        out_dir = Path(output)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"-o {output}: with several input files, -o must be a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        stems = [Path(p).stem for p in inputs]
        if len(set(stems)) != len(stems):
            raise ValueError("input files share a file name; their outputs would collide")
        pairs = [(p, str(out_dir / f"{Path(p).stem}.pred.h5")) for p in inputs]
    for _, out in pairs:
        for p in inputs:
            if same_path(p, out):
                raise ValueError(f"-o {output}: output {out} is the input file {p}; choose another output name")
    return [pair for i, pair in enumerate(pairs) if i % n == k]


@dataclass
class Evaluation:
    """Confusion matrices of prediction files: one accumulator per image dimension (2D wire
    planes and 3D volumes are never pooled into one matrix), each with its per-plane matrices."""

    by_dim: dict = field(default_factory=dict)
    """{2 or 3: :class:`~sparseseg.metrics.ConfusionAccumulator`}, for the dimensions present."""
    skipped: int = 0
    """Images left out by the plane selection."""
    skipped_planes: tuple = ()
    """Their plane names."""

    def summary(self) -> dict:
        """One dimension: its accumulator's summary plus ``dim``. Several: {"2D": ..., "3D": ...}."""
        sums = {f"{d}D": dict(acc.summary(), dim=d) for d, acc in sorted(self.by_dim.items())}
        return next(iter(sums.values())) if len(sums) == 1 else sums  # {} when nothing was read


def image_row(path: str, entry: int, event_id, plane: str, dim: int, pixels: int, cm: np.ndarray) -> dict:
    """One per-image record of an evaluation: where it is, its pixel counts, 5-class and
    track/shower accuracy and the efficiency of each class (None where undefined)."""
    from .metrics import summarize

    s = summarize(cm)
    row = {"file": str(path), "entry": int(entry), "event_id": event_id, "plane": plane, "dim": int(dim),
           "pixels": int(pixels), "scored_pixels": s["pixels"], "accuracy": s["accuracy"],
           "track_shower_accuracy": s.get("track_shower_accuracy")}
    row.update({f"efficiency_{name}": value for name, value in s["efficiency"].items()})
    return row


def evaluate(paths: list[str], planes=None, per_image=None) -> Evaluation:
    """Confusion matrices of prediction files with truth labels, one per dimension.

    Parameters
    ----------
    paths : list of str
        Prediction files from :func:`predict_file` (``pred`` dataset and truth labels).
    planes : sequence of str, optional
        Score only the images of these planes (names matched without regard to case);
        ``ValueError`` when one of them is in none of the files.
    per_image : callable, optional
        Called with :func:`image_row`'s dict for every scored image, in file order.
    """
    from .io import EventFile
    from .metrics import ConfusionAccumulator

    result = Evaluation()
    wanted = None if planes is None else {q.upper() for q in planes}
    if planes is not None:  # every name must be somewhere (checked before any pixel is read)
        seen: dict[str, str] = {}
        for path in paths:
            with EventFile(path) as f:
                for i in range(len(f)):
                    plane = _entry_plane(f, i)
                    seen.setdefault(plane.upper(), plane)
        missing = [q for q in planes if q.upper() not in seen]
        if missing:
            held = ", ".join(seen.values()) or "none"
            raise ValueError(f"--planes {','.join(planes)}: no image of plane {', '.join(missing)} in "
                             f"{', '.join(str(p) for p in paths)} (planes there: {held})")
    skipped: dict[str, None] = {}
    first_dim = None
    for path in paths:
        with EventFile(path) as f:
            first_dim = f.D if first_dim is None else first_dim
            if "pred" not in f.extra_names:
                raise ValueError(f"{path}: holds no predictions (no 'pred' dataset); make it with `sparseseg predict`")
            no_id = np.iinfo(np.int64).min
            for i in range(len(f)):
                plane = _entry_plane(f, i)
                if wanted is not None and plane.upper() not in wanted:
                    result.skipped += 1
                    skipped[plane] = None
                    continue
                ev = f[i]
                if ev.labels is None:
                    raise ValueError(f"{path}: has no truth labels to evaluate against")
                acc = result.by_dim.get(f.D)
                if acc is None:
                    acc = result.by_dim[f.D] = ConfusionAccumulator()
                cm = acc.add(ev.labels, f.read_extra(i, "pred"), plane=plane)
                if per_image is not None:
                    eid = int(f.event_ids[i])
                    per_image(image_row(path, i, None if eid == no_id else eid, plane, f.D, len(ev), cm))
    if not result.by_dim and planes is None and first_dim is not None:
        result.by_dim[first_dim] = ConfusionAccumulator()  # empty files still give an (empty) table
    result.skipped_planes = tuple(skipped)
    return result


def evaluate_files(paths: list[str]):
    """Confusion matrices (overall and per plane) of prediction files with truth labels, as
    one :class:`~sparseseg.metrics.ConfusionAccumulator`. The files must all hold images of one
    dimension (2D and 3D pixels are not pooled; :func:`evaluate` keeps them apart)."""
    result = evaluate(paths)
    if len(result.by_dim) > 1:
        raise ValueError(f"{', '.join(str(p) for p in paths)}: hold both 2D and 3D images; their pixels are not "
                         "pooled into one confusion matrix (use sparseseg.infer.evaluate, one matrix per dimension)")
    return next(iter(result.by_dim.values()))
