"""Differentiable CPU engine for :class:`~sparseseg.models.uresnet.SparseUResNet`: training
(and any forward that needs gradients) without spconv's rulebooks.

It shares the neighbour tables of the inference engine (:mod:`.sparse_infer`): sites of each
level sorted by key, an (N, 3^D) neighbour table per level (row N where a neighbour is
missing) and, between levels, each fine site's parent and child slot. Every convolution is a
gather of rows followed by one GEMM, forward and backward, with no scatter:

- **submanifold** y = [x[nbr[:, 0]] ... x[nbr[:, K-1]]] @ W. The neighbour relation is
  symmetric (j = nbr[i, k] exactly when i = nbr[j, K-1-k]), so the input gradient is the same
  kind of convolution of dy over the same table with the mirrored filter, and
  dW = gather(x)^T @ dy;
- **strided** (k=2, s=2) y_coarse = [x[children[:, 0]] ...] @ W; each fine site has exactly
  one parent, so dx = (dy @ W^T) read at (parent, slot): a gather;
- **inverse** y_fine = (x @ [W_0 ... W_S-1]) read at (parent, slot): a gather; dx =
  gather(dy, children) @ W^T, dW = x^T @ gather(dy, children).

That is the bfloat16 kernel. In float32 (and float64) a submanifold convolution runs offset by
offset instead (:class:`_SubmPairs`, :func:`~.sparse_infer.use_pairs` says why): only the
existing neighbour pairs are multiplied, at the price of one ``index_add_`` per offset. There,
each block's BatchNorm -> activation -> convolution is one autograd step
(:class:`_NormActSubmPairs`) that keeps only its input: the activated features are computed
again in backward (a few element-wise passes) instead of being stored, which takes a third off
the tensors a training step holds at its peak.

The gathered matrices are not kept for backward (they are 3^D times the activations);
backward gathers again, which costs less than the memory would.

Precision follows ``torch.autocast``: under ``torch.autocast("cpu", dtype=torch.bfloat16)``
activations and GEMMs are bfloat16 while parameters, their gradients, BatchNorm statistics
and the logits stay float32 (the same switch as for the spconv graph).

The parameters are the model's own (same state dict): the engine is a way of running
``SparseUResNet.forward``, chosen by :func:`sparseseg.models.uresnet.cpu_path`.
"""
from __future__ import annotations

import torch

from .sparse_infer import _coarsen, _keys, _Level, chunk_plan, use_pairs

__all__ = ["engine_forward"]


CHUNK_BYTES = 1 << 22
"""Gathered rows are multiplied in chunks of about this many bytes, so that each chunk is
still in cache when its GEMM reads it (and the gathered matrix is never allocated whole)."""


def _pad(x: torch.Tensor) -> torch.Tensor:
    """x with one zero row appended (what a missing neighbour reads)."""
    return torch.cat([x, x.new_zeros((1, x.shape[1]))], dim=0)


