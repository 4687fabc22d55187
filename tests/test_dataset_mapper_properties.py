"""Property tests of the training mappers: random image sizes (odd and tiny included), random
label maps / segments / annotations and random augmentation settings never crash, and the
targets stay aligned with the image pixel for pixel.

Every image pixel encodes its own label (value 10 + 40 x class, 250 where unlabelled), so after
flips, crops and padding the image can be checked against ``sem_seg`` and the masks exactly.
Resizing is kept at scale 1 (it interpolates the image, not the labels).
"""
import tempfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hcformer.config import add_hcformer_config
from hcformer.data.build import build_dataset_mapper

IGNORE = 255
NUM_CLASSES = 6


def encode(labels: np.ndarray) -> np.ndarray:
    """The image whose every channel says the label of the pixel."""
    value = np.where(labels == IGNORE, 250, 10 + 40 * labels.astype(np.int64)).astype(np.uint8)
    return np.repeat(value[..., None], 3, axis=2)


@st.composite
def samples(draw):
    height, width = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # blocky labels (as segmentations are), with some unlabelled pixels
    block = draw(st.integers(1, 8))
    coarse = rng.integers(0, NUM_CLASSES + 1, (height // block + 1, width // block + 1))
    labels = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width]
    labels = np.where(labels == NUM_CLASSES, IGNORE, labels).astype(np.uint8)
    settings_ = {
        "flip": draw(st.sampled_from(["none", "horizontal", "vertical"])),
        "crop": draw(st.one_of(st.none(), st.tuples(st.integers(1, 64), st.integers(1, 64)))),
        "divisibility": draw(st.sampled_from([-1, 0, 7, 32])),
        "seed": seed,
    }
    return labels, settings_


def mapper_cfg(labels: np.ndarray, options) -> object:
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (min(labels.shape),)  # scale 1
    cfg.INPUT.MAX_SIZE_TRAIN = max(labels.shape)
    cfg.INPUT.RANDOM_FLIP = options["flip"]
    cfg.INPUT.SIZE_DIVISIBILITY = options["divisibility"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    if options["crop"] is not None:
        cfg.INPUT.CROP.ENABLED = True
        cfg.INPUT.CROP.TYPE = "absolute"
        cfg.INPUT.CROP.SIZE = options["crop"]
        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    return cfg


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples())
def test_semantic_mapper_keeps_targets_aligned_with_the_image(sample):
    labels, options = sample
    with tempfile.TemporaryDirectory() as directory:
        image_file = Path(directory, "image.png")
        label_file = Path(directory, "labels.png")
        Image.fromarray(encode(labels)).save(image_file)
        Image.fromarray(labels).save(label_file)
        np.random.seed(options["seed"])  # detectron2's random augmentations draw from numpy
        mapper = build_dataset_mapper(mapper_cfg(labels, options))
        out = mapper({"file_name": str(image_file), "sem_seg_file_name": str(label_file)})

    image, sem_seg, instances = out["image"], out["sem_seg"], out["instances"]
    height, width = image.shape[1:]
    assert (out["height"], out["width"]) == labels.shape
    assert sem_seg.shape == (height, width) and instances.image_size == (height, width)
    divisibility = options["divisibility"]
    if divisibility > 0:
        assert height % divisibility == 0 and width % divisibility == 0

    padded = (image == 128).all(dim=0)  # the grey padding (no encoded value is 128)
    assert (sem_seg[padded] == IGNORE).all()
    inside = ~padded
    expected = torch.as_tensor(encode(sem_seg.clamp(max=IGNORE).numpy().astype(np.uint8)))
    assert torch.equal(image[0][inside], expected[..., 0][inside]), "image and sem_seg disagree"

    # one mask per class present, exactly that class's pixels
    present = sorted(set(sem_seg.unique().tolist()) - {IGNORE})
    assert instances.gt_classes.tolist() == present
    for cls, mask in zip(present, instances.gt_masks):
        assert torch.equal(mask, sem_seg == cls)


# ----------------------------------------------------------------------------- segments
# Panoptic and instance mappers: each pixel of the image encodes the *segment* it belongs to
# (value 10 + 30 k for segment k = 1..7, 250 for void), so the masks, classes and sem_seg that
# come out can be recomputed from the augmented image alone.
VOID_VALUE = 250


def encode_segments(segment_map: np.ndarray) -> np.ndarray:
    value = np.where(segment_map == 0, VOID_VALUE, 10 + 30 * segment_map).astype(np.uint8)
    return np.repeat(value[..., None], 3, axis=2)


def decode_segments(image: torch.Tensor) -> torch.Tensor:
    """Segment index of every pixel of an augmented image (0: void, -1: padding)."""
    value = image[0].to(torch.int64)
    segment_map = torch.where(value == VOID_VALUE, 0, (value - 10) // 30)
    return torch.where((image == 128).all(dim=0), -1, segment_map)


@st.composite
def segment_samples(draw):
    """(segment map H x W of 0..K, per segment k: category and crowd flag, options)."""
    height, width = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    num_segments, block = draw(st.integers(1, 7)), draw(st.integers(1, 8))
    coarse = rng.integers(0, num_segments + 1, (height // block + 1, width // block + 1))
    segment_map = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width]
    segments = {
        int(k): {"category_id": int(rng.integers(0, NUM_CLASSES)), "iscrowd": int(rng.random() < 0.2)}
        for k in np.unique(segment_map)
        if k != 0
    }
    options = {
        "flip": draw(st.sampled_from(["none", "horizontal", "vertical"])),
        "crop": draw(st.one_of(st.none(), st.tuples(st.integers(1, 64), st.integers(1, 64)))),
        "divisibility": draw(st.sampled_from([-1, 0, 7, 32])),
        "lsj_size": draw(st.integers(1, 64)),
        "seed": seed,
    }
    return segment_map, segments, options


def segment_mapper_cfg(mapper_name: str, segment_map: np.ndarray, options):
    cfg = mapper_cfg(segment_map, options)  # scale 1, flip, crop, divisibility as above
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    # LSJ: a random crop (or padding) to lsj_size squared, at scale exactly 1
    size = options["lsj_size"]
    cfg.INPUT.IMAGE_SIZE = size
    cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = max(segment_map.shape) / size
    return cfg


def panoptic_id(k: int) -> int:
    return 257 * k  # both R and G channels in use


def map_record(mapper_name, segment_map, segments, options, directory) -> dict:
    """Write the image (and panoptic PNG) of the sample and run the mapper on its record."""
    record = {"file_name": str(Path(directory, "image.png"))}
    Image.fromarray(encode_segments(segment_map)).save(record["file_name"])
    if "panoptic" in mapper_name:
        ids = np.vectorize(panoptic_id)(segment_map) * (segment_map > 0)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        record["pan_seg_file_name"] = str(Path(directory, "panoptic.png"))
        Image.fromarray(rgb).save(record["pan_seg_file_name"])
        record["segments_info"] = [
            {"id": panoptic_id(k), "isthing": True, **info} for k, info in segments.items()
        ]
    else:
        record["annotations"] = []
        for k, info in segments.items():
            mask = np.asfortranarray((segment_map == k).astype(np.uint8))
            ys, xs = np.nonzero(mask)
            record["annotations"].append({
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "bbox_mode": BoxMode.XYWH_ABS,
                "segmentation": mask_util.encode(mask),
                **info,
            })
    np.random.seed(options["seed"])  # detectron2's random augmentations draw from numpy
    return build_dataset_mapper(segment_mapper_cfg(mapper_name, segment_map, options))(record)


def check_segment_targets(out, mapper_name, segment_map, segments, options):
    image, instances = out["image"], out["instances"]
    height, width = image.shape[1:]
    assert (out["height"], out["width"]) == segment_map.shape
    assert instances.image_size == (height, width)
    if "lsj" in mapper_name:
        assert (height, width) == (options["lsj_size"],) * 2
    elif options["divisibility"] > 0:
        assert height % options["divisibility"] == 0 and width % options["divisibility"] == 0

    seen = decode_segments(image)  # what the augmented image says about each pixel
    present = set(seen.unique().tolist()) - {-1}
    assert present <= {0} | set(segments), "the image was interpolated or mixed with padding"
    expected_classes, expected_masks = [], []
    for k, info in segments.items():  # record order; crowd segments and empty masks give none
        mask = seen == k
        if not info["iscrowd"] and mask.any():
            expected_classes.append(info["category_id"])
            expected_masks.append(mask)
    assert instances.gt_classes.tolist() == expected_classes
    assert len(instances.gt_masks) == len(expected_masks)
    for mask, expected in zip(instances.gt_masks, expected_masks):
        assert torch.equal(mask, expected), "a mask moved against the image"
    if instances.has("gt_boxes"):
        boxes = instances.gt_boxes.tensor
        assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 0] < boxes[:, 2])).all()
        assert ((boxes[:, 1] >= 0) & (boxes[:, 3] <= height) & (boxes[:, 1] < boxes[:, 3])).all()

    if "panoptic" in mapper_name:  # crowd pixels keep their class in sem_seg
        category = torch.full((max(segments, default=0) + 2,), IGNORE, dtype=torch.int64)
        for k, info in segments.items():
            category[k] = info["category_id"]
        assert torch.equal(out["sem_seg"], category[seen]), "sem_seg and the image disagree"


SEGMENT_MAPPERS = ["mask_former_panoptic", "coco_panoptic_lsj", "mask_former_instance", "coco_instance_lsj"]


@pytest.mark.parametrize("mapper_name", SEGMENT_MAPPERS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=segment_samples())
def test_segment_mappers_keep_targets_aligned_with_the_image(mapper_name, sample):
    segment_map, segments, options = sample
    with tempfile.TemporaryDirectory() as directory:
        out = map_record(mapper_name, segment_map, segments, options, directory)
    check_segment_targets(out, mapper_name, segment_map, segments, options)
