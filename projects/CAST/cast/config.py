"""MODEL.CAST.*: the configuration keys of the CAST backbone (defaults: CAST-S for dense tasks)."""
from detectron2.config import CfgNode as CN


def add_cast_config(cfg: CN) -> None:
    """Add MODEL.CAST to ``cfg`` (after ``add_hcformer_config``)."""
    cfg.MODEL.CAST = CN()
    cfg.MODEL.CAST.DIM = 384  # token channels (CAST-S 384, CAST-B 768)
    cfg.MODEL.CAST.NUM_HEADS = 12
    cfg.MODEL.CAST.DEPTHS = [3, 3, 3, 2]  # encoder blocks per level; a graph pooling follows each
    # Tokens kept by each graph pooling; the paper's dense setting (1024 superpixels at 512²) uses
    # 320, 160, 80, 40; classification at 224² (196 superpixels) 64, 32, 16, 8. Clamped to the
    # tokens available, so small images work too.
    cfg.MODEL.CAST.NUM_TOKENS = [320, 160, 80, 40]
    cfg.MODEL.CAST.KAPPA = 5.0  # scale of the cosine similarities in the assignment softmax
    cfg.MODEL.CAST.MLP_RATIO = 4.0
    cfg.MODEL.CAST.DROP_PATH_RATE = 0.1
    cfg.MODEL.CAST.POS_BASE_SIZE = 224  # image side the position embedding is learnt at (stem grid 28²)
    # Grid the masks are decoded to: 8 = the stem's cells (each takes its centre pixel's
    # superpixel), 1 = the pixels themselves through the full superpixel map (mask boundaries
    # follow the superpixels; decoded maps at input size).
    cfg.MODEL.CAST.DECODE_STRIDE = 8
    cfg.MODEL.CAST.SUPERPIXEL = CN()
    # "SEEDS" (the paper's; OpenCV contrib, CPU, image by image; 5-8x faster than our SLIC on a
    # CPU, projects/CAST/RESULTS.md) or "SLIC" (batched torch, this package; runs on the GPU)
    cfg.MODEL.CAST.SUPERPIXEL.METHOD = "SEEDS"
    # One superpixel per SIZE² pixels (H·W/16², any input size); 0 = NUM_SEGMENTS per image.
    cfg.MODEL.CAST.SUPERPIXEL.SIZE = 16
    cfg.MODEL.CAST.SUPERPIXEL.NUM_SEGMENTS = 196
    cfg.MODEL.CAST.SUPERPIXEL.COMPACTNESS = 10.0  # SLIC's m: weight of the spatial distance
    cfg.MODEL.CAST.SUPERPIXEL.ITERATIONS = 10  # SLIC rounds (SEEDS: at least 15)