def _gather(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(N_out, K x C): row i holds x[table[i, 0]], ..., x[table[i, K-1]] (zeros past the end)."""
    n, k = table.shape
    return _pad(x).index_select(0, table.reshape(-1)).view(n, k * x.shape[1])


def _step(width: int, itemsize: int) -> int:
    """Rows per chunk for gathered rows of ``width`` elements."""
    return max(64, CHUNK_BYTES // max(1, width * itemsize))


def _gather_mm(x: torch.Tensor, table: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """gather(x, table) @ w, chunk by chunk: (N_out, K) table, w (K x C, C_out)."""
    n, k = table.shape
    c = x.shape[1]
    xp = _pad(x)
    out = torch.empty((n, w.shape[1]), dtype=x.dtype)
    size, quantum = chunk_plan(n, _step(k * c, x.element_size()))
    buf = torch.empty((size * k, c), dtype=x.dtype)
    for a in range(0, n, size):
        rows = table[a:a + size].reshape(-1)
        m = rows.shape[0] // k
        mp = -(-m // quantum) * quantum
        torch.index_select(xp, 0, rows, out=buf[: m * k])
        if mp > m:
            buf[m * k: mp * k].zero_()
        g = buf[: mp * k].view(mp, k * c)
        if mp == m:
            torch.mm(g, w, out=out[a:a + m])
        else:
            out[a:a + m] = torch.mm(g, w)[:m]
    return out


def _gather_t_mm(x: torch.Tensor, table: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """gather(x, table)^T @ dy (K x C, C_out), summed over chunks in float32 (or wider)."""
    n, k = table.shape
    c = x.shape[1]
    xp = _pad(x)
    acc = torch.zeros((k * c, dy.shape[1]), dtype=torch.promote_types(x.dtype, torch.float32))
    size, quantum = chunk_plan(n, _step(k * c, x.element_size()))
    buf = torch.empty((size * k, c), dtype=x.dtype)
    dbuf = None
    for a in range(0, n, size):
        rows = table[a:a + size].reshape(-1)
        m = rows.shape[0] // k
        mp = -(-m // quantum) * quantum
        torch.index_select(xp, 0, rows, out=buf[: m * k])
        g = buf[: mp * k].view(mp, k * c)
        d = dy[a:a + m]
        if mp > m:  # zero-padded rows of dy: the stale gathered rows beyond m add nothing
            buf[m * k: mp * k].zero_()
            if dbuf is None:
                dbuf = dy.new_zeros((size, dy.shape[1]))
            dbuf[:m] = d
            dbuf[m:mp].zero_()
            d = dbuf[:mp]
        acc += torch.mm(d.t(), g).t()
    return acc.to(x.dtype)


def _rows_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w through the same bounded row counts (:func:`chunk_plan`; no gather needed)."""
    return _gather_mm(x, torch.arange(x.shape[0]).view(-1, 1), w)


class _Subm(torch.autograd.Function):
    """Submanifold convolution: x (N, C_in), w (K x C_in, C_out), nbr (N, K) -> (N, C_out).
    With K = 1 and nbr = arange(N) it is a linear map (the residual shortcut)."""

    @staticmethod
    def forward(ctx, x, w, nbr):
        ctx.save_for_backward(x, w, nbr)
        return _gather_mm(x, nbr, w)

    @staticmethod
    def backward(ctx, dy):
        x, w, nbr = ctx.saved_tensors
        k = nbr.shape[1]
        cin, cout = x.shape[1], w.shape[1]
        dy = dy.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:  # the mirrored filter: block k is W_{K-1-k}^T
            wm = w.view(k, cin, cout).flip(0).transpose(1, 2).reshape(k * cout, cin)
            dx = _gather_mm(dy, nbr, wm)
        if ctx.needs_input_grad[1]:
            dw = _gather_t_mm(x, nbr, dy)
        return dx, dw, None


class _Down(torch.autograd.Function):
    """k=2, s=2 convolution: x (N_fine, C_in), w (S x C_in, C_out), children (N_coarse, S),
    pick (N_fine,) = parent x S + slot -> (N_coarse, C_out)."""

    @staticmethod
    def forward(ctx, x, w, children, pick):
        ctx.save_for_backward(x, w, children, pick)
        return _gather_mm(x, children, w)

    @staticmethod
    def backward(ctx, dy):
        x, w, children, pick = ctx.saved_tensors
        cin = x.shape[1]
        dy = dy.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _rows_mm(dy, w.t().contiguous()).view(-1, cin).index_select(0, pick)
        if ctx.needs_input_grad[1]:
            dw = _gather_t_mm(x, children, dy)
        return dx, dw, None, None


class _Up(torch.autograd.Function):
    """Inverse of :class:`_Down`: x (N_coarse, C_in), w (C_in, S x C_out) -> (N_fine, C_out)."""

    @staticmethod
    def forward(ctx, x, w, children, pick):
        ctx.save_for_backward(x, w, children)
        cout = w.shape[1] // children.shape[1]
        return _rows_mm(x, w).view(-1, cout).index_select(0, pick)

    @staticmethod
    def backward(ctx, dy):
        x, w, children = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _gather_mm(dy, children, w.t().contiguous()) if ctx.needs_input_grad[0] else None
        dw = _gather_t_mm(dy, children, x).t() if ctx.needs_input_grad[1] else None
        return dx, dw, None, None


def _buffers(pairs, *widths: int, like: torch.Tensor) -> list[torch.Tensor]:
    """One scratch matrix per width, as tall as the longest pair list: every offset's gather
    and product are written into views of these (``out=``), so a convolution allocates a few
    matrices instead of two or three per offset."""
    rows = max((r.shape[0] for _, r, _ in pairs), default=0)
    return [like.new_empty((rows, w)) for w in widths]


def _pairs_forward(x: torch.Tensor, w: torch.Tensor, pairs) -> torch.Tensor:
    """y = x W_centre + sum_k scatter(x[src_k] W_k); w (C_out, K, C_in), each offset's block
    w[:, k] multiplied as a strided view (the filter is never copied)."""
    y = torch.mm(x, w[:, w.shape[1] // 2].t())
    xs, prod = _buffers(pairs, x.shape[1], w.shape[0], like=x)
    for k, rows, src in pairs:
        n = rows.shape[0]
        torch.index_select(x, 0, src, out=xs[:n])
        y.index_add_(0, rows, torch.mm(xs[:n], w[:, k].t(), out=prod[:n]))
    return y


def _pairs_backward(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, pairs, need_x: bool, need_w: bool):
    """(dx, dw) of :func:`_pairs_forward`, over the same pair lists read the other way."""
    c = w.shape[1] // 2
    dy = dy.contiguous()
    dx = torch.mm(dy, w[:, c]) if need_x else None
    dw = torch.zeros_like(w) if need_w else None
    if need_w:
        dw[:, c] = torch.mm(dy.t(), x)
    gs, xs, prod = _buffers(pairs, dy.shape[1], x.shape[1], x.shape[1], like=dy)
    for k, rows, src in pairs:
        n = rows.shape[0]
        g = torch.index_select(dy, 0, rows, out=gs[:n])
        if need_x:
            dx.index_add_(0, src, torch.mm(g, w[:, k], out=prod[:n]))
        if need_w:
            torch.index_select(x, 0, src, out=xs[:n])
            torch.mm(g.t(), xs[:n], out=dw[:, k])
    return dx, dw


class _SubmPairs(torch.autograd.Function):
    """Submanifold convolution offset by offset: y = x W_centre + sum_k scatter(x[src_k] W_k).

    Only existing neighbour pairs are multiplied (about half of the 3^D slots of a 2D level
    hold a site), at the price of one gather and one conflict-free ``index_add_`` per offset;
    x (N, C_in), w the filter in its own layout (C_out, K, C_in), pairs from
    :meth:`_Level.pairs` -> (N, C_out)."""

    @staticmethod
    def forward(ctx, x, w, pairs):
        ctx.save_for_backward(x, w)
        ctx.pairs = pairs
        return _pairs_forward(x, w, pairs)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx, dw = _pairs_backward(dy, x, w, ctx.pairs, *ctx.needs_input_grad[:2])
        return dx, dw, None


class _NormActSubmPairs(torch.autograd.Function):
    """BatchNorm -> (leaky) ReLU -> :class:`_SubmPairs` as one step that keeps only its input
    for backward: the normalised, activated features (as large as the input) are computed
    again in backward from the input and the batch statistics, instead of being stored.
    Running statistics are updated once, in forward, as ``nn.BatchNorm1d`` does."""

    @staticmethod
    def forward(ctx, x, gamma, beta, w, bn, slope, pairs):
        momentum = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        training = bn.training or not bn.track_running_stats
        h, mean, rstd = torch.ops.aten.native_batch_norm(x, gamma, beta, bn.running_mean, bn.running_var,
                                                         training, momentum, bn.eps)
        if not training:  # normalised by the running statistics, which backward must see as they are now
            mean, rstd = bn.running_mean.clone(), (bn.running_var + bn.eps).rsqrt()
        torch.nn.functional.leaky_relu(h, slope, inplace=True)
        ctx.save_for_backward(x, gamma, beta, w, mean, rstd)
        ctx.pairs, ctx.training, ctx.slope, ctx.eps = pairs, training, slope, bn.eps
        return _pairs_forward(x=h, w=w, pairs=pairs)

    @staticmethod
    def backward(ctx, dy):
        x, gamma, beta, w, mean, rstd = ctx.saved_tensors
        need_x, need_gamma, need_beta, need_w = ctx.needs_input_grad[:4]
        pre = torch.addcmul(beta, x - mean, rstd * gamma)  # the forward's BatchNorm output again
        dh, dw = _pairs_backward(dy, torch.nn.functional.leaky_relu(pre, ctx.slope), w, ctx.pairs, True, need_w)
        dpre = torch.ops.aten.leaky_relu_backward(dh, pre, ctx.slope, False)
        del pre, dh
        dx, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            dpre, x, gamma, None, None, mean, rstd, True, ctx.eps, [need_x, need_gamma, need_beta]) \
            if ctx.training else (dpre * (gamma * rstd) if need_x else None,
                                  (dpre * ((x - mean) * rstd)).sum(0) if need_gamma else None,
                                  dpre.sum(0) if need_beta else None)
        return dx, dgamma, dbeta, dw, None, None, None


def _kernel_matrix(weight: torch.Tensor, dtype) -> torch.Tensor:
    """spconv filter (C_out, *kernel, C_in) -> (K x C_in, C_out), offsets row-major."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.reshape(cout, -1, cin).permute(1, 2, 0).reshape(-1, cout).to(dtype)


def _inverse_matrix(weight: torch.Tensor, dtype) -> torch.Tensor:
    """spconv inverse filter (C_out, *kernel, C_in) -> (C_in, S x C_out): block j = slot j."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.reshape(cout, -1, cin).permute(2, 1, 0).reshape(cin, -1).to(dtype)


def _norm_act(x: torch.Tensor, norm) -> torch.Tensor:
    """BatchNorm (train or eval mode, float32 statistics) + the block's activation, applied in
    place: BatchNorm's backward reads its input, not its output, and a (leaky) ReLU's backward
    can read its own output, so one tensor per convolution is kept for backward instead of two."""
    y = norm.bn(x)
    if isinstance(norm.act, torch.nn.LeakyReLU):
        return torch.nn.functional.leaky_relu(y, norm.act.negative_slope, inplace=True)
    return torch.relu_(y)


def _subm(x: torch.Tensor, weight: torch.Tensor, level: _Level) -> torch.Tensor:
    """A submanifold convolution with spconv filter ``weight`` (C_out, *kernel, C_in) on
    ``level``: offset by offset over its pair lists, or one gather-GEMM over its neighbour
    table, as :func:`~.sparse_infer.use_pairs` says for x's dtype."""
    if use_pairs(x.dtype):
        return _SubmPairs.apply(x, _filter(weight, x.dtype), level.pairs())
    return _Subm.apply(x, _kernel_matrix(weight, x.dtype), level.neighbours())


def _filter(weight: torch.Tensor, dtype) -> torch.Tensor:
    """spconv filter (C_out, *kernel, C_in) -> (C_out, K, C_in), a view where dtype matches."""
    return weight.reshape(weight.shape[0], -1, weight.shape[-1]).to(dtype)


def _norm_act_subm(x: torch.Tensor, norm, weight: torch.Tensor, level: _Level) -> torch.Tensor:
    """``_subm(_norm_act(x, norm), weight, level)``; on the offset-by-offset path as one step
    that keeps only x for backward (:class:`_NormActSubmPairs`)."""
    if not use_pairs(x.dtype):
        return _subm(_norm_act(x, norm), weight, level)
    slope = norm.act.negative_slope if isinstance(norm.act, torch.nn.LeakyReLU) else 0.0
    return _NormActSubmPairs.apply(x, norm.bn.weight.to(x.dtype), norm.bn.bias.to(x.dtype), _filter(weight, x.dtype),
                                   norm.bn, slope, level.pairs())


def _block(x: torch.Tensor, block, level: _Level, dtype) -> torch.Tensor:
    if block.shortcut is None:
        identity = x
    elif use_pairs(dtype):
        identity = torch.mm(x, block.shortcut.weight.t().to(dtype))
    else:  # a linear map as a K = 1 convolution, through the same bounded GEMM shapes
        identity = _Subm.apply(x, block.shortcut.weight.t().to(dtype), torch.arange(x.shape[0]).view(-1, 1))
    h = _norm_act_subm(x, block.norm1, block.conv1.weight, level)
    h = _norm_act_subm(h, block.norm2, block.conv2.weight, level)
    return h + identity


def engine_forward(model, indices: torch.Tensor, features: torch.Tensor, spatial_shape) -> torch.Tensor:
    """``model``'s logits (N, num_classes) float32 for CPU tensors, rows in input order.

    indices int (N, 1 + D) with the batch index in column 0; features float32 (N, C_in);
    spatial_shape: D sizes (padded here to the model's stride). Differentiable in the model's
    parameters; BatchNorm follows ``model.training``.
    """
    cfg = model.config
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else model.stem.weight.dtype
    with torch.autocast("cpu", enabled=False):
        shape = model.padded_shape(spatial_shape)
        slots = 2 ** len(shape)
        coords = indices.long()
        keys, order = torch.sort(_keys(coords, shape))
        level = _Level(coords[order], keys, shape)
        x = (features.index_select(0, order) * cfg.input_scale).to(dtype)
        x = _subm(x, model.stem.weight, level)
        skips = []
        for i, blocks in enumerate(model.encoder):
            for block in blocks:
                x = _block(x, block, level, dtype)
            if i < len(model.down):
                coarse, parent, slot, children = _coarsen(level)
                pick = parent * slots + slot
                skips.append((x, level, children, pick))
                norm, conv = model.down[i]
                x = _Down.apply(_norm_act(x, norm), _kernel_matrix(conv.weight, dtype), children, pick)
                level = coarse
        for (norm, inv), blocks in zip(model.up, model.decoder):
            skip, level, children, pick = skips.pop()
            x = _Up.apply(_norm_act(x, norm), _inverse_matrix(inv.weight, dtype), children, pick)
            x = torch.cat([x, skip], dim=1)
            for block in blocks:
                x = _block(x, block, level, dtype)
        logits = model.head(model.head_act(model.head_norm(x.to(model.head.weight.dtype))))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0])
        return logits.index_select(0, inverse)
