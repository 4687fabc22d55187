"""A synthetic "shapes" dataset, written in the on-disk formats of COCO and ADE20K.

Every image shows two textured "stuff" regions (sky above ground, split by a random smooth
curve) and 2-6 "thing" shapes (circle, square, triangle, star) of very different sizes that
overlap and occlude each other. Each thing class has its own texture and a preferred (but
jittered, sometimes random) hue, so a tiny CNN learns it in minutes while boundaries, small
objects and occlusion still matter. Visible fragments smaller than ``MIN_VISIBLE_AREA`` pixels
are left unlabeled (void / 255), like COCO's unlabeled pixels.

Layout of one generated dataset (``shapes_dataset_dir(spec)``), for split in {train, val}::

    images/{split}/000001.jpg               RGB images
    annotations/{split}/000001.png          semantic labels, uint8, contiguous ids, 255 = void
    annotations/panoptic_{split}.json       COCO panoptic json
    annotations/instances_{split}.json      COCO instance json (RLE masks, iscrowd 0)
    panoptic_{split}/000001.png             COCO panoptic PNGs (segment id = R + 256 G + 256^2 B)
    panoptic_semseg_{split}/000001.png      semantic labels derived from panoptic (as for COCO)
    COMPLETE.json                           marker with the generator parameters

The directory name holds every parameter (size, counts, seed, generator version), so datasets
with different parameters live side by side under ``$DETECTRON2_DATASETS/shapes/`` and never
need to be regenerated or checked for staleness. Image ``i`` of a split depends only on
(seed, split, i, image size): the first 10 images are the same whether 10 or 600 are generated.
"""

import colorsys
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb
from PIL import Image
from tqdm import tqdm

from hcformer.data.dataset_mappers.mapper_utils import semantic_from_panoptic
from hcformer.data.datasets.atomic_dir import build_directory_once

__all__ = [
    "SHAPES_CATEGORIES",
    "SPLITS",
    "ShapesSpec",
    "ShapesSplitPaths",
    "shapes_root",
    "shapes_dataset_dir",
    "shapes_split_paths",
    "ShapesSample",
    "render_sample",
    "write_shapes_dataset",
    "ensure_shapes_dataset",
]

# a child of the "hcformer" logger, which every entry point sets up (setup_logger(name="hcformer")),
# so that "Generating the shapes dataset ..." reaches their console and log file
logger = logging.getLogger("hcformer.shapes")

GENERATOR_VERSION = 1  # bump when the rendering changes, so old folders are not reused
SPLITS = ("train", "val")
MIN_VISIBLE_AREA = 8  # pixels; smaller visible fragments become void
JPEG_QUALITY = 90
_SEGMENT_ID_STRIDE = 1000  # segment id = category_id * 1000 + instance number

# Things come first and stuff ids start at 11, so that (as in COCO) dataset ids and contiguous
# ids differ and the contiguous thing ids are 0..3.
SHAPES_CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60], "supercategory": "shape"},
    {"id": 2, "name": "square", "isthing": 1, "color": [0, 80, 200], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [250, 170, 30], "supercategory": "shape"},
    {"id": 4, "name": "star", "isthing": 1, "color": [190, 60, 200], "supercategory": "shape"},
    {"id": 11, "name": "sky", "isthing": 0, "color": [70, 130, 180], "supercategory": "scene"},
    {"id": 12, "name": "ground", "isthing": 0, "color": [110, 160, 60], "supercategory": "scene"},
]
_THING_IDS = [c["id"] for c in SHAPES_CATEGORIES if c["isthing"]]
_SKY_ID, _GROUND_ID = 11, 12
_CONTIGUOUS_ID = {c["id"]: i for i, c in enumerate(SHAPES_CATEGORIES)}
_BASE_HUE = {1: 0.0, 2: 0.6, 3: 0.14, 4: 0.83}  # hue in [0, 1): red, blue, yellow, magenta

_ENV_VARS = {
    "image_size": "HCFORMER_SHAPES_SIZE",
    "num_train": "HCFORMER_SHAPES_TRAIN",
    "num_val": "HCFORMER_SHAPES_VAL",
    "seed": "HCFORMER_SHAPES_SEED",
}


