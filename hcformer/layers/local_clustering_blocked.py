"""The "blocked" backend of the local clustering primitive: the products of
``local_clustering`` as one small matrix product per coarse cell.

The g_y·g_x fine pixels of a cell form a (G = g_y·g_x) × C block, the K candidate cells a
K × C block, and

    gather:   out_cell (G × C)  = weights_cell (G × K) @ candidates (K × C)
    affinity: logits_cell (G × K) = fine_cell (G × C) @ candidatesᵀ (C × K)
    scatter:  to_candidates (K × C) = weights_cellᵀ (K × G) @ fine_cell (G × C)

so each is a single ``torch.bmm`` over the cells, in which the C channels are the contiguous
axis (channels last). The candidate blocks are never copied K times: the coarse map is laid
out once as "column windows", ``windows[i, j, d] = coarse[i + d - r, j - r]`` for
d ∈ [0, k) over a grid padded by r = k // 2, so that the K candidates of cell (i, j) are the
K consecutive rows starting at window (i, j) (in (dx, dy) order). The per-cell K × C
blocks are then overlapping views of that buffer (``as_strided``), k times the coarse map
rather than K times. Cells are numbered along the padded rows so that the batch stride is
uniform; the 2r pad columns at the end of every row are computed and dropped.

The work is done in blocks of coarse rows whose staging buffers fit in the CPU caches
(``CHUNK_BYTES``); the block loop runs a few dozen times at most. Channels-last fine maps
are read or written once, straight from or into the blocks, and gather keeps the memory
format of its values. A channels-first (NCHW) fine map goes through a channels-last buffer
one image at a time: PyTorch's tiled 2-D transpose is 2–3× faster on CPU than the permuted
copy that staging it directly would be. A backward pass is two of the products in one sweep
that stages their shared input once (``local_clustering_autograd``, which makes the entry
points ``affinity``, ``gather`` and ``scatter`` of this engine).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .local_clustering_autograd import Geometry, entry_points

__all__ = ["affinity", "gather", "scatter", "CHUNK_BYTES"]

# Staging buffers per chunk, in bytes. On CPU they should stay in the L2/L3 cache (measured
# on a Zen 5 / 2 MiB L2: 1–4 MiB is the plateau, see benchmarks/RESULTS.md); on GPUs a chunk
# costs a few kernel launches, so chunks are large and bound only the extra memory.
CHUNK_BYTES = {"cpu": 2 * 2**20}
DEFAULT_CHUNK_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------- cell layout
class _Cells:
    """Chunked channels-last layout of the cells of one (fine, coarse) pair of grids.

    Work is split into groups of images and, within a group, blocks of coarse rows
    [i0, i1); the cells of a block (image, row, padded column) are numbered row-major over
    the padded width ``wp = w + 2r``. Staging buffers are flat and reused from block to
    block; per block they hold, channels last:

    - windows ``(cells, k, C)``: the column windows of a coarse map (module docstring);
    - fine blocks ``(cells, G, C)``: the G fine pixels of each cell, row-major;
    - weights ``(cells, G, K)``: per-pixel candidate weights, candidates in (dx, dy) order,
      the order in which they lie in the windows.

    Buffers start as zeros and the pad columns of fine blocks and weights are never
    written, so pad cells have zero weights and add nothing to a scatter. Fine maps and
    weights are read from / written to channels-last images (nb, H, W, C) of the group.
    """

    def __init__(self, coarse_hw: Tuple[int, int], grid: Tuple[int, int], kernel: int, batch: int):
        self.h, self.w = coarse_hw
        self.gy, self.gx = grid
        self.k = kernel
        self.r = kernel // 2
        self.K = kernel * kernel
        self.G = self.gy * self.gx
        self.wp = self.w + 2 * self.r
        self.batch = batch

    def groups(self, bytes_per_cell: int, device: torch.device) -> List[Tuple[int, int, List[Tuple[int, int]]]]:
        """(b0, b1, row blocks) such that the largest staging buffer fits ``CHUNK_BYTES``:
        blocks of rows of one image, or several whole images as one block."""
        budget = CHUNK_BYTES.get(device.type, DEFAULT_CHUNK_BYTES)
        rows = max(1, budget // max(1, bytes_per_cell * self.wp))
        if rows >= self.h:
            step = rows // self.h
            return [(b0, min(b0 + step, self.batch), [(0, self.h)]) for b0 in range(0, self.batch, step)]
        blocks = [(i0, min(i0 + rows, self.h)) for i0 in range(0, self.h, rows)]
        return [(b, b + 1, blocks) for b in range(self.batch)]

    def cells(self, images: int, rows: int) -> int:
        """Cells of a block, pad columns included."""
        return images * rows * self.wp

    def computed(self, images: int, rows: int) -> int:
        # The windows of the last 2r cells (pad columns of the last row) would run past the
        # window buffer; they are pad cells, so they are simply not computed.
        return self.cells(images, rows) - 2 * self.r

    # --------------------------------------------------------------- coarse maps
    def pad(self, coarse: Tensor) -> Tensor:
        """(B, C, h, w) → zero-bordered channels-last copy (B, h + 2r, wp, C)."""
        B, C = coarse.shape[:2]
        r = self.r
        padded = coarse.new_zeros(B, self.h + 2 * r, self.wp, C)
        padded[:, r : r + self.h, r : r + self.w].copy_(_channels_last(coarse, 0, B))
        return padded

    def load_windows(self, buf: Tensor, padded: Tensor, b0: int, b1: int, i0: int, i1: int) -> Tensor:
        """Copy the column windows of a block from ``pad(coarse)`` into the flat ``buf``;
        returns the (cells, K, C) candidate blocks, overlapping views of ``buf``."""
        C = padded.shape[-1]
        s_img, s_row = padded.stride(0), padded.stride(1)
        shape = (b1 - b0, i1 - i0, self.wp, self.k, C)
        # window (i, j) slot d is padded row i + d: an overlapping view, one copy
        src = padded.as_strided(shape, (s_img, s_row, C, s_row, 1), padded.storage_offset() + b0 * s_img + i0 * s_row)
        buf[: math.prod(shape)].view(shape).copy_(src)
        return buf.as_strided((self.computed(b1 - b0, i1 - i0), self.K, C), (self.k * C, C, 1))

    def fold_windows(self, acc: Tensor, to_candidates: Tensor, buf: Tensor, b0: int, b1: int, i0: int, i1: int):
        """Add the (cells, K, C) per-candidate sums of a block into the padded coarse
        accumulator ``acc`` (B, h + 2r, wp, C): the transpose of ``load_windows``."""
        C, n = acc.shape[-1], to_candidates.shape[0]
        win = buf[: self.cells(b1 - b0, i1 - i0) * self.k * C].view(-1, self.k, C).zero_()
        per_dx = to_candidates.view(n, self.k, self.k, C)
        for e in range(self.k):  # candidate (·, dx = e - r) of cell c lies in window c + e
            win[e : e + n] += per_dx[:, e]
        win = win.view(b1 - b0, i1 - i0, self.wp, self.k, C)
        for d in range(self.k):  # slot d of window row i is padded row i + d
            acc[b0:b1, i0 + d : i1 + d] += win[:, :, :, d]

    # --------------------------------------------------------------- fine maps
    def _blocks(self, buf: Tensor, images: int, i0: int, i1: int, *channels: int) -> Tensor:
        """(nb, R, w, gy, gx, *channels) view of the flat ``buf`` (pad columns left out)."""
        shape = (images, i1 - i0, self.wp, self.gy, self.gx) + channels
        return buf[: math.prod(shape)].view(shape)[:, :, : self.w]

    def _image_blocks(self, image: Tensor, i0: int, i1: int) -> Tensor:
        """(nb, H, W, C) channels-last images → (nb, R, w, gy, gx, C) view of rows [i0, i1)."""
        nb, C = image.shape[0], image.shape[-1]
        blocks = image.reshape(nb, self.h, self.gy, self.w, self.gx, C)[:, i0:i1]
        return blocks.permute(0, 1, 3, 2, 4, 5)

    def load_fine(self, buf: Tensor, image: Tensor, i0: int, i1: int) -> Tensor:
        """Stage rows [i0, i1) of channels-last images (nb, H, W, C): (cells, G, C) blocks."""
        nb, C = image.shape[0], image.shape[-1]
        self._blocks(buf, nb, i0, i1, C).copy_(self._image_blocks(image, i0, i1))
        return buf[: self.computed(nb, i1 - i0) * self.G * C].view(-1, self.G, C)

    def store_fine(self, image: Tensor, buf: Tensor, i0: int, i1: int) -> None:
        """Write the (cells, G, C) blocks held in ``buf`` to rows [i0, i1) of ``image``."""
        nb, C = image.shape[0], image.shape[-1]
        self._image_blocks(image, i0, i1).copy_(self._blocks(buf, nb, i0, i1, C))

    def load_weights(self, buf: Tensor, image: Tensor, i0: int, i1: int) -> Tensor:
        """Stage channels-last weights (nb, H, W, K): (cells, G, K) blocks, (dx, dy) order."""
        nb, k = image.shape[0], self.k
        src = self._image_blocks(image, i0, i1).unflatten(-1, (k, k)).transpose(-1, -2)
        self._blocks(buf, nb, i0, i1, k, k).copy_(src)
        return buf[: self.computed(nb, i1 - i0) * self.G * self.K].view(-1, self.G, self.K)

    def store_weights(self, image: Tensor, buf: Tensor, i0: int, i1: int) -> None:
        """Write (cells, G, K) blocks ((dx, dy) order) to channels-last weights (nb, H, W, K)."""
        nb, k = image.shape[0], self.k
        dst = self._image_blocks(image, i0, i1).unflatten(-1, (k, k)).transpose(-1, -2)
        dst.copy_(self._blocks(buf, nb, i0, i1, k, k))


def _channels_last(x: Tensor, b0: int, b1: int, buf: Optional[Tensor] = None) -> Tensor:
    """Images [b0, b1) of ``x`` (B, C, H, W) as (nb, H, W, C): a view when channels are
    already the fastest axis, else a copy (into ``buf`` if given).

    For contiguous (NCHW) inputs the copy is one 2-D transpose per image, which PyTorch does
    in cache-sized tiles; a generic permuted copy is 2–3× slower on CPU.
    """
    view = x[b0:b1].permute(0, 2, 3, 1)
    if x.stride(1) == 1:
        return view
    nb, H, W, C = view.shape
    out = torch.empty(nb * H * W * C, dtype=x.dtype, device=x.device) if buf is None else buf[: nb * H * W * C]
    out = out.view(nb, H * W, C)
    if x.is_contiguous():
        for i in range(nb):
            out[i].copy_(x[b0 + i].reshape(C, H * W).t())
    else:
        out.view(nb, H, W, C).copy_(view)
    return out.view(nb, H, W, C)


def _write_images(out: Tensor, images: Tensor, b0: int) -> None:
    """Copy channels-last ``images`` (nb, H, W, C) into ``out[b0 : b0 + nb]`` (B, C, H, W)."""
    nb, H, W, C = images.shape
    if out.is_contiguous():
        for i in range(nb):  # tiled 2-D transposes, as in ``_channels_last``
            out[b0 + i].view(C, H * W).copy_(images[i].reshape(H * W, C).t())
    else:
        out[b0 : b0 + nb].permute(0, 2, 3, 1).copy_(images)


# ---------------------------------------------------------------------------- products
def blocked_products(
    geometry: Geometry,
    fine: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
    coarse: Optional[Tensor] = None,
    products: Sequence[str] = (),
    fine_format: torch.memory_format = torch.contiguous_format,
) -> Dict[str, Tensor]:
    """The per-cell products of the module docstring, over all cells, block by block: the
    engine of ``local_clustering_autograd``.

    Args:
        fine: (B, C, h·gy, w·gx), weights: (B, K, h·gy, w·gx), coarse: (B, C, h, w), all
            of one dtype; only those the requested products read are needed.
        products: any of "gather" (weights · coarse → (B, C, h·gy, w·gx), in
            ``fine_format``), "affinity" (fine · coarseᵀ → (B, K, h·gy, w·gx)) and
            "scatter" (weightsᵀ · fine → (B, C, h, w)).
    Returns:
        {product: result}. Staging the inputs once for several products is what makes the
        backward passes cheap: each needs two of them.
    """
    ref = next(t for t in (fine, weights, coarse) if t is not None)
    dtype, device = ref.dtype, ref.device
    B = ref.shape[0]
    C = (fine if fine is not None else coarse).shape[1]
    layout = _Cells(geometry.coarse_hw, geometry.grid, geometry.kernel, B)
    G, K, k = layout.G, layout.K, layout.k
    H, W = layout.h * layout.gy, layout.w * layout.gx
    per_cell = {"fine": G * C, "weights": G * K, "windows": k * C, "gather": G * C, "affinity": G * K, "scatter": K * C}
    staged = [n for n, t in (("fine", fine), ("weights", weights), ("windows", coarse)) if t is not None]
    names = staged + list(products)
    groups = layout.groups(max(per_cell[n] for n in names) * ref.element_size(), device)
    images = max(b1 - b0 for b0, b1, _ in groups)
    cells = max(layout.cells(b1 - b0, i1 - i0) for b0, b1, blocks in groups for i0, i1 in blocks)
    buffers = {n: torch.zeros(cells * per_cell[n], dtype=dtype, device=device) for n in names}

    def image_buffer(channels: int) -> Tensor:
        return torch.empty(images * H * W * channels, dtype=dtype, device=device)

    # inputs and outputs that are not channels last go through one image buffer each
    fine_img = image_buffer(C) if fine is not None and fine.stride(1) != 1 else None
    weights_img = image_buffer(K) if weights is not None and weights.stride(1) != 1 else None
    out = {}
    if "gather" in products:
        out["gather"] = torch.empty((B, C, H, W), dtype=dtype, device=device, memory_format=fine_format)
        gather_img = image_buffer(C) if fine_format != torch.channels_last else None
    if "affinity" in products:
        out["affinity"] = torch.empty((B, K, H, W), dtype=dtype, device=device)
        affinity_img = image_buffer(K)
    if "scatter" in products:
        acc = torch.zeros((B, layout.h + 2 * layout.r, layout.wp, C), dtype=dtype, device=device)
        fold_buf = torch.empty(cells * k * C, dtype=dtype, device=device)
    padded = layout.pad(coarse) if coarse is not None else None

    for b0, b1, blocks in groups:
        X = _channels_last(fine, b0, b1, fine_img) if fine is not None else None
        A = _channels_last(weights, b0, b1, weights_img) if weights is not None else None
        if "gather" in products:
            gathered = out["gather"][b0:b1].permute(0, 2, 3, 1)
            if gather_img is not None:
                gathered = gather_img[: gathered.numel()].view(gathered.shape)
        if "affinity" in products:
            affinities = affinity_img[: (b1 - b0) * H * W * K].view(b1 - b0, H, W, K)
        for i0, i1 in blocks:
            n = layout.computed(b1 - b0, i1 - i0)
            V = layout.load_windows(buffers["windows"], padded, b0, b1, i0, i1) if coarse is not None else None
            Xc = layout.load_fine(buffers["fine"], X, i0, i1) if fine is not None else None
            Ac = layout.load_weights(buffers["weights"], A, i0, i1) if weights is not None else None
            if "gather" in products:
                torch.bmm(Ac, V, out=buffers["gather"][: n * G * C].view(n, G, C))
                layout.store_fine(gathered, buffers["gather"], i0, i1)
            if "affinity" in products:
                torch.bmm(Xc, V.transpose(1, 2), out=buffers["affinity"][: n * G * K].view(n, G, K))
                layout.store_weights(affinities, buffers["affinity"], i0, i1)
            if "scatter" in products:
                to_candidates = buffers["scatter"][: n * K * C].view(n, K, C)
                torch.bmm(Ac.transpose(1, 2), Xc, out=to_candidates)
                layout.fold_windows(acc, to_candidates, fold_buf, b0, b1, i0, i1)
        if "gather" in products and gather_img is not None:
            _write_images(out["gather"], gathered, b0)
        if "affinity" in products:
            _write_images(out["affinity"], affinities, b0)
    if "scatter" in products:
        r = layout.r
        out["scatter"] = acc[:, r : r + layout.h, r : r + layout.w].permute(0, 3, 1, 2)
    return out


affinity, gather, scatter = entry_points(blocked_products)
