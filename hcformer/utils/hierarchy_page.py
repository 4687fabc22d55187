"""The hierarchy explorer: one self-contained web page per image, and an index page.

``tools/visualize_hierarchy.py --html DIR`` writes them. A page needs no server and no network:
the photo, the prediction pictures and every cluster map are inside the HTML (see
:mod:`hcformer.utils.embedded_id_maps` for the map format), next to the page's script and style,
which live as plain files in ``explorer/`` beside this module and are inlined when a page is
written. Nothing here runs a model: the inputs are the same arrays the PNG panels are drawn from.

What a page holds, as one JSON object in ``<script type="application/json" id="explorer-data">``
(:func:`read_page_data` reads it back):

- ``image_id``, ``width``, ``height``, ``photo`` (JPEG data URL), ``predictions``: {"panoptic" |
  "instances" | "semantic": JPEG data URL of detectron2's overlay of that output}, for the
  outputs the model has;
- ``clusterings``: finest level first, then the coarser levels, then the query clustering; each
  with its ``name`` ("level<k>" or "queries"), ``stride``, ``num_clusters``, ``map`` (PNG data
  URL of the cluster ids, the ids the model returned) and ``scores`` (UE, ASA and their
  numerators, the numbers of the tool's JSON; null without ground truth);
- ``ground_truth``: null, or its ``kind``, ``map`` (PNG data URL of the index of each pixel's
  segment in ``segments``, :data:`IGNORED_SEGMENT` where the pixel is ignored) and ``segments``
  (the original id and class name of each segment);
- ``links``: relative URLs of the index and of the previous and next pages.

The index page's object (:func:`index_page_data`) lists every image's thumbnail, page and
scores, and the dataset's means.

The per-cluster numbers shown on hover (size, majority ground-truth segment, leaked pixels) are
computed by the page from these two maps, with the rule of
:func:`hcformer.evaluation.leakage_mask` (majority = the most frequent segment over the
cluster's labelled pixels, ties to the smaller id), so they cannot drift from what was scored.
"""
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

from .embedded_id_maps import MAX_ID, encode_id_map, encode_picture
from .hierarchy_visualization import check_sizes

__all__ = [
    "IGNORED_SEGMENT",
    "PREDICTION_KINDS",
    "PageClustering",
    "segment_class_names",
    "image_page_data",
    "index_entry",
    "index_page_data",
    "page_names",
    "write_page",
    "read_page_data",
]

EXPLORER_DIR = Path(__file__).with_name("explorer")
IGNORED_SEGMENT = MAX_ID  # the ground-truth map's value for ignored pixels
PREDICTION_KINDS = ("panoptic", "instances", "semantic")  # the outputs a page can show, in this order
THUMBNAIL_WIDTH = 240  # pixels of the index's thumbnails (a JPEG each, a few kB)
_DATA_TAG = '<script type="application/json" id="explorer-data">'


@dataclass
class PageClustering:
    """One clustering as a page shows it: a level of the hierarchy or the query clustering."""

    name: str  # "level<k>" or "queries"
    labels: np.ndarray  # (H, W) integer cluster ids at the image size
    stride: Optional[Union[int, str]] = None  # of the level's grid cells; None for queries / segments
    scores: Optional[Dict[str, Optional[float]]] = None  # the tool's JSON entry: UE, ASA, leaked, achievable


def segment_class_names(record: Dict, kind: str, gt: np.ndarray, class_names: Sequence[str]) -> Dict[int, str]:
    """{ground-truth segment id: class name} for the segments of ``gt`` (what the page names as a
    cluster's majority class).

    Args:
        record: the dataset record ``gt`` was loaded from (:func:`load_segment_ground_truth`).
        kind: "panoptic" (segment ids of ``segments_info``), "semantic" (the id is the class) or
            "instance" (id i + 1 is annotation i, 0 the background).
        class_names: the dataset's contiguous class names.
    """

    def name(category: int) -> str:
        return class_names[category] if 0 <= category < len(class_names) else f"class {category}"

    if kind == "semantic":
        return {int(i): name(int(i)) for i in np.unique(gt)}
    if kind == "panoptic":
        return {s["id"]: name(s["category_id"]) for s in record.get("segments_info", [])}
    if kind == "instance":
        names = {0: "background (no instance)"}
        names.update({i + 1: name(a["category_id"]) for i, a in enumerate(record.get("annotations", []))})
        return names
    raise ValueError(f"ground truth kind must be panoptic, semantic or instance, got {kind!r}")


def _ground_truth_data(
    gt: np.ndarray, ignore_label: Optional[int], kind: str, class_names: Dict[int, str]
) -> Dict:
    """The page's ground truth: segments renumbered 0..n-1 in id order (so that the page's ties
    go to the smaller id, as in ``leakage_mask``), ignored pixels :data:`IGNORED_SEGMENT`."""
    valid = np.ones(gt.shape, dtype=bool) if ignore_label is None else gt != ignore_label
    segment_ids, index = np.unique(gt[valid], return_inverse=True)
    compact = np.full(gt.shape, IGNORED_SEGMENT, dtype=np.int64)
    compact[valid] = index
    return {
        "kind": kind,
        "map": encode_id_map(compact, "the ground-truth segment map"),
        "segments": [{"id": int(s), "class": class_names.get(int(s))} for s in segment_ids],
    }


