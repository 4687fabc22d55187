"""Config keys of the PaCa project: MODEL.PACA.* (backbone) and MODEL.PACA.HEAD.* (seg head)."""
from detectron2.config import CfgNode as CN


def add_paca_config(cfg: CN) -> None:
    """Add MODEL.PACA.* to a detectron2 config (in place). Defaults: PaCa-Tiny.

    The PaCa segmentation head also reads MODEL.SEM_SEG_HEAD.{IN_FEATURES, NUM_CLASSES,
    CONVS_DIM (D), NORM, LOSS_WEIGHT, IGNORE_VALUE}; D2HCPaCa reads MODEL.HC.*.
    """
    cfg.MODEL.PACA = CN()
    cfg.MODEL.PACA.EMBED_DIMS = [96, 192, 320, 384]  # channels of the four stages
    cfg.MODEL.PACA.DEPTHS = [2, 2, 4, 2]  # Tiny; Small [3, 3, 10, 3]; Base [3, 3, 18, 3]
    cfg.MODEL.PACA.NUM_HEADS = [2, 4, 8, 16]
    cfg.MODEL.PACA.MLP_RATIO = 4.0
    cfg.MODEL.PACA.QKV_BIAS = True
    # clusters M per stage; 0 = plain patch-to-patch MHSA (the released models' last stage)
    cfg.MODEL.PACA.NUM_CLUSTERS = [100, 100, 100, 0]
    cfg.MODEL.PACA.CLUSTERING = "conv"  # onsite clustering: "conv" (eqs. 4-5) | "mlp" (eq. 6)
    # "stage": computed by a stage's first block and shared; "block": every block clusters
    cfg.MODEL.PACA.CLUSTERING_SCOPE = "stage"
    # LR of the clustering's last layer (to M) relative to the rest of the backbone; the paper
    # uses 10 (the head's LR) when fine-tuning with a changed M (100 → 200 on ADE20K)
    cfg.MODEL.PACA.CLUSTERING_LR_MULTIPLIER = 1.0
    cfg.MODEL.PACA.DROP_PATH_RATE = 0.1  # Base: 0.5
    cfg.MODEL.PACA.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # external clustering teacher (PaCa^ec): a ConvMixer CNN gives every stage's clusters
    cfg.MODEL.PACA.TEACHER = CN()
    cfg.MODEL.PACA.TEACHER.ENABLED = False
    cfg.MODEL.PACA.TEACHER.DEPTHS = [2, 2, 2, 2]  # ConvMixer layers per level
    cfg.MODEL.PACA.TEACHER.KERNEL_SIZE = 7  # depth-wise kernel of the ConvMixer layers

    # PaCa segmentation head (SEM_SEG_HEAD.NAME "PaCaSegHead")
    cfg.MODEL.PACA.HEAD = CN()
    cfg.MODEL.PACA.HEAD.AUX_LOSS_WEIGHT = 0.4  # cross-entropy on the cluster logits
    cfg.MODEL.PACA.HEAD.DROPOUT = 0.1  # before the classifier
