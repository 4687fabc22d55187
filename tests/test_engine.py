"""Run setup (CPU fallbacks) and the Trainer (checkpointer, writers, a two-iteration run)."""
import logging
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser

from hcformer.config import add_hcformer_config
from hcformer.engine.setup import adapt_to_machine, setup

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_cpu_only_machine_turns_off_cuda_and_amp():
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.MODEL.DEVICE = "cuda"
    cfg.SOLVER.AMP.ENABLED = True
    notes = adapt_to_machine(cfg, cuda_available=False)  # a CPU-only machine, also where a GPU is
    assert cfg.MODEL.DEVICE == "cpu" and not cfg.SOLVER.AMP.ENABLED
    assert len(notes) == 2 and "AMP" in notes[1]


def test_cuda_machine_keeps_cuda_and_amp():
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.MODEL.DEVICE = "cuda"
    cfg.SOLVER.AMP.ENABLED = True
    assert adapt_to_machine(cfg, cuda_available=True) == []
    assert cfg.MODEL.DEVICE == "cuda" and cfg.SOLVER.AMP.ENABLED


def test_setup(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    config = CONFIGS / "coco/panoptic-segmentation"
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            str(config / "hcformer_R50_bs16_50ep.yaml"),
            "OUTPUT_DIR",
            str(tmp_path),
            "SOLVER.MAX_ITER",
            "7",
            "MODEL.DEVICE",  # the CPU explicitly: AMP (on in the config) is turned off on any machine
            "cpu",
        ]
    )
    # setup_logger() stops "hcformer" records from propagating to the root (caplog's) handler
    hcformer_logger = logging.getLogger("hcformer")
    hcformer_logger.addHandler(caplog.handler)
    try:
        cfg = setup(args)
    finally:
        hcformer_logger.removeHandler(caplog.handler)
    assert cfg.is_frozen()
    assert cfg.SOLVER.MAX_ITER == 7 and not cfg.SOLVER.AMP.ENABLED
    assert "SOLVER.AMP.ENABLED False" in caplog.text
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.slow
def test_trainer_runs_on_shapes(tmp_path: Path):
    from detectron2.utils.events import TensorboardXWriter

    from hcformer.checkpoint import HCFormerCheckpointer
    from hcformer_shapes import ShapesSpec, register_shapes_datasets
    from hcformer.engine.trainer import Trainer

    spec = ShapesSpec(image_size=64, num_train=4, num_val=2)
    register_shapes_datasets(str(tmp_path / "datasets"), spec, prefix="engine_shapes", replace=True)
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "shapes/panoptic-segmentation/hcformer_R18_shapes.yaml"))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", ("engine_shapes_train_panoptic_with_sem_seg",),
            "DATASETS.TEST", ("engine_shapes_val_panoptic_with_sem_seg",),
            "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64,
            "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2, "SOLVER.STEPS", (),
            "MODEL.MASK_FORMER.DEC_LAYERS", 2, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
            "DATALOADER.NUM_WORKERS", 0, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
        ]
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    assert isinstance(trainer.checkpointer, HCFormerCheckpointer)
    writers = trainer.build_writers()
    assert any(isinstance(w, TensorboardXWriter) for w in writers) == (
        find_spec("tensorboard") is not None
    )
    trainer.train()  # 2 iterations, then the final evaluation

    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "metrics.json").is_file()
    results = trainer._last_eval_results
    assert {"panoptic_seg", "sem_seg", "segm"} <= set(results)


@pytest.mark.parametrize("weights, resume, warned", [("", False, True), ("", True, False), ("trained.pth", False, False)])
def test_eval_only_warns_about_a_random_model(tmp_path, caplog, weights, resume, warned):
    from hcformer.checkpoint import HCFormerCheckpointer
    from hcformer.engine.command_line import main
    from hcformer.engine.trainer import Trainer

    loaded = []

    class RecordingCheckpointer(HCFormerCheckpointer):
        def load(self, path, *args, **kwargs):
            loaded.append((path, self.save_dir))

    class NoTest(Trainer):
        checkpointer_class = RecordingCheckpointer

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            return {}

    (tmp_path / "last_checkpoint").write_text("model_final.pth")  # read only with --resume
    (tmp_path / "model_final.pth").write_bytes(b"")
    argv = ["--config-file", str(CONFIGS / "shapes/panoptic-segmentation/hcformer_R18_shapes.yaml"),
            "--eval-only", *(["--resume"] if resume else []),
            "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path)]
    hcformer_logger = logging.getLogger("hcformer")  # see test_setup
    hcformer_logger.addHandler(caplog.handler)
    try:
        main(default_argument_parser().parse_args(argv), NoTest)
    finally:
        hcformer_logger.removeHandler(caplog.handler)
    # --resume: the checkpoint that last_checkpoint names is read once, in setup, and loaded as is
    evaluated = str(tmp_path / "model_final.pth") if resume else weights
    assert loaded == [(evaluated, "")]  # loaded as is: no directory to resume from, save to or clean
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("MODEL.WEIGHTS is empty: the model is randomly initialised") for m in warnings) == warned
    # nothing of OUTPUT_DIR written (config.yaml, log.txt): the evaluation has a directory of its own
    own = "eval_model_final" if resume else "eval_trained" if weights else "eval_random_init"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([own, "last_checkpoint", "model_final.pth"])
    assert {"config.yaml", "log.txt"} <= {p.name for p in (tmp_path / own).iterdir()}
