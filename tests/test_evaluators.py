"""build_evaluator on a tiny generated shapes set and a fake two-image Cityscapes layout: ground
truth fed back as the prediction scores 100, and hand-computable mistakes score what we compute
here from the annotation files."""

import copy
import json
import os
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label, name2label
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.structures import BitMasks, Instances
from PIL import Image
from pycocotools.coco import COCO

from hcformer.config import add_hcformer_config
from hcformer.data.datasets.catalog_utils import unregister_dataset
from hcformer.evaluation import ThingsCOCOEvaluator, build_evaluator, check_numpy_for_cityscapes
from hcformer_shapes import ShapesSpec, register_shapes_datasets

PREFIX = "shapes_evaltest"
PANOPTIC = f"{PREFIX}_val_panoptic_with_sem_seg"
SPEC = ShapesSpec(image_size=64, num_train=1, num_val=4, seed=3)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """The val records of the panoptic dataset (generated into a temporary $DETECTRON2_DATASETS)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(tmp_path_factory.mktemp("datasets")))
        names = register_shapes_datasets(spec=SPEC, prefix=PREFIX, replace=True)
        yield DatasetCatalog.get(PANOPTIC)
    for name in names:
        unregister_dataset(name)


def make_cfg(tmp_path, panoptic=True, semantic=True, instance=True):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = semantic
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = instance
    return cfg


def rgb_to_id(path):
    rgb = np.asarray(Image.open(path), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def model_input(record):
    return {k: record[k] for k in ("file_name", "image_id")} | {"height": 64, "width": 64}


def panoptic_prediction(record):
    segments = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in record["segments_info"]
    ]
    return torch.as_tensor(rgb_to_id(record["pan_seg_file_name"])), segments


def semantic_prediction(labels, num_classes=6):
    """One-hot scores (C x H x W) whose argmax is ``labels`` (255 = ignored -> class 0)."""
    labels = torch.as_tensor(np.where(labels == 255, 0, labels).astype(np.int64))
    return torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()


def instance_prediction(record, class_map=None):
    """Instances from the instance json's masks, score 1.0, classes mapped by ``class_map``."""
    metadata = MetadataCatalog.get(PANOPTIC)
    coco = COCO(metadata.json_file)
    contiguous = metadata.thing_dataset_id_to_contiguous_id
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record["image_id"]]))
    masks = torch.stack([torch.as_tensor(coco.annToMask(a), dtype=torch.bool) for a in annotations])
    classes = [contiguous[a["category_id"]] for a in annotations]
    if class_map is not None:
        classes = [class_map[c] for c in classes]
    instances = Instances((64, 64))
    instances.pred_masks = masks
    instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
    instances.scores = torch.ones(len(annotations))
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return instances


def ground_truth_outputs(records):
    return [
        {
            "panoptic_seg": panoptic_prediction(r),
            "sem_seg": semantic_prediction(np.asarray(Image.open(r["sem_seg_file_name"]))),
            "instances": instance_prediction(r),
        }
        for r in records
    ]


def assert_kinds(evaluators, expected):
    """One evaluator per expected detectron2 class, in order (hcformer may subclass them)."""
    assert len(evaluators) == len(expected), evaluators
    for evaluator, kind in zip(evaluators, expected):
        assert isinstance(evaluator, kind), (evaluator, kind)


def evaluate(evaluator, records, outputs):
    evaluator.reset()
    for record, output in zip(records, outputs):
        evaluator.process([model_input(record)], [copy.deepcopy(output)])
    return evaluator.evaluate()


