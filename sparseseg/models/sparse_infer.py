"""Fast CPU inference for a trained :class:`~sparseseg.models.uresnet.SparseUResNet`.

The training graph (spconv modules, rulebooks of (input row, output row) pairs per kernel
offset, a gather -> GEMM -> scatter-add per offset) is general but spends most of its time
moving rows. For inference the same weights run here as one GEMM per convolution:

- **Submanifold convolutions** gather each site's 3^D neighbours (a missing neighbour reads a
  zero row) into an (N, 3^D x C_in) matrix and multiply it by the filter reshaped to
  (3^D x C_in, C_out): no scatter, one large GEMM instead of 3^D small ones. That is the
  bfloat16 kernel; in float32 the convolution runs offset by offset over the existing
  neighbour pairs only (:func:`use_pairs`).
- **Strided convolutions** (k=2, s=2) gather the 2^D children of each coarse site the same
  way; **inverse convolutions** multiply the coarse features by all 2^D filter slices at once
  and pick each fine site's slice: one GEMM and one gather.
- **BatchNorm** that follows a convolution (the middle one of each residual block) is folded
  into that convolution's filter and a bias; the others become a multiply-add + ReLU.
- **Neighbour tables** are built once per forward for each level from sorted site keys
  (``torch.searchsorted``) and reused by every convolution of the level. In 3D most of the 27
  neighbours are missing, so in float32 the training graph is faster there (``Predictor``
  keeps it for 3D fp32); in bfloat16 this engine is.
- **bfloat16** (``precision="bf16"``): activations, gathers and GEMMs in bfloat16 (the GEMMs
  accumulate in float32; BatchNorm folding and the output head in float32). Worth it on CPUs
  with AVX512-BF16 or AMX; ``sparseseg bench`` prints its agreement with float32.

Rows are processed in chunks so the gathered matrix stays small (``chunk_bytes``): large
fresh allocations cost page faults that take longer than the gather itself.
Outputs follow the input rows, as the training model's do. One instance is not meant to be
called from several Python threads at once (it reuses a gather buffer).
"""
from __future__ import annotations

import itertools

import torch

__all__ = ["FastUResNet", "cpu_has_bf16"]


def cpu_has_bf16() -> bool:
    """True where the CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _affine(bn: torch.nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale.float(), (bn.bias.detach() - bn.running_mean * scale).float()


def _matrix(conv) -> torch.Tensor:
    """spconv filter (C_out, *kernel, C_in) -> (K x C_in, C_out), offsets row-major."""
    w = conv.weight.detach().float()
    cout, cin = w.shape[0], w.shape[-1]
    return w.reshape(cout, -1, cin).permute(1, 2, 0).reshape(-1, cout).contiguous()


class _Level:
    """Sites of one resolution level, sorted by key, and the tables convolutions need."""

    def __init__(self, coords: torch.Tensor, keys: torch.Tensor, shape: list[int]) -> None:
        self.coords = coords  # (N, 1 + D) int64, batch first, rows sorted by ``keys``
        self.keys = keys
        self.shape = shape
        self.n = coords.shape[0]
        self._nbr: torch.Tensor | None = None
        self._pairs: list | None = None

    def neighbours(self) -> torch.Tensor:
        """(N, 3^D) rows of each site's neighbours, offsets row-major (row N where there is none).

        Keys are sorted, so the three neighbours along the last axis of one row of the kernel
        are consecutive: one ``searchsorted`` per kernel row (3^(D-1)) finds all three, and the
        site's own row needs none (its first candidate is the key before the site's own).
        """
        if self._nbr is None:
            strides, s = [], 1
            for size in reversed(self.shape):
                strides.append(s)
                s *= size + 2
            strides = strides[::-1]
            n, keys = self.n, self.keys
            cols = []
            for ks in itertools.product(range(3), repeat=len(self.shape) - 1):
                shift = sum((k - 1) * st for k, st in zip(ks, strides))
                first = keys + shift - 1
                if shift == 0:  # the site's own kernel row: the key before its own, or itself
                    pos = torch.arange(n)
                    pos[1:] -= (keys[:-1] == first[1:]).long()
                else:
                    pos = torch.searchsorted(keys, first)
                for dx in range(3):
                    p = pos.clamp(max=n - 1)
                    hit = keys[p] == first + dx
                    cols.append(torch.where(hit, p, n))
                    pos = pos + hit  # the next key along the row is past a hit
            self._nbr = torch.stack(cols, dim=1)
        return self._nbr

    def pairs(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """The neighbour table offset by offset, the centre excluded: (k, rows, sources) for
        each offset k that some site has, rows = the sites with a neighbour at offset k and
        sources = that neighbour's row (what offset-by-offset convolutions multiply)."""
        if self._pairs is None:
            nbr = self.neighbours()
            n, k = nbr.shape
            self._pairs = []
            for j in range(k):
                if j == k // 2:
                    continue
                rows = (nbr[:, j] < n).nonzero().squeeze(1)
                if rows.numel():
                    self._pairs.append((j, rows, nbr[:, j].index_select(0, rows)))
        return self._pairs


