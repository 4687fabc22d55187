"""The three products of ``local_clustering`` as autograd functions, over any engine that
computes them.

The gradient of each product is made of the other two. With ``grad`` the gradient of the
output::

    gather(values, weights):  ∂values = scatter(grad, weights),  ∂weights = affinity(grad, values)
    affinity(fine, coarse):   ∂fine   = gather(coarse, grad),    ∂coarse  = scatter(fine, grad)
    scatter(fine, weights):   ∂fine   = gather(grad, weights),   ∂weights = affinity(fine, grad)

so an engine computes products and never derivatives. A backward pass asks its engine for
both products in one call (an engine may stage the shared input once for both); under
``create_graph`` it goes through the autograd functions instead, so that double backward
works too. Only the inputs are saved for backward, nothing larger.

An engine is a function ``engine(geometry, fine, weights, coarse, products, fine_format)``:

- ``geometry``: the coarse grid (h, w), the grid (g_y, g_x) and the kernel k;
- ``fine`` (B, C, h·g_y, w·g_x), ``weights`` (B, K, h·g_y, w·g_x), ``coarse`` (B, C, h, w):
  one dtype, fine maps already fitted to the grid; None where no requested product reads it;
- ``products``: any of "gather" (→ (B, C, h·g_y, w·g_x), in ``fine_format``), "affinity"
  (→ (B, K, h·g_y, w·g_x), unmasked logits) and "scatter" (→ sums (B, C, h, w));
- returns {product: result}.

The autograd functions keep their names: FLOP counting (``hcformer.engine.analysis``)
recognises them.
"""
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Geometry", "Engine", "entry_points"]


class Geometry(NamedTuple):
    """The sizes an engine works with: the coarse grid, the fine cells per coarse cell, the
    candidates per axis."""

    coarse_hw: Tuple[int, int]
    grid: Tuple[int, int]
    kernel: int


Engine = Callable[..., Dict[str, Tensor]]


def _hw(x: Tensor) -> Tuple[int, int]:
    # Plain ints: under tracing (fvcore's FLOP counts), sizes read from tensors are tracked
    # values, which the tracer cannot follow into the arguments of an autograd function.
    return int(x.shape[-2]), int(x.shape[-1])


def _fit_to_grid(x: Optional[Tensor], geometry: Geometry) -> Optional[Tensor]:
    """Zero-pad a fine map at the bottom/right to h·gy × w·gx (a copy only when needed)."""
    (h, w), (gy, gx) = geometry.coarse_hw, geometry.grid
    if x is None or x.shape[-2:] == (h * gy, w * gx):
        return x
    return F.pad(x, (0, w * gx - x.shape[-1], 0, h * gy - x.shape[-2]))


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for a channels-last 4-D tensor, else contiguous_format."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _run(
    engine: Engine, geometry: Geometry, fine_hw: Tuple[int, int], products: Sequence[str],
    fine: Optional[Tensor] = None, weights: Optional[Tensor] = None, coarse: Optional[Tensor] = None,
    fine_format: torch.memory_format = torch.contiguous_format,
) -> Dict[str, Tensor]:
    """``engine`` on the fine maps fitted to the grid, fine-grid results cropped to ``fine_hw``;
    in the dtype of the inputs (autocast would otherwise move the engine's matrix products to
    half precision whatever the caller chose, e.g. the fp32 clustering)."""
    device = next(t for t in (fine, weights, coarse) if t is not None).device
    with torch.autocast(device_type=device.type, enabled=False):
        out = engine(
            geometry, _fit_to_grid(fine, geometry), _fit_to_grid(weights, geometry), coarse, products, fine_format
        )
    return {name: t if name == "scatter" else t[..., : fine_hw[0], : fine_hw[1]] for name, t in out.items()}


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, weights: Tensor, engine: Engine, geometry: Geometry, fine_hw) -> Tensor:
        ctx.engine, ctx.geometry, ctx.fine_hw = engine, geometry, fine_hw
        ctx.save_for_backward(values, weights)
        return _run(engine, geometry, fine_hw, ("gather",), weights=weights, coarse=values,
                    fine_format=_memory_format(values))["gather"]

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, weights = ctx.saved_tensors
        need_values, need_weights = ctx.needs_input_grad[:2]
        engine, geometry, fine_hw = ctx.engine, ctx.geometry, ctx.fine_hw
        if torch.is_grad_enabled():
            grad_values = _Scatter.apply(grad, weights, engine, geometry) if need_values else None
            grad_weights = _Affinity.apply(grad, values, engine, geometry, fine_hw) if need_weights else None
            return grad_values, grad_weights, None, None, None
        out = _run(
            engine, geometry, fine_hw, ("scatter",) * need_values + ("affinity",) * need_weights,
            fine=grad, weights=weights if need_values else None, coarse=values if need_weights else None,
        )
        return out.get("scatter"), out.get("affinity"), None, None, None


