"""Every config file merges into the project's config (no unknown keys) with the intended values."""
from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

from hcformer.config import add_hcformer_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
MODEL_CONFIGS = [p for p in ALL_CONFIGS if not p.name.startswith("Base-")]


def load(path: Path) -> CfgNode:
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(path))  # raises KeyError on a key the project does not define
    return cfg


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


def test_configs_are_found():
    assert len(MODEL_CONFIGS) >= 15


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_id)
def test_config_merges(path: Path):
    load(path)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=_id)
def test_model_config_is_hcformer(path: Path):
    cfg = load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "HCFormer"
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "HCFormerHead"
    swin = "swin" in path.parent.name or "swin" in path.name.lower()
    assert cfg.MODEL.BACKBONE.NAME == ("HCSwinTransformer" if swin else "D2HCResNet")
    # HCFormer+ (a "+" in the name) is the encoder on res5, for either backbone
    assert (cfg.MODEL.RESNETS.AUX == "transformer") == ("hcformer+" in path.name)
    assert list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES) == ["res5", "assign"]
    # the evaluated outputs follow the task of the directory
    test = cfg.MODEL.MASK_FORMER.TEST
    task = (path.parent.parent if path.parent.name == "swin" else path.parent).name
    expected = {
        "panoptic-segmentation": (True, True, True),
        "instance-segmentation": (False, True, False),
        "semantic-segmentation": (True, False, False),
    }[task]
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON) == expected


