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


__all__ = ["FORMATS", "export_model", "load_dense_checkpoint", "check_export"]

FORMATS = ("torchscript", "onnx")


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


def load_dense_checkpoint(path: str | Path, name: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A dense model (eval mode) and its checkpoint dict from a sparseseg weights file; ``name``
    checks the model it holds (``uresnet-dense`` converts a sparse ``uresnet`` checkpoint to
    its dense twin, see :func:`sparseseg.checkpoint.build_from`). A sparse model is refused
    with what to do instead."""
    from . import checkpoint
    from .models import FAMILIES

    ckpt = checkpoint.load(path)
    try:
        target = name or ckpt["config"]["model"]["name"]
    except (KeyError, TypeError):
        target = None  # build_from says what is missing
    if target in FAMILIES and FAMILIES[target].sparse:
        raise _sparse_error(target)
    return checkpoint.build_from(ckpt, path, name=name).eval(), ckpt


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
        (:func:`sparseseg.checkpoint.build_from`).
    fmt : {"torchscript", "onnx"}
    out_path : path
        File to write (folders are created).
    example_input_shape : sequence of int, optional
        (B, C, H, W) of the example input used to trace (ONNX) and to check the export;
        default the family's ``example_input`` (:data:`sparseseg.models.FAMILIES`). In ONNX the batch and spatial axes are
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
    from .models import FAMILIES, names

    if name in FAMILIES and FAMILIES[name].sparse:
        raise _sparse_error(name)
    if name not in FAMILIES:
        raise ValueError(f"unknown model {name!r}; exportable models: {', '.join(names(sparse=False))}")
    spec = FAMILIES[name]
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    converted = None
    if weights is not None:
        model, ckpt = load_dense_checkpoint(weights, name)
        held = ckpt["config"]["model"]["name"]
        converted = held if held != name else None  # a sparse uresnet checkpoint for uresnet-dense
    else:
        model = spec.build(**(model_kwargs or {})).eval()
    model = model.cpu().eval()
    default = spec.example_input
    if name == "uresnet-dense" and model.dim == 3:
        default = (1, model.in_channels, 32, 32, 32)
    shape = tuple(int(s) for s in (example_input_shape or default))
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError(f"example_input_shape must be (B, C, *spatial) with positive sizes, got {shape}")
    gen = torch.Generator().manual_seed(0)
    # ROI inputs are normalised waveforms; the others take ADC-like values
    example = torch.rand(shape, generator=gen) * (1.0 if spec.task == "roi" else 100.0)
    per_pixel = spec.task in ("roi", "segment")  # outputs with the input's spatial axes
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
                dynamic_axes={"input": {0: "batch", **spatial}, "output": {0: "batch", **spatial} if per_pixel else {0: "batch"}},
                opset_version=opset, dynamo=False,
            )
    diff = check_export(out_path, fmt, model, example, atol)
    with torch.no_grad():
        out_shape = tuple(model(example).shape)
    return {"path": str(out_path), "format": fmt, "model": name, "input_shape": list(shape),
            "output_shape": list(out_shape), "max_abs_diff": diff, "weights": None if weights is None else str(weights),
            "converted_from": converted, "input_norm": getattr(getattr(model, "config", None), "input_norm", None)}
