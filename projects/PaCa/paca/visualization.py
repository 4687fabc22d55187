"""PaCa's cluster assignments as pictures (paper §3.3): M heatmaps per stage (or per block).

The heatmap of cluster m is sigmoid(logit) of its assignment logits *before* the softmax
over positions, reshaped to the stage's grid; the mask of eq. (7) keeps the positions above
the heatmap's mean. ``render_cluster_grid`` tiles one stage (or one block, with block-wise
clustering) per band of rows, each tile the image with a heatmap (or the eq. (8) masked
image) of one cluster, and writes a PNG.
"""
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import Tensor

from .modeling.paca_vit import PaCaViT


@torch.no_grad()
def cluster_logits(vit: PaCaViT, images: Tensor) -> List[Optional[Tensor]]:
    """Per stage, the cluster logits (B, M, H_i, W_i) of ``images`` (B, 3, H, W), normalised as
    the model expects — those of the stage's first clustering block, or the teacher's; None
    for plain-MHSA stages."""
    _, recorded = vit.forward_stages(images, with_cluster_logits=True)
    first: Dict[int, Tensor] = {}
    for (stage, _), logits in sorted(recorded.items()):
        first.setdefault(stage, logits)
    return [first.get(i) for i in range(len(vit.stages))]


@torch.no_grad()
def block_cluster_logits(vit: PaCaViT, images: Tensor) -> Dict[str, Tensor]:
    """Every assignment's logits (B, M, H_i, W_i), labelled "stage i, block j" (1-based) in
    forward order, or "stage i, teacher": with block-wise clustering, one entry per block."""
    _, recorded = vit.forward_stages(images, with_cluster_logits=True)
    return {
        f"stage {i + 1}, " + ("teacher" if j < 0 else f"block {j + 1}"): logits
        for (i, j), logits in sorted(recorded.items())
    }


def heatmaps(logits: Tensor) -> Tensor:
    """(M, h, w) logits → (M, h, w) sigmoid scores in [0, 1] (paper §3.3)."""
    return logits.float().sigmoid()


def masks(scores: Tensor) -> Tensor:
    """Eq. (7): (M, h, w) bool, the positions of each map above that map's mean."""
    return scores > scores.flatten(1).mean(dim=1)[:, None, None]


def _tile(image: np.ndarray, score: Tensor, mode: str, size: Tuple[int, int], alpha: float) -> np.ndarray:
    """One tile (h, w, 3) uint8: ``image`` with one cluster's heatmap or mask."""
    h, w = size
    if mode == "mask":
        mask = F.interpolate(masks(score[None])[None].float(), size=(h, w), mode="nearest")[0, 0].numpy()
        return (image * mask[..., None]).astype(np.uint8)  # eq. (8)
    # stretched per map: a cluster's spatial pattern matters here, not its absolute level
    s = score - score.min()
    s = s / s.max().clamp(min=1e-6)
    s = F.interpolate(s[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    color = colormaps["jet"](s)[..., :3] * 255
    return ((1 - alpha) * image + alpha * color).astype(np.uint8)


def render_cluster_grid(
    image: np.ndarray,
    stage_logits: Union[Sequence[Optional[Tensor]], Mapping[str, Tensor]],
    path: str,
    columns: int = 10,
    tile_size: int = 64,
    max_clusters: Optional[int] = None,
    mode: str = "heatmap",
    alpha: float = 0.5,
) -> Path:
    """Write a PNG grid of the cluster heatmaps of one image.

    Args:
        image: (H, W, 3) uint8 RGB, the picture the logits were computed from (the tiles
            show the part of it the grid covers).
        stage_logits: per stage (M, h, w) logits, or None (plain-MHSA stages are skipped);
            or a mapping label → (M, h, w) logits, e.g. one entry per block (see
            ``block_cluster_logits``).
        path: the PNG to write (parent folders are created).
        columns: tiles per row; a stage (or mapping entry) starts a new row, labelled
            "stage i" (or with its key) and its number of clusters.
        max_clusters: per stage (or entry), draw only the clusters with the largest mass (sum of
            sigmoid scores), e.g. to keep 100-cluster stages small.
        mode: "heatmap" (colour overlay) or "mask" (the eq. (8) masked image).
    Returns:
        the path written.
    """
    if mode not in ("heatmap", "mask"):
        raise ValueError(f'mode must be "heatmap" or "mask", got {mode!r}')
    if not isinstance(stage_logits, Mapping):
        stage_logits = {f"stage {i + 1}": lg for i, lg in enumerate(stage_logits)}
    groups = [(label, heatmaps(lg)) for label, lg in stage_logits.items() if lg is not None]
    if not groups:
        raise ValueError("no stage has clusters (all M = 0)")
    th = tw = tile_size
    label_h = 14
    picture = np.asarray(Image.fromarray(image).resize((tw, th), Image.BILINEAR), dtype=np.float32)

    bands = []
    for label, scores in groups:
        if max_clusters is not None and scores.shape[0] > max_clusters:
            order = scores.flatten(1).sum(dim=1).argsort(descending=True)[:max_clusters]
            scores = scores[order.sort().values]
        rows = -(-scores.shape[0] // columns)
        band = np.full((label_h + rows * th, columns * tw, 3), 255, dtype=np.uint8)
        for m, score in enumerate(scores):
            r, c = divmod(m, columns)
            band[label_h + r * th : label_h + (r + 1) * th, c * tw : (c + 1) * tw] = _tile(
                picture, score, mode, (th, tw), alpha
            )
        labelled = Image.fromarray(band)
        ImageDraw.Draw(labelled).text((2, 1), f"{label}: {scores.shape[0]} clusters", fill=(0, 0, 0))
        bands.append(np.asarray(labelled))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(bands, axis=0)).save(out)
    return out
