"""A short training run on the synthetic shapes must clearly beat the untrained model."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg

from hcformer.config import add_hcformer_config

CONFIG = Path(__file__).resolve().parents[1] / "configs/shapes/semantic-segmentation/hcformer_R18_shapes.yaml"


@pytest.mark.slow
def test_short_training_beats_the_untrained_model(tmp_path: Path):
    from hcformer_shapes import ShapesSpec, register_shapes_datasets
    from hcformer.engine.trainer import Trainer

    spec = ShapesSpec(image_size=64, num_train=48, num_val=12, seed=3)
    register_shapes_datasets(str(tmp_path / "datasets"), spec, prefix="learn_shapes", replace=True)
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list([
        "DATASETS.TRAIN", ("learn_shapes_sem_seg_train",), "DATASETS.TEST", ("learn_shapes_sem_seg_val",),
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 120, "SOLVER.STEPS", (), "SOLVER.BASE_LR", 1e-3,
        "SOLVER.CHECKPOINT_PERIOD", 100000, "TEST.HIERARCHY_EVAL", False,
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 1024, "DATALOADER.NUM_WORKERS", 0,
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"), "SEED", 0,
    ])
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    untrained = Trainer.test(cfg, trainer.model)["sem_seg"]["mIoU"]
    trainer.train()
    trained = trainer._last_eval_results["sem_seg"]["mIoU"]
    # two stuff classes cover most pixels; an untrained model scores ~10 mIoU
    assert trained > untrained + 20, (untrained, trained)
