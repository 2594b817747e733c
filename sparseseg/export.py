"""Export dense models to TorchScript or ONNX for C++ frameworks (LArSoft, Wire-Cell).

:func:`export_model` builds a model from the model table (random weights, or a sparseseg
checkpoint), writes it as TorchScript (``torch.jit.script``; loads with ``torch.jit.load``
in Python or ``torch::jit::load`` in C++) or ONNX (loads with onnxruntime), then reloads the
file and checks that it reproduces the PyTorch outputs on an example input.

Only dense models can be exported. The sparse UResNet runs on spconv, whose convolutions
are custom operators driven by rulebooks (index pairs) built at run time from each event's
coordinates; neither TorchScript nor ONNX has such operators, so no exporter can write it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .classes import CLASS_NAMES

__all__ = ["FORMATS", "SPARSE_MODELS", "DEFAULT_INPUT_SHAPES", "export_model", "load_dense_checkpoint",
           "check_export", "model_classes"]

FORMATS = ("torchscript", "onnx")
SPARSE_MODELS = ("uresnet",)
"""Model-table names of spconv models (not exportable)."""

DEFAULT_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "roi-unet": (1, 3, 128, 128),
    "roi-mobilenetv2": (1, 3, 128, 128),
    "roi-mobilenetv3": (1, 3, 128, 128),
    "roi-transformer": (1, 3, 128, 128),
    "cvn": (1, 3, 500, 500),
    "uresnet-dense": (1, 1, 128, 128),
    "patch-cnn": (16, 1, 48, 48),
}
"""Example input (B, C, H, W) per model used for tracing/checking when none is given."""


def _sparse_error(name: str) -> ValueError:
    return ValueError(
        f"model {name!r} is a sparse (spconv) network and cannot be exported to TorchScript or ONNX: "
        "spconv's sparse convolutions are custom operators driven by rulebooks (index pairs) built "
        "at run time from each event's coordinates, and neither TorchScript nor ONNX has such "
        "operators. Run it with sparseseg in Python instead (e.g. `sparseseg predict`, or behind a "
        "small Python inference service your C++ framework calls), or export its dense twin "
        "'uresnet-dense' (same layout; sparse weights convert with "
        "sparseseg.models.dense_uresnet.convert_sparse_state_dict)."
    )


def model_classes(name: str) -> tuple[str, ...]:
    """Output classes a checkpoint of model ``name`` must carry."""
    if name.startswith("roi-"):
        return ("signal",)
    if name == "cvn":
        from .models.cvn import CVN_CLASSES

        return tuple(CVN_CLASSES)
    if name == "patch-cnn":
        from .models.patch_cnn import PATCH_CLASSES

        return tuple(PATCH_CLASSES)
    return tuple(CLASS_NAMES)


def load_dense_checkpoint(path: str | Path, name: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a dense model from a sparseseg checkpoint ({model, config, classes, version}).

    ``config["model"]`` holds ``name`` and the builder's keyword arguments. When ``name`` is
    given it must match. Returns (model in eval mode, checkpoint dict).
    """
    from . import checkpoint

    ckpt = checkpoint.load(path)
    return dense_from(ckpt, path, name), ckpt


def dense_from(ckpt: dict[str, Any], path: str | Path = "<checkpoint>", name: str | None = None) -> torch.nn.Module:
    """The dense model of an already loaded checkpoint dict (see :func:`load_dense_checkpoint`)."""
    from .checkpoint import float_state
    from .models import build_model

    try:
        mcfg = dict(ckpt["config"]["model"])
        ck_name = mcfg.pop("name")
    except (KeyError, TypeError):
        raise ValueError(f"weights file {path}: config has no model section with a name") from None
    if name == "uresnet-dense" and ck_name == "uresnet":
        return dense_twin_from(ckpt, path)
    if name is not None and name != ck_name:
        raise ValueError(f"weights file {path}: holds model {ck_name!r}, not {name!r}")
    if ck_name in SPARSE_MODELS:
        raise _sparse_error(ck_name)
    expected = model_classes(ck_name)
    if tuple(ckpt["classes"]) != expected:
        raise ValueError(f"weights file {path}: classes {tuple(ckpt['classes'])} do not fit model {ck_name!r} (expected {expected})")
    model = build_model(ck_name, **mcfg)
    try:
        model.load_state_dict(float_state(ckpt["model"]))
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise ValueError(f"weights file {path}: weights do not fit model {ck_name!r} ({lines[-1].strip()})") from None
    return model.eval()


