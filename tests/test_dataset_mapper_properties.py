"""Property tests of the training mappers: random image sizes (odd and tiny included), random
label maps and random augmentation settings never crash, and the targets stay aligned with
the image pixel for pixel.

Every image pixel encodes its own label (value 10 + 40 x class, 250 where unlabelled), so after
flips, crops and padding the image can be checked against ``sem_seg`` and the masks exactly.
Resizing is kept at scale 1 (it interpolates the image, not the labels).
"""
import tempfile
from pathlib import Path

import numpy as np
import torch
from detectron2.config import get_cfg
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
