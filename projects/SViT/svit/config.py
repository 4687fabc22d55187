"""MODEL.SVIT.*: the configuration keys of the SViT backbones (defaults: SViT-S)."""
from detectron2.config import CfgNode as CN


def add_svit_config(cfg: CN) -> None:
    """Add MODEL.SVIT to ``cfg`` (after ``add_hcformer_config``; MODEL.HC.* and
    MODEL.RESNETS.AUX are read from there by D2HCSViT)."""
    cfg.MODEL.SVIT = CN()
    cfg.MODEL.SVIT.EMBED_DIMS = [64, 128, 320, 512]  # channels of the four stages
    cfg.MODEL.SVIT.DEPTHS = [3, 5, 9, 3]  # STT blocks per stage
    cfg.MODEL.SVIT.NUM_HEADS = [1, 2, 5, 8]  # heads of the attention on super tokens
    # Super-token grid (side of the cell averaged into one initial super token) per stage;
    # 1 = plain global attention. The authors suggest [16, 8, 1, 1] (or [16, 8, 2, 1]) at 512².
    cfg.MODEL.SVIT.STOKEN_SIZES = [8, 4, 1, 1]
    cfg.MODEL.SVIT.N_ITER = 1  # association rounds of the super-token sampling
    cfg.MODEL.SVIT.MLP_RATIO = 4.0  # hidden channels of the ConvFFN / channels
    cfg.MODEL.SVIT.QKV_BIAS = True
    cfg.MODEL.SVIT.DROP_PATH_RATE = 0.1  # stochastic depth, linear from 0 over all blocks
    cfg.MODEL.SVIT.LAYER_SCALE = [False, False, False, False]  # per stage (B and L: stages 3-4)
    cfg.MODEL.SVIT.LAYER_SCALE_INIT = 1e-6
    # Normalisation of the stem, the downsampling layers and the ConvFFN: "BN", "SyncBN",
    # "FrozenBN" (detectron2's get_norm). The blocks' LayerNorm before the attention stays.
    cfg.MODEL.SVIT.NORM = "BN"
    cfg.MODEL.SVIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SVIT.USE_CHECKPOINT = False  # gradient checkpointing of every block in training