@dataclass(frozen=True)
class ShapesSpec:
    """Parameters of a generated shapes dataset (images are square, ``image_size`` pixels)."""

    image_size: int = 128
    num_train: int = 600
    num_val: int = 100
    seed: int = 0

    def __post_init__(self):
        minimum = {"image_size": 32, "num_train": 1, "num_val": 1, "seed": 0}
        for field, low in minimum.items():
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"ShapesSpec.{field} (env {_ENV_VARS[field]}) must be an integer >= {low}, "
                    f"got {value!r}"
                )

    @classmethod
    def from_env(cls) -> "ShapesSpec":
        """Defaults, overridden by HCFORMER_SHAPES_{SIZE,TRAIN,VAL,SEED} when set."""
        values = {}
        for field, var in _ENV_VARS.items():
            text = os.environ.get(var, "").strip()
            if not text:
                continue
            try:
                values[field] = int(text)
            except ValueError:
                raise ValueError(f"Environment variable {var}={text!r} is not an integer") from None
        return cls(**values)

    def num_images(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}")
        return self.num_train if split == "train" else self.num_val

    @property
    def dirname(self) -> str:
        return (
            f"{self.image_size}px_{self.num_train}train_{self.num_val}val"
            f"_seed{self.seed}_v{GENERATOR_VERSION}"
        )

    def manifest(self) -> Dict[str, Any]:
        """What the completion marker records; a directory is reused only if it matches."""
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}


class ShapesSplitPaths(NamedTuple):
    """Where the files of one split live."""

    image_root: str
    sem_seg_root: str
    panoptic_root: str
    panoptic_semseg_root: str
    panoptic_json: str
    instances_json: str


def shapes_root(datasets_root: Optional[str] = None) -> str:
    """``$DETECTRON2_DATASETS/shapes`` (``./datasets/shapes`` when the variable is unset)."""
    if datasets_root is None:
        datasets_root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return os.path.join(os.path.expanduser(datasets_root), "shapes")


def shapes_dataset_dir(spec: ShapesSpec, datasets_root: Optional[str] = None) -> str:
    return os.path.join(shapes_root(datasets_root), spec.dirname)


def shapes_split_paths(dataset_dir: str, split: str) -> ShapesSplitPaths:
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}")
    annotations = os.path.join(dataset_dir, "annotations")
    return ShapesSplitPaths(
        image_root=os.path.join(dataset_dir, "images", split),
        sem_seg_root=os.path.join(annotations, split),
        panoptic_root=os.path.join(dataset_dir, f"panoptic_{split}"),
        panoptic_semseg_root=os.path.join(dataset_dir, f"panoptic_semseg_{split}"),
        panoptic_json=os.path.join(annotations, f"panoptic_{split}.json"),
        instances_json=os.path.join(annotations, f"instances_{split}.json"),
    )


# ------------------------------------------------------------------------------------ rendering
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a ``cells``x``cells`` grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _horizon(rng: np.random.Generator, size: int) -> np.ndarray:
    """Row of the sky/ground boundary for every column: a tilted sum of three sinusoids."""
    x = np.arange(size, dtype=np.float32) / size
    rows = size * rng.uniform(0.3, 0.65) + size * rng.uniform(-0.15, 0.15) * (x - 0.5)
    for k in (1, 2, 3):
        rows += size * rng.uniform(0.0, 0.1) / k * np.sin(2 * np.pi * k * x + rng.uniform(0, 6.3))
    return rows


def _sky(rng: np.random.Generator, yy: np.ndarray, size: int) -> np.ndarray:
    """Smooth: a vertical gradient of a pale blue-ish colour plus soft clouds."""
    h, s, v = rng.uniform(0.52, 0.64), rng.uniform(0.2, 0.55), rng.uniform(0.75, 0.98)
    top, bottom = _hsv(h, s, v * 0.85), _hsv(h, s * 0.5, v)
    t = (yy / size)[..., None]
    clouds = np.maximum(_smooth_noise(rng, size, 5), 0)[..., None] * 60
    return top * (1 - t) + bottom * t + clouds


def _ground(rng: np.random.Generator, yy: np.ndarray, size: int) -> np.ndarray:
    """Rough: a darker earthy colour with per-pixel grain and horizontal furrows."""
    colour = _hsv(rng.uniform(0.05, 0.32), rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.6))
    grain = rng.normal(0, 14, (size, size)).astype(np.float32)
    furrows = 10 * np.sin(2 * np.pi * yy / rng.uniform(4, 9) + rng.uniform(0, 6.3))
    return colour + (grain + furrows)[..., None]


