"""Every training mapper on generated shapes samples: documented keys, shapes and dtypes, and
targets that agree with the annotation files."""

import copy
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO

from hcformer.config import add_hcformer_config
from hcformer.data import DATASET_MAPPERS, build_dataset_mapper
from hcformer.data.color_aug_ssd import ColorAugSSD, PhotometricDistortion
from hcformer.data.dataset_mappers.mask_former_instance_dataset_mapper import annotation_mask
from hcformer.data.datasets.catalog_utils import unregister_dataset
from hcformer_shapes import ShapesSpec, register_shapes_datasets

PREFIX = "shapes_mappertest"
SIZE = 64
DATASET_OF_MAPPER = {
    "mask_former_semantic": f"{PREFIX}_sem_seg_train",
    "mask_former_panoptic": f"{PREFIX}_train_panoptic_with_sem_seg",
    "coco_panoptic_lsj": f"{PREFIX}_train_panoptic_with_sem_seg",
    "mask_former_instance": f"{PREFIX}_train",
    "coco_instance_lsj": f"{PREFIX}_train",
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """{dataset name: records} of a 3-image generated shapes set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(tmp_path_factory.mktemp("datasets")))
        spec = ShapesSpec(image_size=SIZE, num_train=3, num_val=1, seed=5)
        names = register_shapes_datasets(spec=spec, prefix=PREFIX, replace=True)
        yield {name: DatasetCatalog.get(name) for name in set(DATASET_OF_MAPPER.values())}
    for name in names:
        unregister_dataset(name)


def make_cfg(mapper_name, identity=True):
    """Config for ``mapper_name``; ``identity`` turns every augmentation into a no-op."""
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.INPUT.FORMAT = "RGB"  # detectron2 defaults to BGR
    cfg.DATASETS.TRAIN = (DATASET_OF_MAPPER[mapper_name],)
    cfg.INPUT.IMAGE_SIZE = SIZE
    if identity:
        cfg.INPUT.MIN_SIZE_TRAIN = (SIZE,)
        cfg.INPUT.RANDOM_FLIP = "none"
        cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 1.0
    else:
        cfg.INPUT.MIN_SIZE_TRAIN = (56, 72, 96)
        cfg.INPUT.CROP.ENABLED = True
        cfg.INPUT.CROP.TYPE = "absolute"
        cfg.INPUT.CROP.SIZE = (48, 48)
        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.5
        cfg.INPUT.COLOR_AUG_SSD = True
        cfg.INPUT.SIZE_DIVISIBILITY = 32
        cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.3, 2.0
    return cfg


def read_png(path):
    return np.asarray(Image.open(path))


def rgb_to_id(path):
    rgb = read_png(path).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def check_output_format(output, record, with_sem_seg, with_boxes):
    """The documented output contract of every mapper."""
    image = output["image"]
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    height, width = image.shape[1:]
    assert (output["height"], output["width"]) == (SIZE, SIZE)  # original size
    assert output["file_name"] == record["file_name"]

    instances = output["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (height, width)
    assert instances.gt_classes.dtype == torch.int64
    assert isinstance(instances.gt_masks, torch.Tensor) and instances.gt_masks.dtype == torch.bool
    assert instances.gt_masks.shape == (len(instances), height, width)
    assert bool(instances.gt_masks.flatten(1).any(1).all()), "no empty mask targets"
    assert ("sem_seg" in output) == with_sem_seg
    if with_sem_seg:
        sem_seg = output["sem_seg"]
        assert sem_seg.dtype == torch.int64 and sem_seg.shape == (height, width)
        assert set(sem_seg.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    assert instances.has("gt_boxes") == with_boxes
    if with_boxes:
        assert isinstance(instances.gt_boxes, Boxes) and instances.gt_boxes.tensor.shape == (
            len(instances),
            4,
        )
    for key in ("pan_seg_file_name", "sem_seg_file_name", "annotations", "segments_info"):
        assert key not in output, f"raw annotation {key} left in the model input"


@pytest.mark.parametrize("mapper_name", sorted(DATASET_OF_MAPPER))
@pytest.mark.parametrize("identity", [True, False], ids=["no_aug", "random_aug"])
def test_every_mapper_gives_the_documented_format(datasets, mapper_name, identity):
    np.random.seed(0)  # detectron2 augmentations draw from numpy's global generator
    mapper = build_dataset_mapper(make_cfg(mapper_name, identity), is_train=True)
    assert isinstance(mapper, DATASET_MAPPERS[mapper_name])
    records = datasets[DATASET_OF_MAPPER[mapper_name]]
    for record in records:
        before = copy.deepcopy(record)
        output = mapper(record)
        assert record == before, "the mapper must not modify the dataset record"
        check_output_format(
            output,
            record,
            with_sem_seg=mapper_name != "mask_former_instance"
            and mapper_name != "coco_instance_lsj",
            with_boxes="instance" in mapper_name or mapper_name == "coco_panoptic_lsj",
        )
        if not identity:
            height, width = output["image"].shape[1:]
            if mapper_name.startswith("mask_former"):  # crop 48, padded to a multiple of 32
                assert (height, width) == (64, 64)
            else:  # LSJ: always IMAGE_SIZE squared
                assert (height, width) == (SIZE, SIZE)
            if "sem_seg" in output:  # every semantic target is the pixels of its class
                sem_seg, instances = output["sem_seg"], output["instances"]
                if mapper_name == "mask_former_semantic":
                    assert sorted(instances.gt_classes.tolist()) == sorted(
                        c for c in sem_seg.unique().tolist() if c != 255
                    )
                for mask, cls in zip(instances.gt_masks, instances.gt_classes):
                    assert bool((sem_seg[mask] == cls).all())


def test_semantic_mapper_without_augmentation_keeps_the_labels(datasets):
    mapper = build_dataset_mapper(make_cfg("mask_former_semantic"))
    record = datasets[f"{PREFIX}_sem_seg_train"][0]
    output = mapper(record)
    labels = read_png(record["sem_seg_file_name"])
    assert np.array_equal(output["sem_seg"].numpy(), labels)
    assert np.array_equal(output["image"].permute(1, 2, 0).numpy(), read_png(record["file_name"]))
    for mask, cls in zip(output["instances"].gt_masks, output["instances"].gt_classes):
        assert np.array_equal(mask.numpy(), labels == int(cls))


def test_semantic_mapper_pads_to_size_divisibility_with_ignore(datasets):
    cfg = make_cfg("mask_former_semantic")
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    output = build_dataset_mapper(cfg)(datasets[f"{PREFIX}_sem_seg_train"][0])
    assert output["image"].shape == (3, 64, 64)
    assert bool((output["image"][:, 40:, :] == 128).all()) and bool(
        (output["image"][:, :, 40:] == 128).all()
    )
    assert bool((output["sem_seg"][40:, :] == 255).all()) and bool(
        (output["sem_seg"][:, 40:] == 255).all()
    )
    assert not bool(output["instances"].gt_masks[:, 40:, :].any())


def test_panoptic_mapper_targets_are_the_non_crowd_segments(datasets):
    record = copy.deepcopy(datasets[f"{PREFIX}_train_panoptic_with_sem_seg"][0])
    crowd = next(s for s in record["segments_info"] if s["isthing"])
    crowd["iscrowd"] = 1
    output = build_dataset_mapper(make_cfg("mask_former_panoptic"))(record)

    segment_ids = rgb_to_id(record["pan_seg_file_name"])
    kept = [s for s in record["segments_info"] if not s["iscrowd"]]
    assert output["instances"].gt_classes.tolist() == [s["category_id"] for s in kept]
    for mask, segment in zip(output["instances"].gt_masks, kept):
        assert np.array_equal(mask.numpy(), segment_ids == segment["id"])
    # sem_seg derived from the panoptic PNG equals the panoptic_semseg PNG (crowd keeps its class)
    assert np.array_equal(output["sem_seg"].numpy(), read_png(record["sem_seg_file_name"]))
    assert bool(
        (output["sem_seg"].numpy()[segment_ids == crowd["id"]] == crowd["category_id"]).all()
    )


@pytest.mark.parametrize("mapper_name", ["mask_former_instance", "coco_instance_lsj"])
def test_instance_mappers_decode_the_json_masks(datasets, mapper_name):
    record = copy.deepcopy(datasets[f"{PREFIX}_train"][0])
    record["annotations"][0]["iscrowd"] = 1
    output = build_dataset_mapper(make_cfg(mapper_name))(record)

    coco = COCO(MetadataCatalog.get(f"{PREFIX}_train").json_file)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record["image_id"]]))[1:]  # [0] is crowd
    instances = output["instances"]
    assert instances.gt_classes.tolist() == [a["category_id"] - 1 for a in annotations]
    for mask, box, annotation in zip(instances.gt_masks, instances.gt_boxes.tensor, annotations):
        assert np.array_equal(mask.numpy(), coco.annToMask(annotation).astype(bool))
        x, y, w, h = annotation["bbox"]
        assert box.tolist() == pytest.approx([x, y, x + w, y + h])


def test_polygons_are_cropped_without_shapely_like_their_rle(monkeypatch):
    """COCO's polygons through a crop (LSJ always crops), a flip and a resize: detectron2 would clip
    them with shapely, not a dependency; they must give the masks their RLE gives."""
    monkeypatch.setitem(sys.modules, "shapely", None)  # any import of it fails
    rectangle = np.zeros((20, 30), np.uint8)
    rectangle[4:15, 6:27] = 1  # pixels y 4..14, x 6..26: the polygon with corners (6, 4), (27, 15)
    polygon = [[6, 4, 27, 4, 27, 15, 6, 15]]
    rle = mask_util.encode(np.asfortranarray(rectangle))
    transforms = T.TransformList([
        T.CropTransform(10, 2, 20, 16),  # cuts the rectangle at the left
        T.HFlipTransform(20),
        T.ResizeTransform(16, 20, 32, 40, Image.NEAREST),
    ])
    from_polygon = annotation_mask(polygon, transforms, (32, 40))
    from_rle = annotation_mask(rle, transforms, (32, 40))
    assert from_polygon.shape == (32, 40) and from_polygon.dtype == bool
    assert from_polygon.sum() == 2 * 11 * 2 * 17  # 11 rows x 17 columns left, each doubled
    assert np.array_equal(from_polygon, from_rle)


def test_lsj_pads_small_scales_with_grey_and_void(datasets):
    cfg = make_cfg("coco_panoptic_lsj")
    cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 0.5  # 64 -> 32, then padded back to 64
    output = build_dataset_mapper(cfg)(datasets[f"{PREFIX}_train_panoptic_with_sem_seg"][0])
    assert output["image"].shape == (3, 64, 64)
    assert bool((output["image"][:, 32:, :] == 128).all())
    assert bool((output["sem_seg"][32:, :] == 255).all()) and bool(
        (output["sem_seg"][:, 32:] == 255).all()
    )
    assert not bool(output["instances"].gt_masks[:, 32:, :].any())
    assert bool((output["instances"].gt_boxes.tensor <= 32).all())


@pytest.mark.parametrize("mapper_name", sorted(DATASET_OF_MAPPER))
def test_size_divisibility_pads_the_maskformer_mappers_only(datasets, mapper_name):
    # FixedSizeCrop already makes LSJ inputs INPUT.IMAGE_SIZE squared: SIZE_DIVISIBILITY is unused
    cfg = make_cfg(mapper_name)
    cfg.INPUT.SIZE_DIVISIBILITY = 48
    output = build_dataset_mapper(cfg)(datasets[DATASET_OF_MAPPER[mapper_name]][0])
    size = SIZE if mapper_name.endswith("_lsj") else 96
    assert output["image"].shape == (3, size, size)
    assert output["instances"].image_size == (size, size)
    assert output["instances"].gt_masks.shape[1:] == (size, size)
    if "sem_seg" in output:
        assert output["sem_seg"].shape == (size, size)


def test_bgr_format_reverses_the_channels(datasets):
    record = datasets[f"{PREFIX}_sem_seg_train"][0]
    cfg = make_cfg("mask_former_semantic")
    rgb = build_dataset_mapper(cfg)(record)["image"]
    cfg.INPUT.FORMAT = "BGR"
    bgr = build_dataset_mapper(cfg)(record)["image"]
    assert torch.equal(bgr, rgb.flip(0))


def test_unknown_mapper_name_lists_the_known_ones():
    cfg = make_cfg("mask_former_semantic")
    cfg.INPUT.DATASET_MAPPER_NAME = "detr_panoptic"
    with pytest.raises(ValueError, match="detr_panoptic.*coco_instance_lsj.*mask_former_semantic"):
        build_dataset_mapper(cfg)


def test_evaluation_uses_detectron2_default_mapper_and_training_mappers_refuse_it():
    from hcformer.data.dataset_mappers.evaluation_dataset_mapper import EvaluationDatasetMapper

    cfg = make_cfg("mask_former_panoptic")
    # detectron2's DatasetMapper(cfg, False), reading images strictly
    assert type(build_dataset_mapper(cfg, is_train=False)) is EvaluationDatasetMapper
    assert isinstance(build_dataset_mapper(cfg, is_train=False), DatasetMapper)
    for mapper_class in DATASET_MAPPERS.values():
        with pytest.raises(ValueError, match="training mapper"):
            mapper_class(cfg, False)


def test_wrong_dataset_for_a_mapper_is_a_clear_error(datasets):
    mapper = build_dataset_mapper(make_cfg("mask_former_panoptic"))
    with pytest.raises(KeyError, match="pan_seg_file_name.*DATASET_MAPPER_NAME"):
        mapper(datasets[f"{PREFIX}_sem_seg_train"][0])


def test_photometric_distortion():
    image = np.array([[[10, 100, 250]]], dtype=np.uint8)
    brighter = PhotometricDistortion("RGB", 20, None, None, None, True).apply_image(image)
    assert brighter.dtype == np.uint8 and brighter.tolist() == [[[30, 120, 255]]]
    full_turn = PhotometricDistortion("RGB", None, None, 1.0, 360.0, False).apply_image(image)
    assert np.abs(full_turn.astype(int) - image).max() <= 1
    grey = PhotometricDistortion("RGB", None, None, 0.0, None, False).apply_image(image)
    assert np.ptp(grey) == 0  # no saturation left
    sampled = ColorAugSSD("BGR").get_transform(image)
    labels = np.arange(4, dtype=np.uint8).reshape(2, 2)
    assert np.array_equal(sampled.apply_segmentation(labels), labels)
    with pytest.raises(ValueError, match="'YUV'"):
        PhotometricDistortion("YUV", None, None, None, None, True)


def test_image_to_tensor_of_a_flipped_one_pixel_wide_image():
    from hcformer.data.dataset_mappers.mapper_utils import image_to_tensor

    image = np.arange(6, dtype=np.uint8).reshape(2, 1, 3)[:, ::-1]  # what a horizontal flip gives
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 2, 1) and torch.equal(tensor, torch.from_numpy(image.copy()).permute(2, 0, 1))
