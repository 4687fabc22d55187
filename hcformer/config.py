"""Config keys of hcformer.

Keys and defaults follow the original HCFormer / Mask2Former so that their config files run
unchanged; keys that only this project has are marked "(hcformer)".
"""
from typing import Callable, List

from detectron2.config import CfgNode as CN

# Functions adding a project's keys (projects/*): registered when the project's package is
# imported, so that every entry point building a config (train_net, tools, demo) knows them.
_CONFIG_EXTENSIONS: List[Callable[[CN], None]] = []


def register_config_extension(add_config: Callable[[CN], None]) -> Callable[[CN], None]:
    """Make ``add_hcformer_config`` also call ``add_config`` (usable as a decorator)."""
    if add_config not in _CONFIG_EXTENSIONS:
        _CONFIG_EXTENSIONS.append(add_config)
    return add_config


def add_hcformer_config(cfg: CN) -> None:
    """Add every hcformer key, with its default, to a detectron2 config (in place), then the
    keys of the imported projects (``register_config_extension``)."""
    # ---------------------------------------------------------------- data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False  # photometric distortion as in SSD (semantic mappers)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # re-sample crops dominated by one class
    cfg.INPUT.SIZE_DIVISIBILITY = -1  # semantic mappers pad training crops to this size
    # large-scale jittering (coco_*_lsj mappers)
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    cfg.DATALOADER.SKIP_BAD_SAMPLES = False  # (hcformer) skip unreadable samples in training
    # (hcformer) images with more pixels are refused before they are decoded (training,
    # evaluation, demo): a corrupt header or a huge scan would otherwise exhaust the memory.
    # PIL's own limit (2 x Image.MAX_IMAGE_PIXELS) still applies above this.
    cfg.INPUT.MAX_IMAGE_PIXELS = 89_478_485  # PIL's warning threshold, ~9459 x 9459
    # (hcformer) your own datasets, registered in every process before anything is built
    # (hcformer/data/datasets/register_from_config.py); each a list of lists of strings:
    # [[name, json_file, image_root], ...]: COCO instance JSON (polygons or RLE)
    cfg.DATASETS.COCO_INSTANCES = []
    # [[name, panoptic_json, panoptic_png_root, image_root(, semantic_png_root)], ...]; without
    # the last, semantic PNGs are derived on first use into <panoptic_png_root>_semseg
    cfg.DATASETS.COCO_PANOPTIC = []
    # [[name, image_dir, label_dir, classes_txt], ...]: label PNG value = line of classes_txt
    # (0-based), 255 = ignore
    cfg.DATASETS.SEM_SEG = []

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # for nn.Embedding weights (queries)
    cfg.SOLVER.POLY_LR_POWER = 0.9  # for LR_SCHEDULER_NAME "WarmupPolyLR"
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0

    # ---------------------------------------------------------------- checkpoints
    # (hcformer) read .pkl files / pickled objects (can run code!); see
    # hcformer/checkpoint/safe_loading.py. The environment variable HCFORMER_ALLOW_PICKLE=1
    # does the same.
    cfg.MODEL.ALLOW_PICKLE = False
    # (hcformer) tensors not taken from MODEL.WEIGHTS (names or module prefixes): they keep
    # their initialisation and may be absent from the file or of another shape there, e.g.
    # ["sem_seg_head.predictor.class_embed"] to fine-tune on another number of classes.
    # Otherwise a whole-model checkpoint must match the model exactly. --resume loads all.
    cfg.MODEL.WEIGHTS_IGNORE = []

    # ---------------------------------------------------------------- HCFormer clustering
    cfg.MODEL.HC = CN()
    cfg.MODEL.HC.LEVEL = 3  # number of clustered downsampling layers (0-3)
    cfg.MODEL.HC.TEMPERATURE = 0.1  # initial value of the learnable scale s of eq. (3)
    cfg.MODEL.HC.EMB_DIM = 128  # channels of the clustering embeddings
    cfg.MODEL.HC.L1_WEIGHT = 0.1  # lambda_reg of the regulariser sum_i |s_i|
    cfg.MODEL.HC.POINT_DECODING = True  # (hcformer) training decodes only what the losses sample
    # (hcformer) depth of the HCFormer+ encoder on res5 (MODEL.RESNETS.AUX "transformer"); the
    # original always builds 6. MODEL.MASK_FORMER.ENC_LAYERS is, as there, the encoder depth
    # inside the MaskFormer decoder (HCStandardTransformerDecoder).
    cfg.MODEL.HC.AUX_ENCODER_LAYERS = 6

    # ---------------------------------------------------------------- ResNet backbone
    cfg.MODEL.RESNETS.DOWNSAMPLING = "deform"  # "deform" (modulated DCNv2) | "conv"
    cfg.MODEL.RESNETS.AUX = "none"  # "none" | "transformer" (HCFormer+ encoder on res5)
    cfg.MODEL.RESNETS.WEIGHTS = ""  # (hcformer) local ImageNet weights (.pth / .pkl), optional
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"  # accepted for Mask2Former config files; always "basic"
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]  # accepted for the original config files; unused
    # (hcformer) recompute activations in backward instead of keeping them; both need a norm
    # without running statistics (FrozenBN, GN) and give the same gradients. USE_CHECKPOINT:
    # every residual block on its own (CHECKPOINT_STAGES is then moot). CHECKPOINT_STAGES: the
    # named stages ("stem", "res2" … "res5"), each as one segment; the early stages hold the
    # largest maps for their compute (the COCO / ADE20K / Cityscapes bases: stem, res2, res3).
    cfg.MODEL.RESNETS.USE_CHECKPOINT = False
    cfg.MODEL.RESNETS.CHECKPOINT_STAGES = []

    # ---------------------------------------------------------------- Swin backbone
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SWIN.USE_CHECKPOINT = False

    # ---------------------------------------------------------------- head
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES is detectron2's key; (hcformer) -1 takes the number of
    # classes of the DATASETS.TRAIN datasets (engine/config_validation.py)
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"  # unused: no pixel decoder

    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "HCTransformerDecoder"
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    # dropout of HCStandardTransformerDecoder (MFDec) as in the original; the masked decoder
    # (HCTransformerDecoder) reads it too, where the original always uses 0.0: the released
    # configs set 0.0, so the two agree unless a config changes it
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 9  # decoder layers + 1 (the prediction from the queries)
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # point-sampled mask losses
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # ---------------------------------------------------------------- evaluation
    cfg.TEST.HIERARCHY_EVAL = False  # (hcformer) undersegmentation error of every level

    for add_config in _CONFIG_EXTENSIONS:
        add_config(cfg)
