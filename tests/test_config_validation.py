"""Config mistakes give messages that say what exists: keys, registered names, class counts."""
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser

import hcformer  # noqa: F401  registers the models
import hcformer.data  # noqa: F401  registers the datasets
from hcformer.config import add_hcformer_config
from hcformer.engine.config_validation import (
    ConfigError,
    UnknownConfigKeyError,
    merge_config_file,
    merge_config_list,
    validate_config,
)
from hcformer.engine.setup import setup

SHAPES = Path(__file__).resolve().parents[1] / "configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml"


def shapes_cfg():
    cfg = get_cfg()
    add_hcformer_config(cfg)
    merge_config_file(cfg, str(SHAPES))
    return cfg


def test_the_shapes_config_is_valid():
    validate_config(shapes_cfg())


@pytest.mark.parametrize(
    "key, suggestion",
    [("MODEL.HC.LEVLE", "MODEL.HC.LEVEL"), ("SOLVER.MAXITER", "SOLVER.MAX_ITER"), ("MODEL.LEVEL", "MODEL.HC.LEVEL")],
)
def test_unknown_override_suggests_the_nearest_key(key, suggestion):
    with pytest.raises(UnknownConfigKeyError) as error:
        merge_config_list(shapes_cfg(), [key, "2"])
    message = str(error.value)
    assert message.startswith(f"Unknown config key {key}") and f"did you mean {suggestion}" in message
    assert "command-line" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(f"_BASE_: {SHAPES}\nSOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(UnknownConfigKeyError, match="did you mean SOLVER.BASE_LR") as error:
        merge_config_file(shapes_cfg(), str(path))
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        merge_config_file(shapes_cfg(), str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        merge_config_list(shapes_cfg(), ["SOLVER.MAX_ITER"])


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("MODEL.BACKBONE.NAME", "ResNet50", "'D2HCResNet'"),
        ("MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead", "'HCFormerHead'"),
        ("MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "Decoder", "'HCTransformerDecoder'"),
        ("MODEL.META_ARCHITECTURE", "MaskFormer", "'HCFormer'"),
        ("INPUT.DATASET_MAPPER_NAME", "panoptic", "'mask_former_panoptic'"),
    ],
)
def test_unknown_names_list_the_registered_ones(key, value, expected):
    cfg = shapes_cfg()
    merge_config_list(cfg, [key, value])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert f"{key}={value!r}" in str(error.value) and expected in str(error.value)


@pytest.mark.parametrize("level", [-1, 4])
def test_level_outside_0_to_3(level):
    cfg = shapes_cfg()
    cfg.MODEL.HC.LEVEL = level
    with pytest.raises(ConfigError, match=f"MODEL.HC.LEVEL={level}: expected an integer 0..3"):
        validate_config(cfg)


@pytest.mark.parametrize("fmt, valid", [("RGB", True), ("BGR", True), ("XYZ", False), ("L", False), ("rgb", False)])
def test_input_format_is_rgb_or_bgr(fmt, valid):
    # detectron2 would fail at the first image ("conversion from RGB to XYZ not supported"), or,
    # for "L", feed one channel to a model built for three
    cfg = shapes_cfg()
    cfg.INPUT.FORMAT = fmt
    if valid:
        validate_config(cfg)
        return
    with pytest.raises(ConfigError, match=f"INPUT.FORMAT={fmt!r}: expected one of \\['RGB', 'BGR'\\]"):
        validate_config(cfg)


def test_num_classes_must_match_the_dataset_and_every_problem_is_listed():
    cfg = shapes_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 80
    cfg.MODEL.HC.LEVEL = 7
    cfg.DATASETS.TEST = ("shapes_vall_panoptic_with_sem_seg",)
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    message = str(error.value)
    assert "NUM_CLASSES=80, but dataset 'shapes_train_panoptic_with_sem_seg' has 6 classes" in message
    assert "MODEL.HC.LEVEL=7" in message
    assert "did you mean shapes_val_panoptic_with_sem_seg" in message


def test_setup_validates_before_writing_anything(tmp_path):
    args = default_argument_parser().parse_args(
        ["--config-file", str(SHAPES), "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.HC.LEVEL", "5"]
    )
    with pytest.raises(ConfigError, match="MODEL.HC.LEVEL=5"):
        setup(args)
    assert not (tmp_path / "out").exists()


def test_a_missing_base_names_the_config_that_includes_it(tmp_path):
    (tmp_path / "configs").mkdir()
    top = tmp_path / "configs" / "top.yaml"
    middle = tmp_path / "configs" / "middle.yaml"
    top.write_text("_BASE_: middle.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    middle.write_text("_BASE_: ../Base-Missing.yaml\n")
    with pytest.raises(FileNotFoundError) as error:  # detectron2: a bare "No such file" of the base
        merge_config_file(shapes_cfg(), str(top))
    assert str(error.value) == (
        f"_BASE_ '../Base-Missing.yaml' of {middle} does not exist (no file {tmp_path / 'Base-Missing.yaml'}; "
        f"a _BASE_ is relative to the file that names it); included as {top} > {middle}"
    )
    middle.write_text("_BASE_: top.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        merge_config_file(shapes_cfg(), str(top))


def test_an_integer_is_taken_for_a_float_key(tmp_path):
    # yacs refused it: "Type mismatch (<class 'float'> vs. <class 'int'>) ... SOLVER.BASE_LR"
    cfg = shapes_cfg()
    merge_config_list(cfg, ["SOLVER.BASE_LR", "1", "SOLVER.MAX_ITER", "7", "SOLVER.WEIGHT_DECAY", 0])
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WEIGHT_DECAY) == (1.0, 7, 0.0)
    assert isinstance(cfg.SOLVER.BASE_LR, float) and isinstance(cfg.SOLVER.MAX_ITER, int)
    path = tmp_path / "integers.yaml"
    path.write_text(f"_BASE_: {SHAPES}\nSOLVER:\n  BASE_LR: 2\n  GAMMA: 1\n  MAX_ITER: 9\n")
    cfg = shapes_cfg()
    merge_config_file(cfg, str(path))
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.GAMMA, cfg.SOLVER.MAX_ITER) == (2.0, 1.0, 9)
    assert isinstance(cfg.SOLVER.GAMMA, float)
    with pytest.raises(ValueError, match="Type mismatch"):  # other mismatches are still refused
        merge_config_list(shapes_cfg(), ["SOLVER.MAX_ITER", "1.5"])
