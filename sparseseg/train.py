"""Training loop for segmentation models: one machine or many (torchrun + DDP).

Data for step s is a pure function of (config, s, rank), so a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would have seen, and the weights come out the
same bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, checkpoint
from .atomic import write_text
from .classes import CLASS_NAMES, IGNORE, NUM_CLASSES
from .config import resolve
from .losses import weighted_cross_entropy
from .metrics import confusion_matrix, summarize
from .weighting import WeightConfig, pixel_weights


# --------------------------------------------------------------------------- data
def draw_conditions(augment: dict | None, preset: str, seed: int, k: int):
    """Detector conditions for simulated training interaction ``k`` under ``data.augment``
    (None: the preset's nominal detector). A pure function of (augment, seed, k), so a resumed
    run sees the same images. Gains are drawn log-uniformly (overall) times a log-normal
    per-plane spread; noise, coherent noise, dead-wire bands and the threshold uniformly
    (the threshold stays at 10 ADC in half of the augmented interactions)."""
    if not augment:
        return None
    import dataclasses

    from .simulate.detector import default_conditions

    rng = np.random.default_rng([int(seed), int(k), 0xA06])
    if rng.random() >= float(augment["probability"]):
        return None
    base = default_conditions(preset)
    lo, hi = augment["gain"]
    gain = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if preset == "pilarnet":  # 3D volumes: only the overall scale applies
        return dataclasses.replace(base, gain=gain)
    plane = tuple(float(x) for x in np.exp(rng.normal(0.0, float(augment["plane_gain_spread"]), 3)))
    thr_lo, thr_hi = augment["threshold"]
    threshold = float(rng.uniform(thr_lo, thr_hi)) if rng.random() < 0.5 else float(thr_lo)
    return dataclasses.replace(
        base, gain=gain, plane_gain=plane, noise_adc=float(rng.uniform(*augment["noise"])),
        coherent_noise_adc=float(rng.uniform(*augment["coherent"])),
        extra_dead_bands=int(rng.integers(augment["dead_bands"][0], augment["dead_bands"][1] + 1)),
        threshold=threshold)


class ImageSource:
    """Images by global index j: simulated on the fly, or read from HDF5 file(s)."""

    def __init__(self, data_cfg: dict, seed: int | None = None, files=None) -> None:
        self.preset = data_cfg["simulate"] if files is None else None
        self.seed = int(data_cfg["seed"] if seed is None else seed)
        self.planes = data_cfg.get("planes")
        self.augment = data_cfg.get("augment")
        self.label_rule = data_cfg.get("label_rule", "visible")
        self.files = files if files is not None else data_cfg["train"]
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._dataset = None
        self._perm: dict[int, np.ndarray] = {}
        if self.preset is not None:
            from .simulate import PRESETS

            if self.preset not in PRESETS:
                raise ValueError(f"config: data.simulate {self.preset!r} unknown; presets: {', '.join(PRESETS)}")
            self.views = 1 if self.preset == "pilarnet" else (len(self.planes) if self.planes else 3)

    def _interaction(self, k: int) -> list:
        if k not in self._cache:
            from .simulate import simulate_interaction

            cond = draw_conditions(self.augment, self.preset, self.seed, k)
            evs = simulate_interaction(self.preset, self.seed, k, conditions=cond, label_rule=self.label_rule)
            if self.planes:
                evs = [e for e in evs if e.plane in self.planes]
            self._cache[k] = evs
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return self._cache[k]

    def _files(self):
        if self._dataset is None:
            from .io import EventDataset

            files = [self.files] if isinstance(self.files, (str, Path)) else list(self.files)
            self._dataset = EventDataset([str(f) for f in files])
            if len(self._dataset) == 0:
                raise ValueError(f"training files {files} hold no events")
        return self._dataset

    def __len__(self) -> int:
        return len(self._files()) if self.preset is None else 2**62

    def get(self, j: int):
        if self.preset is not None:
            return self._interaction(j // self.views)[j % self.views]
        ds = self._files()
        n = len(ds)
        epoch, pos = divmod(j, n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
        return ds[int(self._perm[epoch][pos])]


class StepBatches(torch.utils.data.Dataset):
    """Item s = (events, pixel weights) of training step s on this rank."""

    def __init__(self, source: ImageSource, batch_size: int, weight_cfg: WeightConfig, rank: int = 0, world: int = 1,
                 accumulate: int = 1) -> None:
        self.source, self.batch_size, self.weight_cfg = source, batch_size, weight_cfg
        self.accumulate = int(accumulate)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int):
        """The ``accumulate`` micro-batches of step ``step``: a list of (events, weights)."""
        out = []
        for j in range(self.accumulate):
            first = ((step * self.world + self.rank) * self.accumulate + j) * self.batch_size
            events = [self.source.get(first + b) for b in range(self.batch_size)]
            out.append((events, pixel_weights(events, self.weight_cfg)))
        return out


def _identity(x):
    return x


def _labels(events) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([e.labels for e in events]).astype(np.int64))


def init_weights(model: torch.nn.Module, path) -> None:
    """Start from the model weights of checkpoint ``path`` (train.init); shapes must match."""
    ckpt = checkpoint.load(path)
    state = checkpoint.float_state(ckpt["model"])
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad or set(state) - set(own):
        raise ValueError(f"train.init: weights file {path} does not fit the configured model "
                         f"(first mismatch: {(bad or sorted(set(state) - set(own)))[0]}); "
                         "use the same model section as the run that wrote it")
    model.load_state_dict(state)


def accumulated_step(net, micro_batches, device, precision: str = "fp32", sync=None):
    """Forward and backward over micro-batches [(events, weights), ...] so that the summed
    gradient equals that of one batch holding all of them: each micro-batch's weighted mean
    loss is scaled by its share of the step's total pixel weight. ``sync`` (DDP's ``no_sync``)
    skips the gradient all-reduce on all but the last micro-batch.
    Returns (loss of the whole step, pixel accuracy)."""
    parts = []
    for events, weights in micro_batches:
        labels = _labels(events).to(device)
        w = torch.from_numpy(weights).to(device)
        parts.append((events, labels, w, float((w * (labels != IGNORE)).sum())))
    total = sum(p[3] for p in parts) or 1.0
    loss_sum, correct, counted = 0.0, 0, 0
    for i, (events, labels, w, share) in enumerate(parts):
        ctx = sync() if sync is not None and i < len(parts) - 1 else contextlib.nullcontext()
        with ctx:
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                logits = net(events)
            loss = weighted_cross_entropy(logits.float(), labels, w) * (share / total)
            loss.backward()
        loss_sum += float(loss.detach())
        with torch.no_grad():
            valid = labels != IGNORE
            correct += int((logits.argmax(1)[valid] == labels[valid]).sum())
            counted += int(valid.sum())
    return loss_sum, correct / max(1, counted)


def resolve_precision(precision: str, device, sparse: bool, dim: int = 2) -> str:
    """train.precision -> "fp32" or "bf16". ``auto`` is bf16 where training runs through the
    engine (2D sparse UResNet on CPU, see ``models.uresnet.cpu_path``) on a CPU with native
    bfloat16 (AVX512-BF16 or AMX: the engine's GEMMs run 2-3x faster there), and fp32
    elsewhere (GPUs, dense models, 3D, CPUs without it)."""
    if precision != "auto":
        return precision
    from .models.sparse_infer import cpu_has_bf16
    from .models.uresnet import cpu_path

    engine = sparse and cpu_path(device, dim, grad=True) == "engine"
    return "bf16" if engine and cpu_has_bf16() else "fp32"


def memory_record(device) -> dict[str, float]:
    """Peak memory so far: RSS on CPU; allocated and reserved on CUDA (peaks then reset, so
    each log interval reports its own)."""
    import resource

    rec = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.device(device).type == "cuda":
        rec["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rec["max_memory_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return rec


# --------------------------------------------------------------------------- schedule
def learning_rate(step: int, t: dict) -> float:
    base, warm, total = float(t["lr"]), int(t["warmup_steps"]), int(t["max_steps"])
    if warm and step < warm:
        return base * (step + 1) / warm
    if t["schedule"] == "constant":
        return base
    frac = (step - warm) / max(1, total - warm)
    floor = float(t["min_lr_ratio"])
    if t["schedule"] == "step":  # x0.1 at 60 % and 85 % of the run
        return base * (0.1 ** (int(frac >= 0.6) + int(frac >= 0.85)))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def make_optimizer(params, t: dict) -> torch.optim.Optimizer:
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"], nesterov=True)
    cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=t["lr"], weight_decay=t["weight_decay"])


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_events(model, events, batch_size: int = 8) -> dict[str, Any]:
    """Loss (unweighted CE), accuracy and per-class efficiency of ``model`` on ``events``."""
    was_training = model.training
    model.eval()
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    loss_sum, n_sum = 0.0, 0
    for i in range(0, len(events), batch_size):
        chunk = events[i : i + batch_size]
        logits = model(chunk)
        labels = _labels(chunk)
        valid = labels != IGNORE
        n = int(valid.sum())
        if n:
            loss_sum += float(weighted_cross_entropy(logits, labels)) * n
            n_sum += n
            cm += confusion_matrix(labels[valid].numpy(), logits.argmax(1)[valid].numpy())
    model.train(was_training)
    s = summarize(cm)
    return {
        "loss": loss_sum / max(1, n_sum),
        "accuracy": s["accuracy"] or 0.0,
        "track_shower_accuracy": s["track_shower_accuracy"] or 0.0,
        "efficiency": s["efficiency"],
    }


class SegmentationTask:
    """Pixel segmentation with the sparse models (see :mod:`sparseseg.tasks` for the interface)."""

    classes = list(CLASS_NAMES)

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    def batches(self, rank: int, world: int) -> StepBatches:
        t = self.cfg["train"]
        wcfg = WeightConfig(**{k: v for k, v in self.cfg["weights"].items()})
        return StepBatches(ImageSource(self.cfg["data"]), t["batch_size"], wcfg, rank, world, t["accumulate"])

    def step(self, net, micro_batches, device, precision="fp32", sync=None):
        return accumulated_step(net, micro_batches, device, precision, sync)

    def validation(self) -> list:
        d = self.cfg["data"]
        if d["val"]:
            vsrc = ImageSource(d, files=d["val"])
            return [vsrc._files()[i] for i in range(min(len(vsrc), d["val_images"]))]
        vsrc = ImageSource(dict(d, augment=None), seed=d["val_seed"])  # nominal detector
        return [vsrc.get(j) for j in range(d["val_images"])]

    def evaluate(self, model, events, batch_size: int = 8) -> dict[str, Any]:
        return evaluate_events(model, events, batch_size)


# --------------------------------------------------------------------------- the loop
def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _read_log(path: Path, upto_step: int) -> list[dict]:
    """Records of an existing metrics log with step <= upto_step (what a resume keeps)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("step", 0) <= upto_step:
            out.append(rec)
    return out


def _write_log(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of all parameters: equal digests mean bitwise-equal weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


FIXED_ON_RESUME = ("train.optimizer", "train.weight_decay")
"""Keys (besides the whole ``model`` section, and ``train.momentum`` for sgd) a resumed run
must keep: the saved weights and optimizer state (whose parameter groups carry weight decay
and momentum) would not mean the same under other values."""


def _flat_config(cfg: dict) -> dict[str, Any]:
    """``{"section.key": value}``; sections other than ``model`` filled from the defaults, so a
    checkpoint written before a key existed compares equal to a config using its default."""
    from .config import DEFAULTS

    flat: dict[str, Any] = {}
    for section in sorted(set(DEFAULTS) | set(cfg)):
        values = cfg.get(section) or {}
        if section in DEFAULTS and section != "model":
            values = {**DEFAULTS[section], **values}
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


_UNSET = object()


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between two resolved configs: ``{key: (old, new)}`` (a model
    key present in only one of them has the value ``None`` in the other)."""
    a, b = _flat_config(old), _flat_config(new)
    out = {}
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, _UNSET), b.get(key, _UNSET)
        if x != y:
            out[key] = (None if x is _UNSET else x, None if y is _UNSET else y)
    return out


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def check_resume_config(old: dict, new: dict, path) -> dict[str, tuple[Any, Any]]:
    """Compare the config saved in checkpoint ``path`` with the config of the resumed run.
    Changes of the model or of the optimizer's meaning raise ``ValueError`` naming them; the
    other changes are returned."""
    changes = config_changes(old, new)
    sgd = (new.get("train") or {}).get("optimizer") == "sgd"
    fixed = [k for k in changes
             if k.startswith("model.") or k in FIXED_ON_RESUME or (k == "train.momentum" and sgd)]
    if fixed:
        listed = ", ".join(f"{k} {_show(changes[k][0])} -> {_show(changes[k][1])}" for k in fixed)
        hint = "" if any(k.startswith("model.") for k in fixed) else \
            f" (train.init: {path} starts a new run from these weights)"
        raise ValueError(f"--resume: {path} cannot continue with changed {listed}: its model weights and "
                         f"optimizer state do not fit them; train into a new --out{hint}")
    return changes


class WeightAverage:
    """Exponential moving average of a model's weights and buffers (BatchNorm statistics
    included): after update n, ``average = d * average + (1 - d) * model`` with
    ``d = min(decay, (1 + n) / (10 + n))``, so early updates are not tied to the
    initialisation. Validation on the average is far less noisy than on the last step's
    weights when batches are small. ``self.model`` is the averaged copy (eval mode)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1.0 - d)
            else:
                avg.copy_(cur)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def train(config: dict, out: str | Path, resume: bool = False, max_steps: int | None = None,
          progress: bool = True, callback=None) -> dict[str, Any]:
    """Train the model described by ``config`` (see :mod:`sparseseg.config`) into folder ``out``.

    Writes ``checkpoint.pt`` (latest, atomic), ``best.pt`` (best validation accuracy; of the
    weight average when ``train.ema`` is set),
    ``metrics.jsonl`` and ``loss_curve.png``. Returns the last validation metrics.
    ``callback(step)``, if given, is called after every completed step.
    """
    from tqdm import tqdm

    from .models import build_model

    cfg = resolve(config)
    if max_steps is not None:
        if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"--max-steps {max_steps}: must be a positive integer")
        cfg["train"]["max_steps"] = int(max_steps)
    t = cfg["train"]
    out = Path(out)
    rank, world = _dist_info()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if t["device"] == "cuda" else "gloo")
    from .devices import check_device

    device = check_device(t["device"], "config: train.device", fix="train.device: cpu")
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    torch.manual_seed(int(t["seed"]))

    from .tasks import dense_task

    task = dense_task(cfg) or SegmentationTask(cfg)
    precision = resolve_precision(t["precision"], device, isinstance(task, SegmentationTask),
                                  int(cfg["model"].get("dim", 2)))
    mcfg = dict(cfg["model"])
    model = build_model(mcfg.pop("name"), **mcfg).to(device)
    optimizer = make_optimizer(model.parameters(), t)
    ema = WeightAverage(model, t["ema"]) if t["ema"] else None
    start, log = 0, []
    ckpt_path = out / "checkpoint.pt"
    best = {"accuracy": -1.0}
    stale = 0
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = checkpoint.load(ckpt_path)
        if ckpt.get("precision", precision) != precision:
            raise ValueError(f"--resume: {ckpt_path} was trained in {ckpt['precision']}, this run would use {precision}; "
                             f"set train.precision: {ckpt['precision']} to continue it")
        changes = check_resume_config(ckpt["config"], cfg, ckpt_path)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if ema is not None:
                if "ema" not in ckpt:
                    raise ValueError("it holds no weight average (train.ema was off)")
                ema.load_state_dict(ckpt["ema"])
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"--resume: {ckpt_path} does not fit this model or optimizer ({first}); "
                             "train into a new --out") from None
        start = int(ckpt["step"])
        best = ckpt.get("best", best)
        stale = int(ckpt.get("stale", 0))
        log = _read_log(out / "metrics.jsonl", start)
        if rank == 0:
            print(f"resuming at step {start} of {t['max_steps']} from {ckpt_path}", file=sys.stderr)
            if changes:
                log.append({"step": start, "resume_changed": {k: [a, b] for k, (a, b) in changes.items()}})
                _write_log(out / "metrics.jsonl", log)
                listed = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
                print(f"sparseseg train: warning: resuming with changed {listed} (recorded in "
                      f"{out / 'metrics.jsonl'})", file=sys.stderr)
    else:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if ckpt_path.exists():
                raise FileExistsError(f"{out} already holds a training run; use --resume to continue it or pick another --out")
        if t["init"]:
            init_weights(model, t["init"])
            if ema is not None:
                ema = WeightAverage(model, t["ema"])
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model)

    batches = task.batches(rank, world)
    workers = int(cfg["data"]["num_workers"])
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, t["max_steps"]), num_workers=workers,
        collate_fn=_identity, prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    val_data = task.validation() if rank == 0 else None

    def save_ckpt(step: int) -> None:
        if rank != 0:
            return
        checkpoint.save(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "config": cfg, "classes": list(task.classes), "version": __version__,
            "best": best, "stale": stale, "precision": precision,
            **({"ema": ema.state_dict()} if ema is not None else {}),
        })
        _write_log(out / "metrics.jsonl", log)

    bar = tqdm(total=t["max_steps"], initial=start, disable=not progress or rank != 0, desc="train", unit="step")
    run_loss, run_acc, run_n, t_data, t_step = 0.0, 0.0, 0, 0.0, 0.0
    last_val: dict[str, Any] = {}
    tic = time.perf_counter()
    step = start
    stop = False
    for step, micro_batches in zip(range(start, t["max_steps"]), loader):
        t_data += time.perf_counter() - tic
        tic = time.perf_counter()
        for g in optimizer.param_groups:
            g["lr"] = learning_rate(step, t)
        net.train()
        optimizer.zero_grad(set_to_none=True)
        loss, acc = task.step(net, micro_batches, device, precision, net.no_sync if distributed else None)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        run_loss += loss
        run_acc += acc
        run_n += 1
        t_step += time.perf_counter() - tic
        done = step + 1
        if done % t["log_every"] == 0 or done == t["max_steps"]:
            rec = {"step": done, "loss": run_loss / run_n, "accuracy": run_acc / run_n,
                   "lr": learning_rate(step, t), "time_data_s": t_data / run_n, "time_step_s": t_step / run_n, **memory_record(device)}
            if rank == 0:
                log.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.3f}")
            run_loss, run_acc, run_n, t_data, t_step = 0.0, 0.0, 0, 0.0, 0.0
        if rank == 0 and (done % t["val_every"] == 0 or done == t["max_steps"]):
            judged = ema.model if ema is not None else model
            last_val = task.evaluate(judged, val_data, t["batch_size"])
            log.append({"step": done, **{f"val_{k}": v for k, v in last_val.items()}})
            if last_val["accuracy"] > best["accuracy"]:
                best = {"accuracy": last_val["accuracy"], "step": done}
                stale = 0
                checkpoint.save(out / "best.pt", {"model": judged.state_dict(), "step": done, "config": cfg,
                                                  "classes": list(task.classes), "version": __version__,
                                                  "metrics": last_val, "precision": precision})
            else:
                stale += 1
            tqdm.write(f"step {done}: val loss {last_val['loss']:.4f} accuracy {last_val['accuracy']:.4f}") if progress else None
            if t["early_stopping"] and stale >= t["early_stopping"]:
                stop = True
        if distributed:
            flag = torch.tensor([int(stop)])
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        if done % t["checkpoint_every"] == 0 or done == t["max_steps"] or stop:
            save_ckpt(done)
        bar.update(1)
        if callback is not None:
            callback(done)
        tic = time.perf_counter()
        if stop:
            if rank == 0 and progress:
                tqdm.write(f"early stopping at step {done}: no better validation accuracy in {stale} checks")
            break
    bar.close()
    digests = [weights_digest(model)]
    if distributed:  # replicas must hold the same weights; record what each rank has
        digests = [None] * world
        torch.distributed.all_gather_object(digests, weights_digest(model))
    if rank == 0:
        log.append({"step": step + 1, "weights_sha256": digests})
        _write_log(out / "metrics.jsonl", log)
    if rank == 0 and log:
        from .plots import loss_curve

        loss_curve(log, str(out / "loss_curve.png"))
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"step": step + 1 if t["max_steps"] > start else start, "val": last_val, "best": best}
