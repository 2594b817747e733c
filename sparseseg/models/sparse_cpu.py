"""Sparse-convolution kernels for CPU tensors, in plain torch.

spconv's rulebook (``indice_pairs``: for each kernel offset k, pairs (input row, output row))
is kept; the arithmetic is done here as gather -> GEMM -> index_add per offset. Two reasons:

- spconv 2.3's CPU path gives wrong results now and then when torch runs more than one
  thread (a few output rows of a strided convolution differ by ~1e-2 between identical
  calls), and its backward asks for a CUDA stream on CPU-only torch builds;
- autograd and torch.autocast see plain torch operations.

Inference does not come here: :mod:`.sparse_infer` runs trained models faster.

Filters use spconv's KRSC layout: (C_out, *kernel, C_in).
"""
from __future__ import annotations

import torch

def _pairs(indice_pairs: torch.Tensor, indice_pair_num: torch.Tensor, inverse: bool, subm: bool):
    """(k, input rows, output rows) per kernel offset with pairs, as int64 tensors."""
    kv = indice_pairs.shape[1]
    center = kv // 2
    nums = indice_pair_num.tolist()
    pin = indice_pairs[int(inverse)]
    pout = indice_pairs[int(not inverse)]
    for k in range(kv):
        if subm and k == center:
            continue
        n = nums[kv - k - 1] if subm and k > center else nums[k]
        if n > 0:
            yield k, pin[k, :n].long(), pout[k, :n].long()


def indice_conv(features: torch.Tensor, filters: torch.Tensor, indice_pairs: torch.Tensor,
                indice_pair_num: torch.Tensor, num_activate_out: int, inverse: bool = False,
                subm: bool = False) -> torch.Tensor:
    """Sparse convolution forward: features (N_in, C_in) -> (num_activate_out, C_out)."""
    cout, cin = filters.shape[0], filters.shape[-1]
    w = filters.reshape(cout, -1, cin)
    kv = w.shape[1]
    if subm:  # the centre offset maps every site to itself
        out = torch.mm(features, w[:, kv // 2].t()).to(features.dtype)  # autocast may give bf16
    else:
        out = features.new_zeros((num_activate_out, cout))
    for k, rows_in, rows_out in _pairs(indice_pairs, indice_pair_num, inverse, subm):
        out.index_add_(0, rows_out, torch.mm(features.index_select(0, rows_in), w[:, k].t()).to(out.dtype))
    return out


def indice_conv_backward(features: torch.Tensor, filters: torch.Tensor, out_bp: torch.Tensor,
                         indice_pairs: torch.Tensor, indice_pair_num: torch.Tensor,
                         inverse: bool = False, subm: bool = False):
    """Gradients (d features, d filters) of :func:`indice_conv`."""
    shape = filters.shape
    cout, cin = shape[0], shape[-1]
    w = filters.reshape(cout, -1, cin)
    kv = w.shape[1]
    out_bp = out_bp.contiguous()
    dw = torch.zeros_like(w)
    if subm:
        din = torch.mm(out_bp, w[:, kv // 2])
        dw[:, kv // 2] = torch.mm(out_bp.t(), features)
    else:
        din = torch.zeros_like(features)
    for k, rows_in, rows_out in _pairs(indice_pairs, indice_pair_num, inverse, subm):
        g = out_bp.index_select(0, rows_out)
        din.index_add_(0, rows_in, torch.mm(g, w[:, k]))
        dw[:, k] = torch.mm(g.t(), features.index_select(0, rows_in))
    return din, dw.reshape(shape)
