"""The released HCFormer+ Swin-L COCO panoptic checkpoint, end to end on the CPU.

The original implementation's one released model has the key layout and shapes listed in
/work/shared/reference/official_hcformer.md (see :func:`released_layout`). A file of that
layout, with random values, stands in for it here: it must load into
configs/coco/panoptic-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_200ep.yaml with
no missing, unexpected or mismatched key, and the entry points a user runs on it must work:
``train_net.py --eval-only`` (on a tiny COCO-panoptic-format dataset with COCO's 133 classes),
``demo/demo.py`` and ``tools/visualize_hierarchy.py``.

The file and the dataset are made once per module (the model has 217M parameters, 870 MB in
fp32); every test feeds 64x96 images (INPUT.MIN_SIZE_TEST 64) so that Swin-L runs in seconds.
"""
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image
from pycocotools import mask as mask_utils
from timm.models.swin_transformer import get_relative_position_index

from hcformer.checkpoint import HCFormerCheckpointer
from hcformer.config import add_hcformer_config
from tiny_configs import load_script

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/coco/panoptic-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_200ep.yaml"
HEIGHT, WIDTH = 64, 96
# small test images, on the CPU
SMALL_RUN = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.DEVICE", "cpu"]
DATASET = "released_swin_large_tiny_coco_panoptic"
RELEASED_ITERATION = 1474999  # the last iteration of the 200-epoch schedule (MAX_ITER 1475000)


def released_layout():
    """{key: shape} of the released HCFormer+ Swin-L COCO panoptic checkpoint, from its
    documented layout: Swin-L (192, [2, 2, 18, 2], [6, 12, 24, 48], window 12), clustering
    at stages 0-2 with 128 embedding channels, the 6-layer encoder on res5, a decoder with
    200 queries, 8 layers and 133 + 1 classes (no input_proj: res5 has 256 channels)."""
    shapes = {"backbone.patch_embed.proj.weight": (192, 3, 4, 4), "backbone.patch_embed.proj.bias": (192,)}
    norm = lambda p, c: {f"{p}.weight": (c,), f"{p}.bias": (c,)}  # noqa: E731
    linear = lambda p, o, i: {f"{p}.weight": (o, i), f"{p}.bias": (o,)}  # noqa: E731
    attention = lambda p, d: {f"{p}.in_proj_weight": (3 * d, d), f"{p}.in_proj_bias": (3 * d,),  # noqa: E731
                              **linear(f"{p}.out_proj", d, d)}
    shapes.update(norm("backbone.patch_embed.norm", 192))
    for i, (depth, heads) in enumerate(zip((2, 2, 18, 2), (6, 12, 24, 48))):
        c = 192 * 2**i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}"
            shapes.update({**norm(f"{p}.norm1", c), **norm(f"{p}.norm2", c)})
            shapes.update({**linear(f"{p}.attn.qkv", 3 * c, c), **linear(f"{p}.attn.proj", c, c)})
            shapes[f"{p}.attn.relative_position_bias_table"] = (23 * 23, heads)
            shapes[f"{p}.attn.relative_position_index"] = (144, 144)
            shapes.update({**linear(f"{p}.mlp.fc1", 4 * c, c), **linear(f"{p}.mlp.fc2", c, 4 * c)})
        if i < 3:
            p = f"backbone.layers.{i}"
            shapes[f"{p}.downsample.reduction.weight"] = (2 * c, 4 * c)
            shapes.update(norm(f"{p}.downsample.norm", 4 * c))
            shapes.update({f"{p}.clustering.fine_emb.weight": (128, c, 1, 1), f"{p}.clustering.temp": (1,),
                           f"{p}.clustering.coarse_emb.weight": (128, 2 * c, 1, 1)})
            shapes.update({**norm(f"{p}.clustering.fine_norm", c), **norm(f"{p}.clustering.coarse_norm", 2 * c)})
    shapes.update(norm("backbone.norm3", 1536))
    shapes.update({"backbone.aux.input_proj.0.weight": (256, 1536, 1, 1), "backbone.aux.input_proj.0.bias": (256,)})
    shapes.update(norm("backbone.aux.input_proj.1", 256))
    for i in range(6):
        p = f"backbone.aux.encoder.layers.{i}"
        shapes.update(attention(f"{p}.self_attn", 256))
        shapes.update({**linear(f"{p}.linear1", 2048, 256), **linear(f"{p}.linear2", 256, 2048)})
        shapes.update({**norm(f"{p}.norm1", 256), **norm(f"{p}.norm2", 256)})
    d = "sem_seg_head.predictor"
    shapes.update({f"{d}.query_feat.weight": (200, 256), f"{d}.query_embed.weight": (200, 256),
                   f"{d}.level_embed.weight": (1, 256)})
    shapes.update({f"{d}.mask_proj.weight": (256, 256, 1, 1), f"{d}.mask_proj.bias": (256,)})
    shapes.update({**linear(f"{d}.class_embed", 134, 256), **norm(f"{d}.decoder_norm", 256)})
    for i in range(3):
        shapes.update(linear(f"{d}.mask_embed.layers.{i}", 256, 256))
    for i in range(8):
        shapes.update(attention(f"{d}.transformer_self_attention_layers.{i}.self_attn", 256))
        shapes.update(norm(f"{d}.transformer_self_attention_layers.{i}.norm", 256))
        shapes.update(attention(f"{d}.transformer_cross_attention_layers.{i}.multihead_attn", 256))
        shapes.update(norm(f"{d}.transformer_cross_attention_layers.{i}.norm", 256))
        p = f"{d}.transformer_ffn_layers.{i}"
        shapes.update({**linear(f"{p}.linear1", 2048, 256), **linear(f"{p}.linear2", 256, 2048)})
        shapes.update(norm(f"{p}.norm", 256))
    shapes["criterion.empty_weight"] = (134,)
    return shapes