def _thumbnail(image: np.ndarray) -> str:
    height, width = image.shape[:2]
    if width > THUMBNAIL_WIDTH:
        size = (THUMBNAIL_WIDTH, max(1, round(height * THUMBNAIL_WIDTH / width)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return encode_picture(image, quality=80)


def image_page_data(
    image_id: str,
    image: np.ndarray,
    clusterings: Sequence[PageClustering],
    *,
    gt: Optional[np.ndarray] = None,
    ignore_label: Optional[int] = None,
    ground_truth_kind: Optional[str] = None,
    class_names: Optional[Dict[int, str]] = None,
    predictions: Optional[Dict[str, np.ndarray]] = None,
    links: Optional[Dict[str, Optional[str]]] = None,
) -> Dict:
    """Everything the page of one image shows (the module docstring lists the fields).

    Args:
        image: (H, W, 3) uint8 RGB photo; every map has its size.
        clusterings: finest first; the levels, then the query clustering if there is one.
        gt, ignore_label, ground_truth_kind: the ground-truth segments, as scored; None: none.
        class_names: {segment id: class name} (:func:`segment_class_names`).
        predictions: {kind: (H, W, 3) uint8 picture of the model's output of that kind over
            the photo}, kinds among PREDICTION_KINDS, shown in that order.
        links: relative URLs of "index", "previous" and "next" pages.
    """
    check_sizes(image, {f"clustering {c.name}": c.labels for c in clusterings}, gt, what=f"image {image_id!r}")
    size = image.shape[:2]
    predictions = predictions or {}
    for kind, picture in predictions.items():
        if kind not in PREDICTION_KINDS:
            raise ValueError(f"prediction kind {kind!r} of image {image_id!r} is none of {PREDICTION_KINDS}")
        if picture.shape != image.shape:
            raise ValueError(f"{kind} picture of image {image_id!r} has shape {picture.shape}, expected {image.shape}")
    return {
        "image_id": str(image_id),
        "width": int(size[1]),
        "height": int(size[0]),
        "photo": encode_picture(image),
        "predictions": {kind: encode_picture(predictions[kind]) for kind in PREDICTION_KINDS if kind in predictions},
        "clusterings": [
            {
                "name": c.name,
                "stride": c.stride,
                "num_clusters": int(len(np.unique(c.labels))),
                "map": encode_id_map(c.labels, f"the {c.name} clustering of image {image_id!r}"),
                "scores": c.scores,
            }
            for c in clusterings
        ],
        "ground_truth": None if gt is None else _ground_truth_data(gt, ignore_label, ground_truth_kind, class_names or {}),
        "links": links or {},
    }


def index_entry(page: Dict, photo: np.ndarray, href: str) -> Dict:
    """What the index keeps of one image page (``page``, from :func:`image_page_data`): a
    thumbnail of ``photo``, the link ``href`` to the page, its cluster counts and scores. Small,
    so that a whole dataset's index fits in memory while the pages are written one by one."""
    return {
        "image_id": page["image_id"],
        "page": href,
        "thumbnail": _thumbnail(photo),
        "clusterings": [
            {"name": c["name"], "stride": c["stride"], "num_clusters": c["num_clusters"], "scores": c["scores"]}
            for c in page["clusterings"]
        ],
    }


def index_page_data(entries: Sequence[Dict], mean: Dict, title: str) -> Dict:
    """The index page's data.

    Args:
        entries: :func:`index_entry` of every image, in dataset order; the clusterings of the
            first are the index's columns (one model: every image has the same).
        mean: the tool's JSON "mean" (per clustering: UE, ASA and their pixel-weighted means).
    """
    columns = entries[0]["clusterings"] if entries else []
    return {
        "title": title,
        "images": list(entries),
        "clusterings": [{"name": c["name"], "stride": c["stride"]} for c in columns],
        "mean": mean,
    }


def _asset(name: str) -> str:
    return (EXPLORER_DIR / name).read_text(encoding="utf-8")


def write_page(path: Union[str, Path], kind: str, data: Dict, title: str) -> int:
    """Write the page ``kind`` ("image" or "index") holding ``data`` to ``path``; return its size
    in bytes. The template, style and script are inlined: the file is the whole page."""
    if kind not in ("image", "index"):
        raise ValueError(f"page kind must be 'image' or 'index', got {kind!r}")
    # "<" escaped inside the JSON: no "</script>" in a class name or file name can end the tag
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    parts = {
        "{{title}}": html.escape(title),
        "{{style}}": _asset("explorer.css"),
        "{{data}}": payload,
        "{{script}}": _asset(f"{kind}.js"),
    }
    page = _asset(f"{kind}.html")
    # one pass, so that a placeholder-like text in the data or the script stays as it is
    page = re.sub("|".join(re.escape(p) for p in parts), lambda m: parts[m.group(0)], page)
    Path(path).write_text(page, encoding="utf-8")
    return len(page.encode("utf-8"))


def read_page_data(path: Union[str, Path]) -> Dict:
    """The JSON object embedded in a page written by :func:`write_page`."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.find(_DATA_TAG)
    if start < 0:
        raise ValueError(f"{path} is not an explorer page: it has no {_DATA_TAG}")
    start += len(_DATA_TAG)
    return json.loads(text[start : text.index("</script>", start)])


def page_names(image_ids: Sequence) -> List[str]:
    """A distinct file name per image: its id with characters other than letters, digits, '-'
    and '.' as '_', and a number appended where two ids would give the same name."""
    names, used = [], set()
    for i, image_id in enumerate(image_ids):
        stem = re.sub(r"[^\w.-]", "_", str(image_id))
        name = f"{stem}.html" if f"{stem}.html" not in used else f"{stem}_{i}.html"
        used.add(name)
        names.append(name)
    return names