def chunk_plan(n: int, step: int) -> tuple[int, int]:
    """How to cut ``n`` rows into GEMM chunks of about ``step`` rows: (rows per chunk, quantum).

    The chunks are (nearly) equal and each chunk's GEMM row count is rounded up to a multiple
    of the quantum ``step // 16``: a chunk multiplies fewer than a quantum of padding rows
    (rounding every chunk to ``step`` rows instead wasted up to half of a deep level's
    multiplications), and one filter shape sees at most 17 row counts however event sizes
    vary, so oneDNN's cache of GEMM primitives (one per shape) stays small and bounded."""
    quantum = max(16, step // 16)
    chunks = max(1, -(-n // step))
    return -(-(-(-n // chunks)) // quantum) * quantum, quantum


def use_pairs(dtype: torch.dtype) -> bool:
    """Whether submanifold convolutions run offset by offset (:meth:`_Level.pairs`: one gather,
    one small GEMM and one conflict-free ``index_add_`` per offset, only existing neighbour
    pairs multiplied) rather than as one gather-GEMM over every slot of the table.

    float32 (and float64): offset by offset. About half of a 2D level's 3^D slots hold a site,
    and a GEMM with K = C_in runs as fast per FLOP as one with K = 3^D C_in (AVX2, one thread:
    67 vs 44 GFLOP/s at level 0's shape, 85 vs 84 at level 4's), so skipping the empty slots
    wins: a training step takes 0.94-1.0 s instead of 1.3 s. bfloat16: one gather-GEMM. The
    per-offset sums would be rounded to bfloat16 at each offset, and one large GEMM is what
    AVX512-BF16/AMX run fastest."""
    return dtype in (torch.float32, torch.float64)


def _keys(coords: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Linear keys with one empty slot each side per axis, so that a neighbour across an edge
    (x - 1 or x + 1) never aliases a site of the next row."""
    key = coords[:, 0].clone()
    for d, size in enumerate(shape):
        key.mul_(size + 2).add_(coords[:, 1 + d] + 1)
    return key


def _coarsen(level: _Level) -> tuple[_Level, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k=2, s=2 coarser level: (coarse level, parent of each fine site, child slot of each
    fine site, (N_coarse, 2^D) table of children (row N_fine where there is none))."""
    dim = len(level.shape)
    fine = level.coords
    coarse = fine.clone()
    coarse[:, 1:] >>= 1
    shape = [(s + 1) // 2 for s in level.shape]
    keys, parent = torch.unique(_keys(coarse, shape), sorted=True, return_inverse=True)
    n_coarse = keys.shape[0]
    coarse_coords = torch.empty((n_coarse, 1 + dim), dtype=torch.int64)
    coarse_coords[parent] = coarse
    slot = torch.zeros(level.n, dtype=torch.int64)
    for d in range(dim):
        slot.mul_(2).add_(fine[:, 1 + d] & 1)
    children = torch.full((n_coarse * 2**dim,), level.n, dtype=torch.int64)
    children[parent * 2**dim + slot] = torch.arange(level.n)
    return _Level(coarse_coords, keys, shape), parent, slot, children.view(n_coarse, 2**dim)


class FastUResNet:
    """Inference-only twin of a trained ``SparseUResNet`` (same weights, same outputs).

    ``FastUResNet(model)(indices, features, spatial_shape)`` -> logits (N, num_classes) float32,
    rows in input order. ``precision``: "fp32" or "bf16".
    """

    def __init__(self, model, precision: str = "fp32", chunk_bytes: int = 4 << 20) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r} unknown; expected fp32 or bf16")
        self.config = model.config
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.chunk_bytes = int(chunk_bytes)
        cast = lambda w: w.to(self.dtype).contiguous()  # noqa: E731
        affine = lambda bn: tuple(v.to(self.dtype) for v in _affine(bn))  # noqa: E731
        self.input_scale = float(model.config.input_scale)
        self.stem = cast(_matrix(model.stem))

        def block(b):
            s2, t2 = _affine(b.norm2.bn)
            w1 = _matrix(b.conv1) * s2[None, :]  # fold the second BatchNorm into conv1
            return {
                "pre": affine(b.norm1.bn),
                "w1": cast(w1),
                "b1": t2.to(self.dtype),
                "w2": cast(_matrix(b.conv2)),
                "proj": None if b.shortcut is None else cast(b.shortcut.weight.detach().float().t()),
            }

        self.encoder = [[block(b) for b in blocks] for blocks in model.encoder]
        self.down = [(affine(norm.bn), cast(_matrix(conv))) for norm, conv in model.down]
        self.up = []
        for norm, inv in model.up:
            w = inv.weight.detach().float()  # (C_out, *k, C_in)
            cout, cin = w.shape[0], w.shape[-1]
            # (C_in, 2^D x C_out): column block j is the filter slice of child slot j
            wcat = w.reshape(cout, -1, cin).permute(2, 1, 0).reshape(cin, -1)
            self.up.append((affine(norm.bn), cast(wcat)))
        self.decoder = [[block(b) for b in blocks] for blocks in model.decoder]
        self.head_pre = _affine(model.head_norm)
        self.head_w = model.head.weight.detach().float().t().contiguous()
        self.head_b = model.head.bias.detach().float()
        self.relu_slope = float(model.config.leakiness)
        self._gbuf: torch.Tensor | None = None  # gather buffer, reused by every convolution
        self.flops: int | None = None
        """The FLOP count while :meth:`count_flops` runs; None otherwise."""

    # ---------------------------------------------------------------- pieces
    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu_slope > 0:
            return torch.nn.functional.leaky_relu_(x, self.relu_slope)
        return torch.relu_(x)

    def _padded(self, n: int, c: int) -> torch.Tensor:
        """(n + 1, c) buffer in the compute dtype whose last row (the missing neighbour) is 0."""
        buf = torch.empty((n + 1, c), dtype=self.dtype)
        buf[n].zero_()
        return buf

    def _norm_act(self, x: torch.Tensor, affine) -> torch.Tensor:
        """act(x * scale + shift) into a padded compute-dtype buffer."""
        scale, shift = affine
        buf = self._padded(*x.shape)
        self._act(torch.addcmul(shift, x, scale, out=buf[:-1]))
        return buf

    def _conv(self, xp: torch.Tensor, table: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
              accumulate: bool = False, flops: int | None = None, bias: torch.Tensor | None = None,
              act: bool = False) -> torch.Tensor:
        """out[i] (+)= concat_j xp[table[i, j]] @ w (+ bias, then the activation if ``act``), in
        chunks of rows; xp is a padded buffer.
        ``flops``: this convolution's FLOPs where the table does not give them (inverse conv).

        Chunks and their GEMM row counts follow :func:`chunk_plan`.
        """
        n, k = table.shape
        c = xp.shape[1]
        size, quantum = chunk_plan(n, max(256, self.chunk_bytes // (k * c * xp.element_size())))
        if self._gbuf is None or self._gbuf.numel() < size * k * c:
            self._gbuf = torch.zeros(size * k * c, dtype=self.dtype)
        if self.flops is not None:
            self.flops += 2 * int((table < xp.shape[0] - 1).sum()) * c * w.shape[1] if flops is None else flops
        for a in range(0, n, size):
            rows = table[a:a + size].reshape(-1)
            m = rows.shape[0] // k
            mp = -(-m // quantum) * quantum
            torch.index_select(xp, 0, rows, out=self._gbuf[: m * k * c].view(-1, c))
            g = self._gbuf[: mp * k * c].view(mp, k * c)  # rows past m: stale but finite, dropped
            chunk = out[a:a + m]
            if accumulate and m == mp:
                chunk.addmm_(g, w)  # the GEMM adds into the output: no temporary, no second pass
            elif accumulate:
                chunk += torch.mm(g, w)[:m]
            elif m == mp:
                torch.mm(g, w, out=chunk) if bias is None else torch.addmm(bias, g, w, out=chunk)
            else:
                chunk.copy_((torch.mm(g, w) if bias is None else torch.addmm(bias, g, w))[:m])
            if act:  # while the chunk is in cache
                self._act(chunk)
        return out

    def _subm(self, xp: torch.Tensor, level: _Level, w: torch.Tensor, out: torch.Tensor,
              accumulate: bool = False, bias: torch.Tensor | None = None, act: bool = False) -> torch.Tensor:
        """A submanifold convolution of the padded ``xp`` on ``level``, arguments as :meth:`_conv`:
        offset by offset or as one gather-GEMM, as :func:`use_pairs` says."""
        if not use_pairs(self.dtype):
            return self._conv(xp, level.neighbours(), w, out, accumulate=accumulate, bias=bias, act=act)
        x = xp[:-1]
        c, cout = x.shape[1], w.shape[1]
        wk = w.view(-1, c, cout)
        centre = wk[wk.shape[0] // 2]
        pairs = level.pairs()
        if self.flops is not None:
            self.flops += 2 * (x.shape[0] + sum(rows.shape[0] for _, rows, _ in pairs)) * c * cout
        if accumulate:
            out.addmm_(x, centre)
        elif bias is None:
            torch.mm(x, centre, out=out)
        else:
            torch.addmm(bias, x, centre, out=out)
        for k, rows, src in pairs:
            out.index_add_(0, rows, torch.mm(xp.index_select(0, src), wk[k]))
        if act:
            self._act(out)
        return out

    def _rows_mm(self, x: torch.Tensor, w: torch.Tensor, flops: int = 0) -> torch.Tensor:
        """x @ w through :meth:`_conv` (no gather needed), so the GEMM row counts stay bounded."""
        rows = torch.arange(x.shape[0]).view(-1, 1)
        return self._conv(x, rows, w, torch.empty((x.shape[0], w.shape[1]), dtype=self.dtype), flops=flops)

    def _block(self, x: torch.Tensor, p: dict, level: _Level) -> torch.Tensor:
        """Pre-activation residual block; adds into and returns the residual stream (compute dtype)."""
        n = x.shape[0]
        identity = x if p["proj"] is None else self._rows_mm(x, p["proj"])
        h = self._padded(n, p["w1"].shape[1])
        self._subm(self._norm_act(x, p["pre"]), level, p["w1"], h[:-1], bias=p["b1"], act=True)  # folded BatchNorm
        return self._subm(h, level, p["w2"], identity, accumulate=True)

    def count_flops(self, indices: torch.Tensor, features: torch.Tensor, spatial_shape) -> int:
        """The convolutions' FLOPs on this input: 2 x neighbour pairs x C_in x C_out summed
        over every convolution (the count of spconv's rulebooks for the same network: the
        useful multiply-adds, not the zero rows of missing neighbours). Runs one forward."""
        self.flops = 0
        try:
            self(indices, features, spatial_shape)
            return int(self.flops)
        finally:
            self.flops = None

    # ---------------------------------------------------------------- forward
    @torch.no_grad()
    def __call__(self, indices: torch.Tensor, features: torch.Tensor, spatial_shape) -> torch.Tensor:
        cfg = self.config
        if indices.shape[0] == 0:
            return torch.zeros((0, cfg.num_classes))
        if features.shape[1] != cfg.in_channels:
            raise ValueError(f"uresnet: expected {cfg.in_channels} feature channel(s), got {features.shape[1]}")
        from .uresnet import prepare_input

        features = prepare_input(cfg, indices, features)
        s = 2 ** (cfg.depth - 1)
        shape = [int(-(-int(n) // s) * s) for n in spatial_shape]
        slots = 2 ** len(shape)
        coords = indices.long()
        keys = _keys(coords, shape)
        keys, order = torch.sort(keys)
        level = _Level(coords[order], keys, shape)
        xp = self._padded(level.n, cfg.in_channels)
        xp[:-1] = features[order] * self.input_scale
        x = self._subm(xp, level, self.stem, torch.empty((level.n, self.stem.shape[1]), dtype=self.dtype))
        skips = []
        for i, blocks in enumerate(self.encoder):
            for p in blocks:
                x = self._block(x, p, level)
            if i < len(self.down):
                coarse, parent, slot, children = _coarsen(level)
                skips.append((x, level, parent * slots + slot))
                affine, w = self.down[i]
                x = self._conv(self._norm_act(x, affine), children, w,
                               torch.zeros((coarse.n, w.shape[1]), dtype=self.dtype), accumulate=True)
                level = coarse
        for (affine, wcat), blocks in zip(self.up, self.decoder):
            skip, level, pick = skips.pop()  # frees each finer level's tables once used
            y = self._rows_mm(self._norm_act(x, affine)[:-1], wcat,  # (N_coarse, 2^D x C_out)
                              flops=2 * pick.shape[0] * wcat.shape[0] * wcat.shape[1] // slots)
            up = y.view(-1, wcat.shape[1] // slots).index_select(0, pick)
            x = torch.cat([up, skip], dim=1)
            for p in blocks:
                x = self._block(x, p, level)
        scale, shift = self.head_pre
        logits = torch.addmm(self.head_b, self._act(torch.addcmul(shift, x.float(), scale)), self.head_w)
        out = torch.empty_like(logits)
        out[order] = logits
        return out