def _random_tensor(key: str, shape, generator: torch.Generator) -> torch.Tensor:
    """A value of a trained model's scale: matrices with unit-variance outputs, vectors (norm
    weights and biases, scales, class weights) around 1, the true relative position index."""
    if key.endswith(".relative_position_index"):
        return get_relative_position_index(12, 12)
    if len(shape) == 1:
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))


def _write_checkpoint(path: Path) -> None:
    """The released file's layout as detectron2's trainer saves it: the state dict under
    "model" (tensors, weights-only readable) next to the iteration."""
    generator = torch.Generator().manual_seed(0)
    state = {key: _random_tensor(key, shape, generator) for key, shape in released_layout().items()}
    torch.save({"model": state, "iteration": RELEASED_ITERATION}, path)


def _image(seed: int) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 RGB: a bright block (the "person") on a dark textured background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[16:48, 24 + 8 * seed : 64 + 8 * seed] = rng.integers(160, 256, 3, dtype=np.uint8)
    return image


def _register_tiny_coco_panoptic(root: Path) -> None:
    """Two images in the COCO panoptic layout (images, panoptic PNGs + JSON, semantic PNGs,
    instances JSON) with COCO's 133 categories, registered as COCO panoptic is: a "person"
    (thing, id 1) on "wall-other-merged" (stuff, id 199), one row of unlabelled pixels."""
    from hcformer.data.datasets.catalog_utils import unregister_dataset
    from hcformer.data.datasets.register_coco_panoptic_annos_semseg import (
        panoptic_metadata_from_categories,
        register_coco_panoptic_with_sem_seg,
    )

    contiguous = {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)}
    person, wall = 1, 199
    assert next(c for c in COCO_CATEGORIES if c["id"] == wall)["name"] == "wall-other-merged"
    for folder in ("images", "panoptic", "semantic"):
        (root / folder).mkdir(parents=True)
    images, panoptic_annotations, instance_annotations = [], [], []
    for index in range(2):
        name = f"{index:012d}"
        Image.fromarray(_image(index)).save(root / "images" / f"{name}.jpg", quality=95)
        thing = np.zeros((HEIGHT, WIDTH), dtype=bool)
        thing[16:48, 24 + 8 * index : 64 + 8 * index] = True
        segment_ids = np.where(thing, 1, 2)
        segment_ids[-1] = 0  # unlabelled
        Image.fromarray(id2rgb(segment_ids)).save(root / "panoptic" / f"{name}.png")
        semantic = np.where(thing, contiguous[person], contiguous[wall]).astype(np.uint8)
        semantic[-1] = 255
        Image.fromarray(semantic).save(root / "semantic" / f"{name}.png")

        segments = []
        for segment_id, category in ((1, person), (2, wall)):
            rle = mask_utils.encode(np.asfortranarray(segment_ids == segment_id, dtype=np.uint8))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            area = int(mask_utils.area(rle))
            segments.append({"id": segment_id, "category_id": category, "iscrowd": 0, "bbox": bbox, "area": area})
            if category == person:
                rle["counts"] = rle["counts"].decode("ascii")
                instance_annotations.append({"id": index + 1, "image_id": index, "category_id": person,
                                             "segmentation": rle, "bbox": bbox, "area": area, "iscrowd": 0})
        images.append({"id": index, "file_name": f"{name}.jpg", "height": HEIGHT, "width": WIDTH})
        panoptic_annotations.append({"image_id": index, "file_name": f"{name}.png", "segments_info": segments})
    categories = [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in COCO_CATEGORIES]
    (root / "panoptic.json").write_text(
        json.dumps({"images": images, "annotations": panoptic_annotations, "categories": categories})
    )
    thing_categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    (root / "instances.json").write_text(
        json.dumps({"images": images, "annotations": instance_annotations, "categories": thing_categories})
    )
    unregister_dataset(DATASET)
    register_coco_panoptic_with_sem_seg(
        DATASET,
        panoptic_metadata_from_categories(COCO_CATEGORIES),
        str(root / "images"),
        str(root / "panoptic"),
        str(root / "panoptic.json"),
        str(root / "semantic"),
        str(root / "instances.json"),
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The fabricated checkpoint, a 64x96 test image and the tiny COCO dataset, made once."""
    root = tmp_path_factory.mktemp("released_swin_large")
    checkpoint = root / "hcformer+_swin_large_coco_panoptic.pth"
    _write_checkpoint(checkpoint)
    image = root / "photo.png"
    Image.fromarray(_image(0)).save(image)
    _register_tiny_coco_panoptic(root / "tiny_coco")
    yield {"root": root, "checkpoint": checkpoint, "image": image}
    from hcformer.data.datasets.catalog_utils import unregister_dataset

    unregister_dataset(DATASET)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_loads_with_no_missing_unexpected_or_mismatched_key(released):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == released_layout()

    checkpointer = HCFormerCheckpointer(model)
    warnings = _Records()  # fvcore logs missing / unexpected / skipped keys as warnings
    checkpointer.logger.addHandler(warnings)
    try:
        rest = checkpointer.load(str(released["checkpoint"]))
    finally:
        checkpointer.logger.removeHandler(warnings)
    assert warnings.messages == []
    assert rest["iteration"] == RELEASED_ITERATION
    # every tensor of the model is the file's: none kept its initialisation
    stored = torch.load(released["checkpoint"], mmap=True, weights_only=True)["model"]
    different = [k for k, v in model.state_dict().items() if not torch.equal(v, stored[k].to(v.dtype))]
    assert different == []


def test_demo_gives_a_panoptic_segmentation_of_the_image(released, tmp_path):
    demo = load_script("demo/demo.py")
    out = tmp_path / "demo"
    written = demo.main([
        "--config-file", str(CONFIG), "--input", str(released["image"]), "--output", str(out),
        "--save-predictions", "--confidence-threshold", "0",
        "MODEL.WEIGHTS", str(released["checkpoint"]), *SMALL_RUN,
    ])
    assert sorted(Path(p).name for p in written) == sorted(
        ["photo.png", "photo_panoptic.png", "photo_panoptic.json", "photo_instances.json", "photo_sem_seg.png"]
    )
    assert cv2.imread(str(out / "photo.png")).shape == (HEIGHT, WIDTH, 3)
    ids = rgb2id(np.asarray(Image.open(out / "photo_panoptic.png").convert("RGB")))
    assert ids.shape == (HEIGHT, WIDTH)
    segments = json.loads((out / "photo_panoptic.json").read_text())["segments_info"]
    assert segments, "with threshold 0 some of the 200 queries make segments"
    assert set(np.unique(ids)) - {0} == {s["id"] for s in segments}
    coco = {c["id"]: c["name"] for c in COCO_CATEGORIES}  # COCO's dataset ids and names
    assert all(coco[s["category_id"]] == s["category_name"] for s in segments)
    semantic = np.asarray(Image.open(out / "photo_sem_seg.png"))
    assert semantic.shape == (HEIGHT, WIDTH) and semantic.max() < 133


def test_hierarchy_visualiser_writes_its_panels(released, tmp_path):
    tool = load_script("tools/visualize_hierarchy.py")
    out = tmp_path / "hierarchy"
    summary = tool.main([
        "--config-file", str(CONFIG), "--input", str(released["image"]), "--output", str(out),
        "--json", str(out / "summary.json"), "MODEL.WEIGHTS", str(released["checkpoint"]), *SMALL_RUN,
    ])
    (image,) = summary["images"]
    assert image["panels"] == {"hierarchy": str(out / "photo_hierarchy.png"), "clusters": str(out / "photo_clusters.png")}
    for panel in image["panels"].values():
        picture = cv2.imread(panel)
        assert picture is not None and picture.shape[0] >= HEIGHT and picture.shape[1] > WIDTH  # several cells
    # MODEL.HC.LEVEL 3: three clusterings between strides 4 and 32, so four levels of clusters
    assert {k: v["stride"] for k, v in image["levels"].items()} == {"level0": 4, "level1": 8, "level2": 16, "level3": 32}
    assert json.loads((out / "summary.json").read_text())["weights"] == str(released["checkpoint"])


def test_eval_only_reports_pq_miou_and_mask_ap(released, tmp_path):
    """train_net.py --eval-only: the checkpointer, the test loader and the config's evaluators
    (COCO panoptic, semantic, mask AP) over the tiny dataset."""
    from hcformer.engine.command_line import main

    args = default_argument_parser().parse_args([
        "--config-file", str(CONFIG), "--eval-only",
        "MODEL.WEIGHTS", str(released["checkpoint"]), "DATASETS.TEST", f"('{DATASET}',)",
        "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", "0",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", *SMALL_RUN,
    ])
    results = main(args)
    assert set(results) == {"panoptic_seg", "sem_seg", "segm"}
    for task, metric in (("panoptic_seg", "PQ"), ("sem_seg", "mIoU"), ("segm", "AP")):
        value = results[task][metric]
        assert math.isfinite(value) and 0 <= value <= 100, (task, metric, value)
    # the ground truth was read with COCO's class mapping: IoU is defined for its two classes only
    scored = {k for k, v in results["sem_seg"].items() if k.startswith("IoU-") and not math.isnan(v)}
    assert scored == {"IoU-person", "IoU-wall-other-merged"}
    # --eval-only writes into OUTPUT_DIR/eval_<checkpoint name>
    evaluation = tmp_path / f"eval_{released['checkpoint'].stem}"
    predictions = json.loads((evaluation / "inference" / "coco_instances_results.json").read_text())
    assert {p["image_id"] for p in predictions} == {0, 1}
