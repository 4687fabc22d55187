"""Pictures of HCFormer's clustering hierarchy, laid out like Fig. 5, III and IV of the paper.

Every picture is an RGB uint8 numpy array; nothing here reads or writes files or runs a model.
The inputs are an image, the hard clustering of each level at the image size (the
"clusterings" the model returns on request, see ``HCFormer.forward``), optionally the ground-truth segments (see
:func:`hcformer.evaluation.load_segment_ground_truth`) and the model's prediction for the image.

:func:`draw_hierarchy` returns two panels. Columns go from the finest level (0: the finest grid,
stride 4 for a 3-level ResNet) on the left to the coarsest (the stride-32 grid the transformer
decoder sees):

*hierarchy panel* (Fig. 5 / III)::

    boundaries level 0 | boundaries level 1 | ... | ground truth
    leakage    level 0 | leakage    level 1 | ... | prediction

- boundaries: thin yellow lines between clusters over the image; the title gives the level, its
  stride and the number of clusters;
- leakage: in red over the dimmed image, the pixels outside the majority ground-truth segment of
  their cluster (:func:`~hcformer.evaluation.leakage_mask`): the pixels that even the best
  labelling constant on every cluster gets wrong. In the hard-clustering view of §2.3, decoding
  through this level copies one value per cluster, so it loses at least these pixels. The title
  gives UE and ASA (lower UE / higher ASA is better; 1 − ASA is the red area's share of the
  labelled pixels). Ignored ground-truth pixels are never red;
- without ground truth, only the top row is drawn, ending with the prediction.

*cluster panel* (Fig. IV)::

    clusters level 0 | clusters level 1 | ... | prediction

one random colour per cluster, so that clusters that are not connected show as such.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer

from hcformer.evaluation.undersegmentation import UndersegmentationCounts, leakage_mask, undersegmentation_counts
from hcformer_deploy.id_maps import cluster_boundaries, resize_ids

__all__ = [
    "LevelMap",
    "HierarchyFigure",
    "draw_hierarchy",
    "cluster_boundaries",
    "draw_boundaries",
    "draw_leakage",
    "draw_cluster_map",
    "draw_segments",
    "draw_prediction",
    "visualization_metadata",
    "add_title",
]

BOUNDARY_COLOR = (255, 225, 0)  # yellow: visible on most photos, unlike white or black
LEAK_COLOR = (230, 20, 20)
IGNORE_COLOR = (40, 40, 40)
_GAP = 4  # pixels between the cells of a panel
_BACKGROUND = 255


@dataclass
class LevelMap:
    """The hard clustering of one level at the image size."""

    level: int
    labels: np.ndarray  # (H, W) integer cluster ids
    stride: Optional[int] = None  # stride of the level's grid w.r.t. the input, if known


@dataclass
class HierarchyFigure:
    """What :func:`draw_hierarchy` draws, and the scores written in its titles."""

    hierarchy: np.ndarray  # (H', W', 3) uint8: boundaries / leakage panel (Fig. 5)
    clusters: np.ndarray  # (H'', W'', 3) uint8: random-colour cluster maps (Fig. IV)
    scores: Dict[int, UndersegmentationCounts] = field(default_factory=dict)  # per level, with GT


# ---------------------------------------------------------------------------------------- cells
def check_sizes(image: np.ndarray, label_maps: Dict[str, np.ndarray], gt: Optional[np.ndarray], what: str = "image") -> None:
    """Raise ValueError unless ``image`` is (H, W, 3) uint8 RGB and every one of ``label_maps``
    (by name) and ``gt`` (if any) is (H, W); ``what`` names the image in the message."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{what} must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    size = image.shape[:2]
    for name, labels in label_maps.items():
        if labels.shape != size:
            raise ValueError(f"{name} of {what} has shape {labels.shape}, expected {size}")
    if gt is not None and gt.shape != size:
        raise ValueError(f"ground truth of {what} has shape {gt.shape}, expected {size}")


def draw_boundaries(image: np.ndarray, labels: np.ndarray, color: Tuple[int, int, int] = BOUNDARY_COLOR) -> np.ndarray:
    """The image with the cluster boundaries of ``labels`` drawn in ``color``."""
    out = image.copy()
    out[cluster_boundaries(labels)] = color
    return out


def _dimmed(image: np.ndarray, brightness: float = 0.45) -> np.ndarray:
    """Grey, darker copy of the image: the context under a coloured overlay."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) * brightness
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def draw_leakage(image: np.ndarray, leak: np.ndarray, color: Tuple[int, int, int] = LEAK_COLOR) -> np.ndarray:
    """``leak`` pixels in ``color`` over the dimmed image."""
    out = _dimmed(image)
    out[leak] = color
    return out


def _palette(num_colors: int, seed: int) -> np.ndarray:
    """(n, 3) uint8 random colours, bright enough to tell apart on a dark background."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, size=(num_colors, 3), dtype=np.uint8)