class _Affinity(torch.autograd.Function):
    """Unmasked logits; excluded candidates are masked by the caller."""

    @staticmethod
    def forward(ctx, fine: Tensor, coarse: Tensor, engine: Engine, geometry: Geometry, fine_hw) -> Tensor:
        ctx.engine, ctx.geometry, ctx.fine_hw = engine, geometry, fine_hw
        ctx.save_for_backward(fine, coarse)
        return _run(engine, geometry, fine_hw, ("affinity",), fine=fine, coarse=coarse)["affinity"]

    @staticmethod
    def backward(ctx, grad: Tensor):
        fine, coarse = ctx.saved_tensors
        need_fine, need_coarse = ctx.needs_input_grad[:2]
        engine, geometry, fine_hw = ctx.engine, ctx.geometry, ctx.fine_hw
        if torch.is_grad_enabled():
            grad_fine = _Gather.apply(coarse, grad, engine, geometry, fine_hw) if need_fine else None
            grad_coarse = _Scatter.apply(fine, grad, engine, geometry) if need_coarse else None
            return grad_fine, grad_coarse, None, None, None
        out = _run(
            engine, geometry, fine_hw, ("gather",) * need_fine + ("scatter",) * need_coarse,
            fine=fine if need_coarse else None, weights=grad, coarse=coarse if need_fine else None,
            fine_format=_memory_format(fine),
        )
        return out.get("gather"), out.get("scatter"), None, None, None


class _Scatter(torch.autograd.Function):
    """Sums only; the normaliser is a cheap reduction of the weights done by the caller."""

    @staticmethod
    def forward(ctx, fine: Tensor, weights: Tensor, engine: Engine, geometry: Geometry) -> Tensor:
        ctx.engine, ctx.geometry, ctx.fine_hw = engine, geometry, _hw(fine)
        ctx.save_for_backward(fine, weights)
        return _run(engine, geometry, ctx.fine_hw, ("scatter",), fine=fine, weights=weights)["scatter"]

    @staticmethod
    def backward(ctx, grad: Tensor):
        fine, weights = ctx.saved_tensors
        need_fine, need_weights = ctx.needs_input_grad[:2]
        engine, geometry, fine_hw = ctx.engine, ctx.geometry, ctx.fine_hw
        if torch.is_grad_enabled():
            grad_fine = _Gather.apply(grad, weights, engine, geometry, fine_hw) if need_fine else None
            grad_weights = _Affinity.apply(fine, grad, engine, geometry, fine_hw) if need_weights else None
            return grad_fine, grad_weights, None, None
        out = _run(
            engine, geometry, fine_hw, ("gather",) * need_fine + ("affinity",) * need_weights,
            fine=fine if need_weights else None, weights=weights if need_fine else None, coarse=grad,
            fine_format=_memory_format(fine),
        )
        return out.get("gather"), out.get("affinity"), None, None


def entry_points(engine: Engine) -> Tuple[Callable[..., Tensor], Callable[..., Tensor], Callable[..., Tensor]]:
    """``affinity``, ``gather`` and ``scatter`` computed by ``engine``, differentiable, with the
    signatures of ``local_clustering``'s ``reference_*`` functions (inputs checked and of one
    dtype, grid (g_y, g_x), logits unmasked)."""

    def affinity(fine: Tensor, coarse: Tensor, grid: Tuple[int, int], kernel: int) -> Tensor:
        return _Affinity.apply(fine, coarse, engine, Geometry(_hw(coarse), grid, kernel), _hw(fine))

    def gather(values: Tensor, weights: Tensor, grid: Tuple[int, int], kernel: int) -> Tensor:
        return _Gather.apply(values, weights, engine, Geometry(_hw(values), grid, kernel), _hw(weights))

    def scatter(fine: Tensor, weights: Tensor, coarse_hw: Tuple[int, int], grid: Tuple[int, int], kernel: int) -> Tensor:
        geometry = Geometry((int(coarse_hw[0]), int(coarse_hw[1])), grid, kernel)  # plain ints: see _hw
        return _Scatter.apply(fine, weights, engine, geometry)

    return affinity, gather, scatter
