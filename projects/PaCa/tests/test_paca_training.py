"""A few training iterations + evaluation of both shapes configs (HCFormer on HC-PaCa-Tiny and
the PaCa head on PaCa-Tiny) with PaCa's trainer, and the cluster visualisation (function and
script)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hcformer.data import ShapesSpec, register_shapes_datasets
from paca.checkpoint import PaCaCheckpointer
from paca.engine import PaCaTrainer, get_paca_cfg
from paca.modeling import PaCaViT
from paca.visualization import cluster_logits, render_cluster_grid

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


def test_render_cluster_grid_writes_a_png(tmp_path: Path):
    torch.manual_seed(0)
    vit = PaCaViT(dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_clusters=(12, 6, 4, 0)).eval()
    logits = cluster_logits(vit, torch.randn(1, 3, 64, 48))
    assert [None if lg is None else tuple(lg.shape) for lg in logits] == [
        (1, 12, 16, 12), (1, 6, 8, 6), (1, 4, 4, 3), None
    ]
    image = (np.random.default_rng(0).random((64, 48, 3)) * 255).astype(np.uint8)
    for mode in ("heatmap", "mask"):
        path = render_cluster_grid(
            image, [None if lg is None else lg[0] for lg in logits], str(tmp_path / f"{mode}.png"),
            columns=5, tile_size=20, max_clusters=10, mode=mode,
        )
        with Image.open(path) as picture:
            # stages of 10 (of 12), 6 and 4 clusters: 2 + 2 + 1 rows of 20 px, each stage a 14 px label
            assert picture.size == (100, 3 * 14 + 5 * 20)


def test_visualisation_script(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("visualize_paca_clusters", PROJECT / "tools" / "visualize_paca_clusters.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    image = tmp_path / "input.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(image)
    script.main([
        "--config-file", str(SHAPES_CONFIGS / "paca_head_paca_tiny_shapes.yaml"), "--input", str(image),
        "--output", str(tmp_path / "out"), "--max-clusters", "8", "MODEL.DEVICE", "cpu",
    ])
    assert (tmp_path / "out" / "input_clusters.png").is_file()