def test_ground_truth_scores_100_everywhere(records, tmp_path):
    evaluator = build_evaluator(make_cfg(tmp_path), PANOPTIC)
    assert isinstance(evaluator, DatasetEvaluators)
    assert_kinds(evaluator._evaluators, [COCOPanopticEvaluator, SemSegEvaluator, COCOEvaluator])

    results = evaluate(evaluator, records, ground_truth_outputs(records))
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert results["panoptic_seg"][key] == pytest.approx(100.0), key
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert results["sem_seg"]["pACC"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP50"] == pytest.approx(100.0)


def test_dropping_one_segment_costs_the_expected_pq(records, tmp_path):
    # Remove the first thing segment of the first image that has one: it becomes a false negative;
    # its pixels turn void in the prediction, which panopticapi does not count against others.
    gt_counts = Counter(s["category_id"] for r in records for s in r["segments_info"])
    index, dropped = next(
        (i, s) for i, r in enumerate(records) for s in r["segments_info"] if s["isthing"]
    )
    outputs = ground_truth_outputs(records)
    panoptic, segments = outputs[index]["panoptic_seg"]
    panoptic = panoptic.clone()
    panoptic[panoptic == dropped["id"]] = 0
    segments = [s for s in segments if s["id"] != dropped["id"]]
    outputs[index]["panoptic_seg"] = (panoptic, segments)

    evaluator = build_evaluator(make_cfg(tmp_path, semantic=False, instance=False), PANOPTIC)
    assert isinstance(evaluator, COCOPanopticEvaluator)
    results = evaluate(evaluator, records, outputs)["panoptic_seg"]

    # PQ_c = sum(IoU of matches) / (TP + FP/2 + FN/2); every match has IoU 1.
    tp = gt_counts[dropped["category_id"]] - 1
    pq_dropped = tp / (tp + 0.5)
    num_things = sum(1 for c in gt_counts if c < 4)  # contiguous ids 0-3 are things
    expected_pq = 100 * (len(gt_counts) - 1 + pq_dropped) / len(gt_counts)
    assert results["PQ"] == pytest.approx(expected_pq)
    assert results["PQ_th"] == pytest.approx(100 * (num_things - 1 + pq_dropped) / num_things)
    assert results["PQ_st"] == pytest.approx(100.0)
    assert results["SQ"] == pytest.approx(100.0)  # the remaining matches are perfect
    assert results["PQ"] < 100


def test_circles_predicted_as_squares_cost_the_expected_miou(records, tmp_path):
    labels = [np.asarray(Image.open(r["sem_seg_file_name"])) for r in records]
    pixels = Counter()
    for label_map in labels:
        pixels.update(dict(zip(*np.unique(label_map[label_map != 255], return_counts=True))))
    circle, square = 0, 1
    assert pixels[circle] > 0 and pixels[square] > 0, "pick a seed whose val set has both"

    outputs = [{"sem_seg": semantic_prediction(np.where(m == circle, square, m))} for m in labels]
    evaluator = build_evaluator(make_cfg(tmp_path, panoptic=False, instance=False), PANOPTIC)
    assert isinstance(evaluator, SemSegEvaluator)
    results = evaluate(evaluator, records, outputs)["sem_seg"]

    # IoU(circle) = 0; IoU(square) = |square| / (|square| + |circle|); other present classes 1.
    iou_square = pixels[square] / (pixels[square] + pixels[circle])
    expected = 100 * (0 + iou_square + len(pixels) - 2) / len(pixels)
    assert results["mIoU"] == pytest.approx(expected)
    assert results["IoU-circle"] == pytest.approx(0.0)
    assert results["IoU-square"] == pytest.approx(100 * iou_square)


def test_missing_all_predictions_of_one_class_gives_zero_ap_for_it(records, tmp_path):
    outputs = []
    for record in records:
        instances = instance_prediction(record)
        outputs.append({"instances": instances[instances.pred_classes != 0]})  # no circles
    present = {s["category_id"] for r in records for s in r["segments_info"] if s["isthing"]}
    assert 0 in present

    evaluator = build_evaluator(make_cfg(tmp_path, panoptic=False, semantic=False), PANOPTIC)
    results = evaluate(evaluator, records, outputs)["segm"]
    assert results["AP-circle"] == pytest.approx(0.0)
    assert results["AP"] == pytest.approx(100 * (len(present) - 1) / len(present))


def test_things_evaluator_handles_non_leading_thing_ids(records, tmp_path):
    # ADE20K-like metadata: stuff first, so thing contiguous ids are 2..5, not 0..3.
    name = f"{PREFIX}_val_stuff_first"
    source = MetadataCatalog.get(PANOPTIC)
    order = [11, 12, 1, 2, 3, 4]
    unregister_dataset(name)
    MetadataCatalog.get(name).set(
        json_file=source.json_file,
        evaluator_type="ade20k_panoptic_seg",
        thing_classes=source.thing_classes,
        thing_dataset_id_to_contiguous_id={d: order.index(d) for d in (1, 2, 3, 4)},
        stuff_dataset_id_to_contiguous_id={d: i for i, d in enumerate(order)},
    )
    try:
        evaluator = build_evaluator(make_cfg(tmp_path, panoptic=False, semantic=False), name)
        assert isinstance(evaluator, ThingsCOCOEvaluator)
        outputs = []
        for record in records:
            instances = instance_prediction(record, class_map={0: 2, 1: 3, 2: 4, 3: 5})
            # one extra "sky" (stuff) prediction must be ignored, not crash the evaluator
            extra = instances[:1]
            extra.pred_classes = torch.tensor([0])
            outputs.append({"instances": Instances.cat([instances, extra])})
        results = evaluate(evaluator, records, outputs)["segm"]
        assert results["AP"] == pytest.approx(100.0)
        # the catalog metadata is untouched by the evaluator's renumbering
        assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id[1] == 2
    finally:
        unregister_dataset(name)


@pytest.mark.parametrize(
    "evaluator_type, expected",
    [
        ("cityscapes_sem_seg", [CityscapesSemSegEvaluator]),
        ("cityscapes_instance", [CityscapesInstanceEvaluator]),
        (
            "cityscapes_panoptic_seg",
            [COCOPanopticEvaluator, CityscapesSemSegEvaluator, CityscapesInstanceEvaluator],
        ),
    ],
)
def test_evaluator_choice_per_type(evaluator_type, expected, tmp_path):
    name = f"{PREFIX}_choice_{evaluator_type}"
    unregister_dataset(name)
    MetadataCatalog.get(name).set(
        evaluator_type=evaluator_type,
        thing_dataset_id_to_contiguous_id={1: 0},
        stuff_dataset_id_to_contiguous_id={1: 0},
    )
    try:
        evaluator = build_evaluator(make_cfg(tmp_path), name)
        found = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
        assert_kinds(found, expected)
    finally:
        unregister_dataset(name)


def test_unknown_evaluator_type_and_no_enabled_output_are_clear_errors(records, tmp_path):
    name = f"{PREFIX}_unknown_type"
    unregister_dataset(name)
    MetadataCatalog.get(name).set(evaluator_type="pascal_voc")
    try:
        with pytest.raises(ValueError, match=r"evaluator_type='pascal_voc'.*knows"):
            build_evaluator(make_cfg(tmp_path), name)
    finally:
        unregister_dataset(name)
    with pytest.raises(ValueError, match="PANOPTIC_ON"):
        build_evaluator(make_cfg(tmp_path, False, False, False), PANOPTIC)


def test_instance_json_masks_match_the_panoptic_pngs(records):
    """The two annotation files describe the same things (so AP and PQ see the same objects)."""
    coco = COCO(MetadataCatalog.get(PANOPTIC).json_file)
    for record in records:
        panoptic = rgb_to_id(record["pan_seg_file_name"])
        things = [s for s in record["segments_info"] if s["isthing"]]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record["image_id"]]))
        assert len(annotations) == len(things)
        for segment, annotation in zip(things, annotations):
            mask = mask_util.decode(annotation["segmentation"]).astype(bool)
            assert np.array_equal(mask, panoptic == segment["id"])
            assert annotation["area"] == segment["area"] == mask.sum()


