"""The one training loop of every model family: one machine or many (torchrun + DDP).

What differs between families (data, loss, metrics) is their task (:mod:`sparseseg.tasks`);
schedule, accumulation, precision, weight average, checkpoints, resume and logs are here.

Data for step s is a pure function of (config, s, rank), so a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would have seen, and the weights come out the
same bit for bit on CPU.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__, checkpoint
from .atomic import write_text
from .config import resolve
from .simulate import SIMULATOR_VERSION
from .tasks import accumulated_step, task_for


def init_weights(model: torch.nn.Module, path) -> None:
    """Start from the model weights of checkpoint ``path`` (train.init); shapes must match,
    except that a sparse UResNet may start from a narrower one (fewer ``filters``, all else
    equal) or a shallower one (fewer levels, ``depth``, all else equal): the weights are
    widened or deepened so that the new model computes the same function
    (:func:`~sparseseg.models.uresnet.widen_state_dict`, :func:`~.deepen_state_dict`)."""
    ckpt = checkpoint.load(path)
    state = checkpoint.float_state(ckpt["model"])
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    grown = _grown(ckpt, model) if bad else None
    if grown is not None:
        from .models import uresnet

        field, old = grown
        verb, unit, grow = {"filters": ("widening", "filters", uresnet.widen_state_dict),
                            "depth": ("deepening", "levels", uresnet.deepen_state_dict)}[field]
        print(f"train.init: {verb} {path} from {old} to {getattr(model.config, field)} {unit} "
              "(the new model starts with the same outputs)", file=sys.stderr)
        model.load_state_dict(grow(state, old, model))
        return
    if bad or set(state) - set(own):
        raise ValueError(f"train.init: weights file {path} does not fit the configured model "
                         f"(first mismatch: {(bad or sorted(set(state) - set(own)))[0]}); "
                         "use the same model section as the run that wrote it (or, for a "
                         "uresnet, the same one with more filters or more levels)")
    model.load_state_dict(state)


def _grown(ckpt: dict[str, Any], model: torch.nn.Module) -> tuple[str, int] | None:
    """("filters" or "depth", the saved value) where ``ckpt`` holds a sparse UResNet that
    differs from ``model`` only by fewer filters or only by fewer levels; else None."""
    from dataclasses import asdict

    from .models.uresnet import SparseUResNet

    saved = dict((ckpt.get("config") or {}).get("model") or {})
    if not isinstance(model, SparseUResNet) or saved.pop("name", None) != "uresnet":
        return None
    own = asdict(model.config)
    for field in ("filters", "depth"):
        rest = dict(saved)
        old = rest.pop(field, None)
        if (isinstance(old, int) and old < own[field]
                and all(own.get(k) == v for k, v in rest.items())):
            return field, old
    return None


def resolve_precision(precision: str, device, sparse: bool, dim: int = 2) -> str:
    """train.precision -> "fp32" or "bf16". ``auto`` is bf16 where training runs through the
    engine (2D sparse UResNet on CPU, see ``models.uresnet.cpu_path``) on a CPU with native
    bfloat16 (AVX512-BF16 or AMX: the engine's GEMMs run 2-3x faster there), and fp32
    elsewhere (GPUs, dense models, 3D, CPUs without it)."""
    if precision != "auto":
        return precision
    from .models.sparse_infer import cpu_has_bf16
    from .models.uresnet import cpu_path

    engine = sparse and cpu_path(device, dim, "bf16", grad=True) == "engine"  # where bf16 would run on the engine
    return "bf16" if engine and cpu_has_bf16() else "fp32"


def memory_record(device) -> dict[str, float]:
    """Peak memory so far: RSS on CPU; allocated and reserved on CUDA (peaks then reset, so
    each log interval reports its own)."""
    from .memory import peak_rss_mb

    rec = {"peak_rss_mb": peak_rss_mb()}
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


# --------------------------------------------------------------------------- the loop
def _identity(x):
    return x


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


def _resume(ckpt_path: Path, cfg: dict, precision: str, model, optimizer, ema, rank: int):
    """Load a run's checkpoint into model, optimizer and weight average after checking that
    it fits this run; returns (start step, best, stale count, the metrics log kept)."""
    t = cfg["train"]
    best = {"accuracy": -1.0}
    if not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    ckpt = checkpoint.load(ckpt_path)
    if ckpt.get("precision", precision) != precision:
        raise ValueError(f"--resume: {ckpt_path} was trained in {ckpt['precision']}, this run would use {precision}; "
                         f"set train.precision: {ckpt['precision']} to continue it")
    changes = check_resume_config(ckpt["config"], cfg, ckpt_path)
    if (cfg.get("data") or {}).get("simulate") and ckpt.get("simulator_version") != SIMULATOR_VERSION:
        # a simulated stream from another simulator version: same config, other physics
        changes["simulator_version"] = (ckpt.get("simulator_version", "unrecorded"), SIMULATOR_VERSION)
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
    log = _read_log(ckpt_path.parent / "metrics.jsonl", start)
    if rank == 0:
        print(f"resuming at step {start} of {t['max_steps']} from {ckpt_path}", file=sys.stderr)
        if changes:
            log.append({"step": start, "resume_changed": {k: [a, b] for k, (a, b) in changes.items()}})
            _write_log(ckpt_path.parent / "metrics.jsonl", log)
            listed = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
            print(f"sparseseg train: warning: resuming with changed {listed} (recorded in "
                  f"{ckpt_path.parent / 'metrics.jsonl'})", file=sys.stderr)
    return start, best, stale, log


def _validate(task, judged, val_data, done: int, cfg: dict, precision: str, best: dict, stale: int,
              log: list, out: Path):
    """Score ``judged`` (the model, or its weight average) on the validation set, log it, and
    write best.pt when its accuracy is the best so far; returns (metrics, best, stale count)."""
    metrics = task.evaluate(judged, val_data, cfg["train"]["batch_size"])
    log.append({"step": done, **{f"val_{k}": v for k, v in metrics.items()}})
    if metrics["accuracy"] <= best["accuracy"]:
        return metrics, best, stale + 1
    checkpoint.save(out / "best.pt", {"model": judged.state_dict(), "step": done, "config": cfg,
                                      "classes": list(task.classes), "version": __version__,
                                      "simulator_version": SIMULATOR_VERSION, "metrics": metrics,
                                      "precision": precision})
    return metrics, {"accuracy": metrics["accuracy"], "step": done}, 0


def _start_processes(t: dict) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the process group under torchrun,
    sets the thread count and the seed."""
    from .devices import check_device

    rank, world = _dist_info()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if t["device"] == "cuda" else "gloo")
    device = check_device(t["device"], "config: train.device", fix="train.device: cpu")
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    torch.manual_seed(int(t["seed"]))
    return rank, world, device