# (config, {dotted key: value}) for the values the paper's experiments depend on.
PAPER_VALUES = [
    ("coco/panoptic-segmentation/hcformer_R50_bs16_50ep.yaml", {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133, "MODEL.SEM_SEG_HEAD.CONVS_DIM": 2048,
        "MODEL.RESNETS.AUX": "none", "MODEL.RESNETS.DOWNSAMPLING": "deform",
        "MODEL.RESNETS.NORM": "FrozenBN", "MODEL.HC.LEVEL": 3,
        "MODEL.MASK_FORMER.DEC_LAYERS": 9, "SOLVER.MAX_ITER": 368750,
        "SOLVER.STEPS": (327778, 355092), "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
        "SOLVER.AMP.ENABLED": True, "INPUT.DATASET_MAPPER_NAME": "coco_panoptic_lsj",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.8,
    }),
    ("coco/panoptic-segmentation/hcformer+_R50_bs16_100ep.yaml", {
        "MODEL.RESNETS.AUX": "transformer", "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
        "SOLVER.MAX_ITER": 737500, "SOLVER.STEPS": (655556, 710184),
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "HCTransformerDecoder",
    }),
    ("coco/panoptic-segmentation/hcformer+_R50_MFDec_bs16_100ep.yaml", {
        "MODEL.RESNETS.AUX": "transformer", "SOLVER.MAX_ITER": 737500,
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "HCStandardTransformerDecoder",
    }),
    ("coco/panoptic-segmentation/hcformer_R50_bs16_50ep_level0.yaml", {"MODEL.HC.LEVEL": 0}),
    ("coco/panoptic-segmentation/hcformer_R50_bs16_50ep_level1.yaml", {"MODEL.HC.LEVEL": 1}),
    ("coco/panoptic-segmentation/hcformer_R50_bs16_50ep_level2.yaml", {"MODEL.HC.LEVEL": 2}),
    ("coco/instance-segmentation/hcformer_R50_bs16_50ep.yaml", {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 80, "DATASETS.TRAIN": ("coco_2017_train",),
        "INPUT.DATASET_MAPPER_NAME": "coco_instance_lsj",
    }),
    ("coco/instance-segmentation/hcformer+_R50_bs16_100ep.yaml", {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 80, "MODEL.RESNETS.AUX": "transformer",
        "SOLVER.MAX_ITER": 737500,
    }),
    ("ade20k/semantic-segmentation/hcformer_R50_bs16_160k.yaml", {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150, "SOLVER.MAX_ITER": 160000,
        "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR", "INPUT.CROP.SIZE": (512, 512),
        "INPUT.MIN_SIZE_TRAIN": tuple(int(x * 0.1 * 512) for x in range(5, 21)),
        "INPUT.SIZE_DIVISIBILITY": 512, "INPUT.COLOR_AUG_SSD": True,
    }),
    ("ade20k/semantic-segmentation/hcformer+_R50_bs16_320k.yaml", {
        "MODEL.RESNETS.AUX": "transformer", "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
        "SOLVER.MAX_ITER": 320000,
    }),
    ("cityscapes/semantic-segmentation/hcformer_R50_bs16_90k.yaml", {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19, "MODEL.MASK_FORMER.DEC_LAYERS": 10,
        "SOLVER.MAX_ITER": 90000, "INPUT.CROP.SIZE": (512, 1024),
        "INPUT.MIN_SIZE_TRAIN": tuple(int(x * 0.1 * 1024) for x in range(5, 21)),
    }),
    ("cityscapes/semantic-segmentation/hcformer+_R50_bs16_180k.yaml", {
        "MODEL.RESNETS.AUX": "transformer", "MODEL.MASK_FORMER.DEC_LAYERS": 10,
        "SOLVER.MAX_ITER": 180000,
    }),
    # Swin: the original's config files (MODEL.SWIN.* as Mask2Former's), 200 queries for Swin-L
    # on COCO, the paper's schedules (Swin-L+ on COCO 200 epochs; ADE20K + 320k, Cityscapes + 180k)
    ("coco/panoptic-segmentation/swin/hcformer_swin_small_bs16_50ep.yaml", {
        "MODEL.SWIN.EMBED_DIM": 96, "MODEL.SWIN.DEPTHS": (2, 2, 18, 2), "MODEL.SWIN.NUM_HEADS": (3, 6, 12, 24),
        "MODEL.SWIN.WINDOW_SIZE": 7, "MODEL.SWIN.DROP_PATH_RATE": 0.3, "MODEL.SWIN.PRETRAIN_IMG_SIZE": 224,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": 768, "MODEL.HC.EMB_DIM": 128, "MODEL.HC.TEMPERATURE": 0.1,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100, "SOLVER.MAX_ITER": 368750,
        "MODEL.WEIGHTS": "swin_small_patch4_window7_224.pkl", "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133,
    }),
    ("coco/panoptic-segmentation/swin/hcformer+_swin_small_bs16_100ep.yaml", {
        "MODEL.SWIN.EMBED_DIM": 96, "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256, "SOLVER.MAX_ITER": 737500,
        "SOLVER.STEPS": (655556, 710184),
    }),
    ("coco/panoptic-segmentation/swin/hcformer_swin_large_IN21k_384_bs16_100ep.yaml", {
        "MODEL.SWIN.EMBED_DIM": 192, "MODEL.SWIN.DEPTHS": (2, 2, 18, 2), "MODEL.SWIN.NUM_HEADS": (6, 12, 24, 48),
        "MODEL.SWIN.WINDOW_SIZE": 12, "MODEL.SWIN.PRETRAIN_IMG_SIZE": 384, "MODEL.SEM_SEG_HEAD.CONVS_DIM": 1536,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 200, "SOLVER.MAX_ITER": 737500,
        "MODEL.WEIGHTS": "swin_large_patch4_window12_384_22k.pkl",
    }),
    ("coco/panoptic-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_200ep.yaml", {
        "MODEL.SWIN.EMBED_DIM": 192, "MODEL.SWIN.WINDOW_SIZE": 12, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 200,
        "MODEL.MASK_FORMER.DEC_LAYERS": 9, "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133,
        "SOLVER.MAX_ITER": 1475000, "SOLVER.STEPS": (1311112, 1420368),
    }),
    ("coco/instance-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_200ep.yaml", {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 80, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 200,
        "SOLVER.MAX_ITER": 1475000, "INPUT.DATASET_MAPPER_NAME": "coco_instance_lsj",
    }),
    ("ade20k/semantic-segmentation/swin/hcformer_swin_small_bs16_160k.yaml", {
        "MODEL.SWIN.EMBED_DIM": 96, "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150, "SOLVER.MAX_ITER": 160000,
        "INPUT.CROP.SIZE": (512, 512),
    }),
    ("ade20k/semantic-segmentation/swin/hcformer+_swin_small_bs16_320k.yaml", {
        "MODEL.SWIN.EMBED_DIM": 96, "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256, "SOLVER.MAX_ITER": 320000,
    }),
    ("ade20k/semantic-segmentation/swin/hcformer_swin_large_IN21k_384_bs16_160k_res640.yaml", {
        "MODEL.SWIN.EMBED_DIM": 192, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100, "SOLVER.MAX_ITER": 160000,
        "INPUT.CROP.SIZE": (640, 640), "INPUT.SIZE_DIVISIBILITY": 640, "INPUT.MIN_SIZE_TEST": 640,
        "INPUT.MAX_SIZE_TEST": 2560, "INPUT.MIN_SIZE_TRAIN": tuple(int(x * 0.1 * 640) for x in range(5, 21)),
        "TEST.AUG.MIN_SIZES": (320, 480, 640, 800, 960, 1120),
    }),
    ("ade20k/semantic-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_320k_res640.yaml", {
        "MODEL.SWIN.EMBED_DIM": 192, "SOLVER.MAX_ITER": 320000, "INPUT.CROP.SIZE": (640, 640),
    }),
    ("cityscapes/semantic-segmentation/swin/hcformer_swin_small_bs16_90k.yaml", {
        "MODEL.SWIN.EMBED_DIM": 96, "MODEL.MASK_FORMER.DEC_LAYERS": 10, "SOLVER.MAX_ITER": 90000,
    }),
    ("cityscapes/semantic-segmentation/swin/hcformer+_swin_small_bs16_180k.yaml", {
        "MODEL.SWIN.EMBED_DIM": 96, "SOLVER.MAX_ITER": 180000,
    }),
    ("cityscapes/semantic-segmentation/swin/hcformer_swin_large_IN21k_384_bs16_90k.yaml", {
        "MODEL.SWIN.EMBED_DIM": 192, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100, "SOLVER.MAX_ITER": 90000,
        "INPUT.CROP.SIZE": (512, 1024),
    }),
    ("cityscapes/semantic-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_180k.yaml", {
        "MODEL.SWIN.EMBED_DIM": 192, "MODEL.MASK_FORMER.DEC_LAYERS": 10, "SOLVER.MAX_ITER": 180000,
    }),
    ("shapes/panoptic-segmentation/hcformer_swinT_shapes.yaml", {
        "MODEL.WEIGHTS": "", "MODEL.SWIN.DEPTHS": (2, 2, 2, 2), "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 6,
        "SOLVER.AMP.ENABLED": False,
    }),
    ("shapes/panoptic-segmentation/hcformer_R18_shapes.yaml", {
        "MODEL.WEIGHTS": "", "MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.NORM": "BN",
        "SOLVER.AMP.ENABLED": False, "TEST.HIERARCHY_EVAL": True,
    }),
]


def _get(cfg: CfgNode, dotted: str):
    for key in dotted.split("."):
        cfg = cfg[key]
    return tuple(cfg) if isinstance(cfg, list) else cfg


@pytest.mark.parametrize("name,values", PAPER_VALUES, ids=[name for name, _ in PAPER_VALUES])
def test_paper_values(name: str, values: dict):
    cfg = load(CONFIG_DIR / name)
    for key, value in values.items():
        assert _get(cfg, key) == value, key