def test_mask_ap_evaluator_generates_a_not_yet_generated_dataset(tmp_path):
    # COCOEvaluator opens the instance json when built, before any loader ran.
    prefix = f"{PREFIX}_lazy"
    spec = ShapesSpec(image_size=32, num_train=1, num_val=1, seed=0)
    names = register_shapes_datasets(str(tmp_path), spec, prefix=prefix, replace=True)
    try:
        assert not os.path.exists(MetadataCatalog.get(f"{prefix}_val").json_file)
        evaluator = build_evaluator(make_cfg(tmp_path), f"{prefix}_val")
        assert isinstance(evaluator, COCOEvaluator)
        assert os.path.isfile(MetadataCatalog.get(f"{prefix}_val").json_file)
    finally:
        for name in names:
            unregister_dataset(name)


@pytest.mark.parametrize("evaluator_type", ["coco_panoptic_seg", "ade20k_panoptic_seg", "coco"])
def test_broken_instance_json_names_the_dataset_and_the_file(tmp_path, evaluator_type):
    json_file = tmp_path / "instances_val.json"
    json_file.write_text('{"images": [], "annotations": [')  # an interrupted copy
    name = f"{PREFIX}_broken_json_{evaluator_type}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        evaluator_type=evaluator_type, json_file=str(json_file), thing_classes=["a"],
        thing_dataset_id_to_contiguous_id={1: 0},
    )
    try:
        with pytest.raises(ValueError) as error:
            build_evaluator(make_cfg(tmp_path, panoptic=False, semantic=False), name)
        message = str(error.value)
        assert message.startswith(f"Cannot build the mask AP evaluator of dataset '{name}': its instance "
                                  f"annotations {json_file} could not be read (JSONDecodeError: ")
        # the panoptic datasets can be evaluated without mask AP; an instance dataset cannot
        assert ("INSTANCE_ON False" in message) == (evaluator_type != "coco")
    finally:
        unregister_dataset(name)