def _thing_colour(rng: np.random.Generator, category_id: int) -> np.ndarray:
    hue = _BASE_HUE[category_id] + rng.uniform(-0.06, 0.06)
    if rng.random() < 0.25:  # sometimes any hue: colour alone must not give the class away
        hue = rng.random()
    return _hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.65, 1.0))


def _polygon(centre: Tuple[float, float], radii: List[float], angle: float) -> np.ndarray:
    """Vertices at the given radii, evenly spaced in angle, as an (N, 2) float array of x, y."""
    angles = angle + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return np.stack([centre[0] + np.cos(angles) * radii, centre[1] + np.sin(angles) * radii], 1)


def _shape_mask(category_id: int, centre, radius: float, angle: float, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    if category_id == 1:  # circle
        points = _polygon(centre, [radius] * 64, angle)
    elif category_id == 2:  # square: same area as the circle
        points = _polygon(centre, [radius * 1.25] * 4, angle)
    elif category_id == 3:  # equilateral triangle: same area as the circle
        points = _polygon(centre, [radius * 1.55] * 3, angle)
    else:  # five-pointed star
        points = _polygon(centre, [radius * 1.45, radius * 0.6] * 5, angle)
    sub_pixel = 4  # cv2 fixed-point coordinates with 4 fractional bits
    cv2.fillPoly(
        mask, [np.round(points * (1 << sub_pixel)).astype(np.int32)], 1, cv2.LINE_8, sub_pixel
    )
    return mask.astype(bool)


def _thing_texture(
    rng: np.random.Generator, category_id: int, colour, xx, yy, centre, radius: float
) -> np.ndarray:
    """Class-specific texture: shaded disc, stripes, checkerboard or speckles."""
    if category_id == 1:
        dist = np.hypot(xx - centre[0], yy - centre[1]) / radius
        shade = 1 - 0.5 * np.clip(dist, 0, 1) ** 2
    elif category_id == 2:
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 6)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        shade = np.where(phase % 1 < 0.5, 1.0, 0.55)
    elif category_id == 3:
        cell = int(rng.integers(2, 5))
        shade = np.where((xx // cell + yy // cell) % 2 == 0, 1.0, 0.6)
    else:
        shade = np.where(rng.random(xx.shape) < 0.15, 1.35, 1.0)
    return colour * shade[..., None].astype(np.float32)


class ShapesSample(NamedTuple):
    """One rendered image with its panoptic annotation."""

    image: np.ndarray  # H x W x 3 uint8, RGB
    panoptic: np.ndarray  # H x W int64 segment ids, 0 = void
    segments_info: List[Dict[str, Any]]  # COCO panoptic: id, category_id, area, bbox, iscrowd


def _bbox(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def render_sample(rng: np.random.Generator, size: int) -> ShapesSample:
    """Draw one image and its panoptic annotation (things are painted back to front)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    sky = yy < _horizon(rng, size)[None, :]
    image = np.where(sky[..., None], _sky(rng, yy, size), _ground(rng, yy, size))

    instance_map = np.zeros((size, size), np.int32)  # k = k-th thing drawn, 0 = none
    thing_categories = []
    for k in range(1, int(rng.integers(2, 7)) + 1):
        category_id = int(rng.choice(_THING_IDS))
        # Log-uniform radius: many small shapes, a few big ones.
        radius = size * float(np.exp(rng.uniform(np.log(0.045), np.log(0.2))))
        centre = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
        mask = _shape_mask(category_id, centre, radius, rng.uniform(0, 2 * np.pi), size)
        colour = _thing_colour(rng, category_id)
        texture = _thing_texture(rng, category_id, colour, xx, yy, centre, radius)
        image[mask] = texture[mask]
        instance_map[mask] = k
        thing_categories.append(category_id)

    panoptic = np.zeros((size, size), np.int64)
    segments_info = []

    def add_segment(mask, category_id, segment_id):
        panoptic[mask] = segment_id
        segments_info.append(
            {
                "id": segment_id,
                "category_id": category_id,
                "area": int(mask.sum()),
                "bbox": _bbox(mask),
                "iscrowd": 0,
            }
        )

    for k, category_id in enumerate(thing_categories, start=1):
        visible = instance_map == k
        if visible.sum() >= MIN_VISIBLE_AREA:
            add_segment(visible, category_id, category_id * _SEGMENT_ID_STRIDE + k)
    for category_id, region in ((_SKY_ID, sky), (_GROUND_ID, ~sky)):
        visible = region & (instance_map == 0)
        if visible.any():
            add_segment(visible, category_id, category_id * _SEGMENT_ID_STRIDE)

    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return ShapesSample(image, panoptic, segments_info)


# ------------------------------------------------------------------------------------- writing
def _write_json(path: str, content: Dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(content, f)


def _write_split(dataset_dir: str, spec: ShapesSpec, split: str) -> None:
    paths = shapes_split_paths(dataset_dir, split)
    for folder in (
        paths.image_root,
        paths.sem_seg_root,
        paths.panoptic_root,
        paths.panoptic_semseg_root,
    ):
        os.makedirs(folder, exist_ok=True)

    info = {
        "description": f"hcformer synthetic shapes ({split})",
        "version": str(GENERATOR_VERSION),
    }
    images, panoptic_annotations, instance_annotations = [], [], []
    size, split_index = spec.image_size, SPLITS.index(split)
    for image_id in tqdm(range(1, spec.num_images(split) + 1), desc=f"shapes {split}", leave=False):
        # One independent stream per image: image i does not depend on how many are generated.
        rng = np.random.default_rng([spec.seed, split_index, image_id])
        sample = render_sample(rng, size)
        stem = f"{image_id:06d}"
        Image.fromarray(sample.image).save(
            os.path.join(paths.image_root, stem + ".jpg"), quality=JPEG_QUALITY
        )
        Image.fromarray(id2rgb(sample.panoptic)).save(
            os.path.join(paths.panoptic_root, stem + ".png")
        )
        contiguous = [
            {**s, "category_id": _CONTIGUOUS_ID[s["category_id"]]} for s in sample.segments_info
        ]
        labels = Image.fromarray(semantic_from_panoptic(sample.panoptic, contiguous, 255))
        labels.save(os.path.join(paths.sem_seg_root, stem + ".png"))
        labels.save(os.path.join(paths.panoptic_semseg_root, stem + ".png"))

        images.append({"id": image_id, "file_name": stem + ".jpg", "height": size, "width": size})
        panoptic_annotations.append(
            {
                "image_id": image_id,
                "file_name": stem + ".png",
                "segments_info": sample.segments_info,
            }
        )
        for segment in sample.segments_info:
            if segment["category_id"] not in _THING_IDS:
                continue
            mask = np.asfortranarray((sample.panoptic == segment["id"]).astype(np.uint8))
            rle = mask_util.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            instance_annotations.append(
                {
                    "id": len(instance_annotations) + 1,
                    "image_id": image_id,
                    "category_id": segment["category_id"],
                    "segmentation": rle,
                    "area": segment["area"],
                    "bbox": [float(v) for v in segment["bbox"]],
                    "iscrowd": 0,
                }
            )

    _write_json(
        paths.panoptic_json,
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": panoptic_annotations,
            "categories": SHAPES_CATEGORIES,
        },
    )
    thing_categories = [
        {k: c[k] for k in ("id", "name", "supercategory")}
        for c in SHAPES_CATEGORIES
        if c["isthing"]
    ]
    _write_json(
        paths.instances_json,
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": instance_annotations,
            "categories": thing_categories,
        },
    )


def write_shapes_dataset(output_dir: str, spec: ShapesSpec) -> None:
    """Write every split of the dataset described by ``spec`` into ``output_dir`` (no marker,
    no atomicity: use :func:`ensure_shapes_dataset` for that)."""
    for split in SPLITS:
        _write_split(output_dir, spec, split)


def ensure_shapes_dataset(
    spec: Optional[ShapesSpec] = None, datasets_root: Optional[str] = None
) -> str:
    """Generate the dataset on first use (atomically, once across processes); return its dir.

    Args:
        spec: dataset parameters; default ``ShapesSpec.from_env()``.
        datasets_root: default ``$DETECTRON2_DATASETS`` or ``./datasets``.
    """
    spec = spec if spec is not None else ShapesSpec.from_env()
    directory = shapes_dataset_dir(spec, datasets_root)

    def build(tmp_dir: str) -> None:
        logger.info(f"Generating the shapes dataset {spec} into {directory} ...")
        write_shapes_dataset(tmp_dir, spec)

    return build_directory_once(directory, build, spec.manifest())