def dense_twin_from(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> torch.nn.Module:
    """The dense UResNet twin (``uresnet-dense``) of a sparse ``uresnet`` checkpoint: the same
    config, with the sparse weights converted by
    :func:`~sparseseg.models.dense_uresnet.convert_sparse_state_dict`.

    The two compute the same function where every pixel of the image is active; on sparse
    images they differ (the dense twin also convolves the empty pixels). Like every
    ``uresnet-dense``, it takes the features as they reach the network: with
    ``input_norm: mip`` the per-image MIP calibration is the caller's (see
    :func:`~sparseseg.models.dense_uresnet.densify` with ``normalize=True``).
    """
    from .checkpoint import float_state
    from .models import build_model
    from .models.dense_uresnet import convert_sparse_state_dict

    mcfg = dict(ckpt["config"]["model"])
    mcfg.pop("name", None)
    if tuple(ckpt["classes"]) != tuple(CLASS_NAMES):
        raise ValueError(f"weights file {path}: classes {tuple(ckpt['classes'])} do not fit model 'uresnet-dense' "
                         f"(expected {tuple(CLASS_NAMES)})")
    model = build_model("uresnet-dense", **mcfg)
    try:
        model.load_state_dict(convert_sparse_state_dict(float_state(ckpt["model"]), model.dim))
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise ValueError(f"weights file {path}: sparse uresnet weights do not convert to its dense twin "
                         f"({lines[-1].strip()})") from None
    return model.eval()


def _outputs(result) -> list[np.ndarray]:
    if isinstance(result, (list, tuple)):
        return [np.asarray(r.detach().cpu().numpy() if torch.is_tensor(r) else r) for r in result]
    return [result.detach().cpu().numpy() if torch.is_tensor(result) else np.asarray(result)]


def check_export(path: str | Path, fmt: str, model: torch.nn.Module, example: torch.Tensor, atol: float = 1e-4) -> float:
    """Reload an exported file and compare its output on ``example`` with ``model``'s.

    Returns the largest absolute difference; raises ``ValueError`` when it exceeds ``atol``.
    """
    with torch.no_grad():
        ref = _outputs(model(example))
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            got = _outputs(loaded(example))
    elif fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: example.cpu().numpy()})
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
        raise ValueError(f"{path}: exported output shapes {[g.shape for g in got]} differ from PyTorch's {[r.shape for r in ref]}")
    diff = max(float(np.max(np.abs(g - r))) if r.size else 0.0 for g, r in zip(got, ref))
    if not diff <= atol:
        raise ValueError(f"{path}: exported {fmt} output differs from PyTorch by {diff:.3g} (> {atol:g})")
    return diff


def export_model(
    name: str,
    weights: str | Path | None,
    fmt: str,
    out_path: str | Path,
    example_input_shape: Sequence[int] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    atol: float = 1e-4,
    opset: int = 17,
) -> dict[str, Any]:
    """Export dense model ``name`` to ``fmt`` ("torchscript" or "onnx") and verify it.

    Parameters
    ----------
    name : str
        A dense model of the model table: ``roi-unet``, ``roi-mobilenetv2``,
        ``roi-mobilenetv3``, ``roi-transformer``, ``cvn``, ``uresnet-dense``.
    weights : path or None
        sparseseg checkpoint of that model, or None for randomly initialised weights (to
        test a deployment chain before training). For ``uresnet-dense`` a sparse ``uresnet``
        checkpoint (e.g. the shipped weights/uresnet2d.pt) is converted to its dense twin
        (:func:`dense_twin_from`).
    fmt : {"torchscript", "onnx"}
    out_path : path
        File to write (folders are created).
    example_input_shape : sequence of int, optional
        (B, C, H, W) of the example input used to trace (ONNX) and to check the export;
        default :data:`DEFAULT_INPUT_SHAPES` [name]. In ONNX the batch and spatial axes are
        declared dynamic.
    model_kwargs : dict, optional
        Builder options when ``weights`` is None.
    atol : float
        Largest absolute difference allowed between the exported and the PyTorch output.

    Returns
    -------
    dict: ``path``, ``format``, ``model``, ``input_shape``, ``output_shape``,
    ``max_abs_diff``, ``weights``, ``converted_from`` (the checkpoint's model when its weights
    were converted, else None) and ``input_norm`` (the model's, or None).

    Raises
    ------
    ValueError
        For a sparse model (with what to do instead), an unknown name or format, a
        checkpoint that does not fit, or an export that does not reproduce PyTorch.
    """
    from .models import MODELS, build_model

    if name in SPARSE_MODELS:
        raise _sparse_error(name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; exportable models: {', '.join(DEFAULT_INPUT_SHAPES)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    converted = None
    if weights is not None:
        model, ckpt = load_dense_checkpoint(weights, name)
        held = ckpt["config"]["model"]["name"]
        converted = held if held != name else None  # a sparse uresnet checkpoint for uresnet-dense
    else:
        model = build_model(name, **(model_kwargs or {})).eval()
    model = model.cpu().eval()
    default = DEFAULT_INPUT_SHAPES.get(name, (1, 1, 64, 64))
    if name == "uresnet-dense" and model.dim == 3:
        default = (1, model.in_channels, 32, 32, 32)
    shape = tuple(int(s) for s in (example_input_shape or default))
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError(f"example_input_shape must be (B, C, *spatial) with positive sizes, got {shape}")
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(shape, generator=gen) * (100.0 if name in ("cvn", "uresnet-dense", "patch-cnn") else 1.0)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated; libtorch still loads it
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(model)
            scripted.save(str(out_path))
    else:
        try:
            import onnx  # noqa: F401  (the exporter needs it)
        except ImportError:
            raise ValueError("ONNX export needs the 'onnx' package (and 'onnxruntime' to check it): "
                             "pip install onnx onnxruntime") from None
        spatial = {i: f"dim{i}" for i in range(2, len(shape))}
        with torch.no_grad(), warnings.catch_warnings():
            # input checks are Python branches: the tracer warns that they are frozen, which is
            # what we want (the channel count is fixed); the spatial sizes stay dynamic
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(out_path), input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch", **spatial}, "output": {0: "batch", **spatial} if name != "cvn" else {0: "batch"}},
                opset_version=opset, dynamo=False,
            )
    diff = check_export(out_path, fmt, model, example, atol)
    with torch.no_grad():
        out_shape = tuple(model(example).shape)
    return {"path": str(out_path), "format": fmt, "model": name, "input_shape": list(shape),
            "output_shape": list(out_shape), "max_abs_diff": diff, "weights": None if weights is None else str(weights),
            "converted_from": converted, "input_norm": getattr(getattr(model, "config", None), "input_norm", None)}
