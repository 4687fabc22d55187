import os

import pytest
import torch

# Two cores: keep intra-op threads per test worker low so xdist workers don't oversubscribe.
torch.set_num_threads(int(os.environ.get("HCFORMER_TEST_THREADS", "1")))


def tiny_hcformer_cfg(**overrides):
    """A small HCFormer config (ResNet-18, few queries) for fast CPU tests."""
    from detectron2.config import get_cfg

    from hcformer import add_hcformer_config

    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "HCFormer"
    cfg.MODEL.BACKBONE.NAME = "D2HCResNet"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.SEM_SEG_HEAD.NAME = "HCFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 6
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 64
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 128
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 64
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ()
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg


@pytest.fixture
def make_cfg():
    return tiny_hcformer_cfg
