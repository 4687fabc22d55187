"""A few training iterations + evaluation of both shapes configs (HCFormer on HC-PaCa-Tiny and
the PaCa head on PaCa-Tiny) with PaCa's trainer."""
from pathlib import Path

import pytest

from hcformer_shapes import ShapesSpec, register_shapes_datasets
from paca.checkpoint import PaCaCheckpointer
from paca.engine import PaCaTrainer, get_paca_cfg

PROJECT = Path(__file__).resolve().parents[1]
SHAPES_CONFIGS = PROJECT / "configs" / "shapes"


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory) -> str:
    """A 4 + 2 image semantic shapes set at 64 px, registered under the prefix "paca_shapes"."""
    root = tmp_path_factory.mktemp("datasets")
    register_shapes_datasets(str(root), ShapesSpec(image_size=64, num_train=4, num_val=2), prefix="paca_shapes", replace=True)
    return "paca_shapes"


@pytest.mark.slow
@pytest.mark.parametrize("config", ["hcformer_hc_paca_tiny_shapes.yaml", "paca_head_paca_tiny_shapes.yaml"])
def test_trainer_runs_on_shapes(config: str, tiny_shapes: str, tmp_path: Path):
    cfg = get_paca_cfg()
    cfg.merge_from_file(str(SHAPES_CONFIGS / config))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", (f"{tiny_shapes}_sem_seg_train",), "DATASETS.TEST", (f"{tiny_shapes}_sem_seg_val",),
            "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64,
            "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2, "SOLVER.STEPS", (),
            "MODEL.MASK_FORMER.DEC_LAYERS", 2, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
            "DATALOADER.NUM_WORKERS", 0, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
        ]
    )
    trainer = PaCaTrainer(cfg)
    trainer.resume_or_load(resume=False)
    assert isinstance(trainer.checkpointer, PaCaCheckpointer)
    trainer.train()  # 2 iterations, then the evaluation
    assert (tmp_path / "model_final.pth").is_file()
    results = trainer._last_eval_results
    assert 0 <= results["sem_seg"]["mIoU"] <= 100