# ---- Cityscapes: detectron2's evaluators around cityscapesscripts, on a fake 2-image layout ----

CITY = "frankfurt"
CS_SIZE = (64, 128)  # height, width: Cityscapes' 1:2 aspect, small
CS_SEM_SEG = f"{PREFIX}_cityscapes_sem_seg"
CS_INSTANCE = f"{PREFIX}_cityscapes_instance"


def cityscapes_label_ids(index):
    """(labelIds, instanceIds) of fake image ``index``: sky over road, two cars, a person and an
    unlabeled (void) corner. Things are >= 100 px, the smallest instance cityscapesscripts keeps."""
    height, width = CS_SIZE
    ids = np.full(CS_SIZE, name2label["road"].id, np.int32)
    ids[: height // 2] = name2label["sky"].id
    ids[:8, :16] = name2label["unlabeled"].id
    instances = ids.copy()
    shift = 4 * index  # the two images differ
    things = [
        ("car", np.s_[36:52, 8 + shift : 40 + shift]),
        ("car", np.s_[40:56, 60:84]),
        ("person", np.s_[20:48, 100 - shift : 112 - shift]),
    ]
    for k, (name, box) in enumerate(things):
        ids[box] = name2label[name].id
        instances[box] = name2label[name].id * 1000 + k
    return ids, instances


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """Records of a fake cityscapes/{leftImg8bit,gtFine}/val, registered for both evaluators
    with the metadata of detectron2's builtin Cityscapes datasets."""
    root = tmp_path_factory.mktemp("cityscapes")
    image_dir, gt_dir = root / "leftImg8bit" / "val", root / "gtFine" / "val"
    (image_dir / CITY).mkdir(parents=True)
    (gt_dir / CITY).mkdir(parents=True)
    to_train_id = np.vectorize(lambda i: id2label[i].trainId % 256)  # -1 (license plate) unused
    for index in range(2):
        stem = f"{CITY}_{index:06d}_000019"
        ids, instances = cityscapes_label_ids(index)
        gt = gt_dir / CITY / stem
        Image.fromarray(ids.astype(np.uint8)).save(f"{gt}_gtFine_labelIds.png")
        Image.fromarray(to_train_id(ids).astype(np.uint8)).save(f"{gt}_gtFine_labelTrainIds.png")
        Image.fromarray(instances.astype(np.uint16)).save(f"{gt}_gtFine_instanceIds.png")  # 16-bit PNG
        with open(f"{gt}_gtFine_polygons.json", "w") as f:
            json.dump({"imgHeight": CS_SIZE[0], "imgWidth": CS_SIZE[1], "objects": []}, f)
        image = np.random.default_rng(index).integers(0, 255, (*CS_SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(image_dir / CITY / f"{stem}_leftImg8bit.png")

    builtin = MetadataCatalog.get("cityscapes_fine_instance_seg_val")
    kinds = ((CS_SEM_SEG, "cityscapes_sem_seg"), (CS_INSTANCE, "cityscapes_instance"))
    for name, evaluator_type in kinds:
        unregister_dataset(name)
        DatasetCatalog.register(name, lambda: load_cityscapes_semantic(str(image_dir), str(gt_dir)))
        MetadataCatalog.get(name).set(
            image_dir=str(image_dir),
            gt_dir=str(gt_dir),
            evaluator_type=evaluator_type,
            thing_classes=builtin.thing_classes,
            stuff_classes=builtin.stuff_classes,
        )
    yield DatasetCatalog.get(CS_SEM_SEG)
    for name in (CS_SEM_SEG, CS_INSTANCE):
        unregister_dataset(name)


def cityscapes_train_ids(record):
    return np.asarray(Image.open(record["sem_seg_file_name"]))


def cityscapes_instances(record, drop_class=None):
    """The ground-truth instances of ``record`` as a prediction (score 1), read back from its
    instanceIds PNG; ``drop_class`` (a thing class name) is left out."""
    thing_classes = MetadataCatalog.get(CS_INSTANCE).thing_classes
    gt_file = record["sem_seg_file_name"].replace("labelTrainIds", "instanceIds")
    instance_ids = np.asarray(Image.open(gt_file))
    masks, classes = [], []
    for value in np.unique(instance_ids[instance_ids >= 1000]):
        name = id2label[value // 1000].name
        if name != drop_class:
            masks.append(torch.as_tensor(instance_ids == value))
            classes.append(thing_classes.index(name))
    instances = Instances(CS_SIZE)
    instances.pred_masks = torch.stack(masks)
    instances.scores = torch.ones(len(masks))
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return instances


def cityscapes_evaluate(name, records, outputs, tmp_path, monkeypatch):
    # cityscapesscripts' instance evaluation writes matches.json into the working directory
    monkeypatch.chdir(tmp_path)
    evaluator = build_evaluator(make_cfg(tmp_path), name)
    evaluator.reset()
    for record, output in zip(records, outputs):
        evaluator.process([{"file_name": record["file_name"]}], [output])
    return evaluator.evaluate()


@pytest.mark.parametrize("version", ["2.0.0", "2.4.6"])
def test_cityscapes_evaluation_is_refused_under_numpy_2_with_the_reason(version):
    with pytest.raises(RuntimeError, match=rf"'cityscapes_fine_sem_seg_val' .* numpy {version}: install numpy<2"):
        check_numpy_for_cityscapes("cityscapes_fine_sem_seg_val", version)
    check_numpy_for_cityscapes("cityscapes_fine_sem_seg_val", "1.26.4")  # what the project runs on


def test_cityscapes_ground_truth_scores_100(cityscapes, tmp_path, monkeypatch):
    outputs = [{"sem_seg": semantic_prediction(cityscapes_train_ids(r), 19)} for r in cityscapes]
    results = cityscapes_evaluate(CS_SEM_SEG, cityscapes, outputs, tmp_path, monkeypatch)
    assert results["sem_seg"]["IoU"] == pytest.approx(100.0)
    assert results["sem_seg"]["iIoU"] == pytest.approx(100.0)

    outputs = [{"instances": cityscapes_instances(r)} for r in cityscapes]
    results = cityscapes_evaluate(CS_INSTANCE, cityscapes, outputs, tmp_path, monkeypatch)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP50"] == pytest.approx(100.0)


def test_cityscapes_cars_predicted_as_road_cost_the_expected_iou(cityscapes, tmp_path, monkeypatch):
    road, sky, person, car = 0, 10, 11, 13  # train ids
    labels = [cityscapes_train_ids(r) for r in cityscapes]
    pixels = Counter()
    for label_map in labels:
        pixels.update(dict(zip(*np.unique(label_map, return_counts=True))))
    assert set(pixels) == {road, sky, person, car, 255}

    # The void corner (255) is predicted as road too (semantic_prediction): Cityscapes never
    # counts predictions on void pixels, so it must not lower IoU(road).
    outputs = [{"sem_seg": semantic_prediction(np.where(m == car, road, m), 19)} for m in labels]
    results = cityscapes_evaluate(CS_SEM_SEG, cityscapes, outputs, tmp_path, monkeypatch)

    # Classes absent from both ground truth and prediction do not count (NaN in cityscapesscripts).
    iou_road = pixels[road] / (pixels[road] + pixels[car])
    expected = 100 * (iou_road + 0 + 1 + 1) / 4  # road, car, sky, person
    assert results["sem_seg"]["IoU"] == pytest.approx(expected)
    assert results["sem_seg"]["IoU"] < 100


def test_cityscapes_missing_all_persons_halves_ap(cityscapes, tmp_path, monkeypatch):
    # Only car and person have ground truth (the other six thing classes are NaN and skipped):
    # AP = mean(AP_car = 1, AP_person = 0), at every IoU threshold.
    outputs = [{"instances": cityscapes_instances(r, drop_class="person")} for r in cityscapes]
    results = cityscapes_evaluate(CS_INSTANCE, cityscapes, outputs, tmp_path, monkeypatch)
    assert results["segm"]["AP"] == pytest.approx(50.0)
    assert results["segm"]["AP50"] == pytest.approx(50.0)