def _finish(model, log: list, out: Path, step: int, rank: int, world: int) -> None:
    """Record the final weights' digest (each rank's, under DDP: replicas must agree), write
    the log and the loss curve, leave the process group."""
    digests = [weights_digest(model)]
    if world > 1:
        digests = [None] * world
        torch.distributed.all_gather_object(digests, weights_digest(model))
    if rank == 0:
        log.append({"step": step, "weights_sha256": digests})
        _write_log(out / "metrics.jsonl", log)
        from .plots import loss_curve

        loss_curve(log, str(out / "loss_curve.png"))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


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
    rank, world, device = _start_processes(t)
    distributed = world > 1
    from .models import family

    task = task_for(cfg)
    precision = resolve_precision(t["precision"], device, family(cfg["model"]["name"]).sparse,
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
        start, best, stale, log = _resume(ckpt_path, cfg, precision, model, optimizer, ema, rank)
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
            "simulator_version": SIMULATOR_VERSION, "best": best, "stale": stale, "precision": precision,
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
        loss, acc = accumulated_step(net, micro_batches, task, device, precision, net.no_sync if distributed else None)
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
            last_val, best, stale = _validate(task, ema.model if ema is not None else model, val_data, done, cfg,
                                              precision, best, stale, log, out)
            if progress:
                tqdm.write(f"step {done}: val loss {last_val['loss']:.4f} accuracy {last_val['accuracy']:.4f}")
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
    _finish(model, log, out, step + 1, rank, world)
    return {"step": step + 1 if t["max_steps"] > start else start, "val": last_val, "best": best}