def draw_cluster_map(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """One random colour per cluster of ``labels`` (Fig. IV)."""
    _, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    return _palette(int(compact.max()) + 1, seed)[compact]


def draw_segments(
    image: np.ndarray, segments: np.ndarray, ignore_label: Optional[int] = None, alpha: float = 0.55, seed: int = 1
) -> np.ndarray:
    """Ground-truth segments: a random colour each, blended with the image, with their boundaries;
    ignored pixels dark grey."""
    colors = draw_cluster_map(segments, seed).astype(np.float32)
    out = (alpha * colors + (1 - alpha) * image.astype(np.float32)).astype(np.uint8)
    out[cluster_boundaries(segments)] = (255, 255, 255)
    if ignore_label is not None:
        out[segments == ignore_label] = IGNORE_COLOR
    return out


def visualization_metadata(cfg: CfgNode) -> Metadata:
    """Metadata for detectron2's ``Visualizer``: the config's first test (else training)
    dataset's if it names its classes, else "class 0", "class 1", ... for
    MODEL.SEM_SEG_HEAD.NUM_CLASSES classes (a model without a registered dataset)."""
    datasets = [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
    if datasets:
        metadata = MetadataCatalog.get(datasets[0])
        if metadata.get("stuff_classes") or metadata.get("thing_classes"):
            return metadata
    names = [f"class {i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    # Mask2Former convention: one contiguous class space, listed in full as stuff and as things
    return Metadata(name="hcformer_classes", thing_classes=names, stuff_classes=names)


def draw_prediction(
    image: np.ndarray, prediction: Dict, metadata: Metadata, score_threshold: float = 0.5, scale: float = 1.0
) -> np.ndarray:
    """detectron2's ``Visualizer`` overlay of the model's output for one image.

    Draws "panoptic_seg" if present, else the instances scoring at least ``score_threshold``,
    else the argmax of "sem_seg". The picture is ``scale`` times the image's size.
    """
    visualizer = Visualizer(image, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in prediction:
        panoptic_seg, segments_info = prediction["panoptic_seg"]
        # the Visualizer adds an "area" to the dicts it is given: give it copies
        segments_info = [dict(s) for s in segments_info]
        drawn = visualizer.draw_panoptic_seg(panoptic_seg.to("cpu"), segments_info)
    elif "instances" in prediction:
        instances = prediction["instances"].to("cpu")
        drawn = visualizer.draw_instance_predictions(instances[instances.scores >= score_threshold])
    elif "sem_seg" in prediction:
        drawn = visualizer.draw_sem_seg(prediction["sem_seg"].argmax(0).to("cpu"))
    else:
        raise KeyError(f"prediction has none of panoptic_seg, instances, sem_seg: keys {sorted(prediction)}")
    return drawn.get_image()


# ---------------------------------------------------------------------------------------- layout
def add_title(cell: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The cell under a black band holding ``lines`` of white text (cv2's Hershey font, ASCII).

    The font scales with the cell's width, and shrinks further if a line would not fit.
    """
    width = cell.shape[1]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = float(np.clip(width / 700, 0.35, 0.8))
    widest = max(cv2.getTextSize(line, font, scale, 1)[0][0] for line in lines)
    if widest > width - 8:
        scale *= (width - 8) / widest
    thickness = 1 if scale < 0.6 else 2
    (_, text_height), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    line_height = text_height + baseline + 4
    band = np.zeros((line_height * len(lines) + 4, width, 3), dtype=np.uint8)
    for i, line in enumerate(lines):
        origin = (4, (i + 1) * line_height - baseline)
        cv2.putText(band, line, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.concatenate([band, cell], axis=0)


def _grid(rows: List[List[np.ndarray]]) -> np.ndarray:
    """Cells laid out row by row, separated by white gaps; rows may have different heights."""
    height = [max(c.shape[0] for c in row) for row in rows]
    width = max(sum(c.shape[1] for c in row) + _GAP * (len(row) - 1) for row in rows)
    out = np.full((sum(height) + _GAP * (len(rows) - 1), width, 3), _BACKGROUND, dtype=np.uint8)
    y = 0
    for row, row_height in zip(rows, height):
        x = 0
        for cell in row:
            out[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
            x += cell.shape[1] + _GAP
        y += row_height + _GAP
    return out


def _resize(image: np.ndarray, size: Tuple[int, int], *, labels: bool = False, mask: bool = False) -> np.ndarray:
    """Resize to (height, width) for display.

    Enlarging repeats pixels (nearest), so that a small image's grid stays visible as it is.
    Shrinking averages photos (area), samples ids (nearest), and keeps any mask pixel set in its
    area, so that 1-pixel leaks along boundaries stay visible.
    """
    if image.shape[:2] == size:
        return image
    dsize = (size[1], size[0])
    if labels:  # cv2 cannot resize int64; the exact rule of every id map
        return resize_ids(torch.from_numpy(image), size).numpy()
    enlarging = size[0] > image.shape[0]
    if mask:
        if enlarging:
            return cv2.resize(image.astype(np.uint8), dsize, interpolation=cv2.INTER_NEAREST) > 0
        return cv2.resize(image.astype(np.float32), dsize, interpolation=cv2.INTER_AREA) > 0
    return cv2.resize(image, dsize, interpolation=cv2.INTER_NEAREST if enlarging else cv2.INTER_AREA)


def _cell_size(size: Tuple[int, int], min_cell_size: Optional[int], max_cell_size: Optional[int]) -> Tuple[int, int]:
    """Display size of one cell: shrunk to ``max_cell_size``, or enlarged by a whole factor to at
    least ``min_cell_size`` (so that every image pixel becomes a square block)."""
    longest = max(size)
    if max_cell_size is not None and longest > max_cell_size:
        factor = max_cell_size / longest
        return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))
    if min_cell_size is not None and longest < min_cell_size:
        factor = -(-min_cell_size // longest)  # ceil
        return size[0] * factor, size[1] * factor
    return size


def _level_title(level: LevelMap) -> str:
    stride = f" | stride {level.stride}" if level.stride is not None else ""
    return f"level {level.level}{stride} | {len(np.unique(level.labels))} clusters"


def _score_title(counts: UndersegmentationCounts) -> str:
    if counts.num_pixels == 0:
        return "leakage | no labelled pixels"
    return f"leakage | UE {counts.leaked / counts.num_pixels:.3f} | ASA {counts.achievable / counts.num_pixels:.3f}"


def draw_hierarchy(
    image: np.ndarray,
    levels: Sequence[LevelMap],
    gt: Optional[np.ndarray] = None,
    ignore_label: Optional[int] = None,
    prediction: Optional[Dict] = None,
    metadata: Optional[Metadata] = None,
    *,
    score_threshold: float = 0.5,
    max_cell_size: Optional[int] = 640,
    min_cell_size: Optional[int] = 256,
    seed: int = 0,
) -> HierarchyFigure:
    """Both panels of one image (see the module docstring for how to read them).

    Args:
        image: (H, W, 3) uint8 RGB image at its original size.
        levels: the clustering of each level to draw, left to right, labels of shape (H, W).
        gt: (H, W) ground-truth segment ids (panoptic segments, semantic classes, ...); without
            it, no leakage row and no scores.
        ignore_label: the ``gt`` id of unlabelled pixels (e.g. 0 for panoptic PNGs, 255 for
            semantic ones); None if every pixel is labelled.
        prediction: the model's output for the image ("panoptic_seg", "instances" or
            "sem_seg"), drawn with ``metadata`` by detectron2's Visualizer.
        score_threshold: instances below it are not drawn.
        max_cell_size: longest side of one cell; larger images are shrunk for display (the
            scores are computed at full size). None: no limit.
        min_cell_size: smaller images are enlarged (pixels repeated) to at least this size, so
            that titles fit. None: no limit.
        seed: of the random cluster colours.
    """
    check_sizes(image, {f"level {level.level}": level.labels for level in levels}, gt)
    size = image.shape[:2]
    cell_size = _cell_size(size, min_cell_size, max_cell_size)
    shown = _resize(image, cell_size)

    if prediction is not None:
        if metadata is None:
            raise ValueError("drawing a prediction needs the metadata of its classes")
        # Drawn at the original size, or larger for small images, so that the labels stay sharp;
        # then shrunk like the other cells.
        scale = max(1.0, cell_size[0] / size[0])
        predicted = _resize(draw_prediction(image, prediction, metadata, score_threshold, scale), cell_size)
        prediction_cell = add_title(predicted, ["prediction"])
    else:
        prediction_cell = add_title(shown, ["image"])

    boundary_row, leakage_row, cluster_row = [], [], []
    scores: Dict[int, UndersegmentationCounts] = {}
    for level in levels:
        labels = _resize(level.labels, cell_size, labels=True)
        title = _level_title(level)
        boundary_row.append(add_title(draw_boundaries(shown, labels), [title]))
        cluster_row.append(add_title(draw_cluster_map(labels, seed + level.level), [title]))
        if gt is not None:
            scores[level.level] = undersegmentation_counts(gt, level.labels, ignore_label)
            leak = _resize(leakage_mask(gt, level.labels, ignore_label), cell_size, mask=True)
            leakage_row.append(add_title(draw_leakage(shown, leak), [_score_title(scores[level.level])]))

    if gt is not None:
        gt_cell = add_title(draw_segments(shown, _resize(gt, cell_size, labels=True), ignore_label), ["ground truth"])
        hierarchy = _grid([boundary_row + [gt_cell], leakage_row + [prediction_cell]])
    else:
        hierarchy = _grid([boundary_row + [prediction_cell]])
    clusters = _grid([cluster_row + [prediction_cell]])
    return HierarchyFigure(hierarchy=hierarchy, clusters=clusters, scores=scores)
