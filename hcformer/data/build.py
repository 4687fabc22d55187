"""Pick the training dataset mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, and build the
training data loader around it."""

import logging
from typing import Callable, Dict, List

from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, MapDataset, build_detection_train_loader

from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .dataset_mappers.evaluation_dataset_mapper import EvaluationDatasetMapper
from .dataset_loading import load_dataset_dicts
from .skip_bad_samples import SkipBadSamples

__all__ = ["DATASET_MAPPERS", "RetryingMapDataset", "build_dataset_mapper", "build_train_loader"]

logger = logging.getLogger(__name__)

# name (cfg.INPUT.DATASET_MAPPER_NAME) -> class built as cls(cfg, is_train=True)
DATASET_MAPPERS: Dict[str, Callable] = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticLSJDatasetMapper,
    "coco_instance_lsj": COCOInstanceLSJDatasetMapper,
}


def build_dataset_mapper(cfg: CfgNode, is_train: bool = True) -> Callable[[Dict], Dict]:
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` for training, wrapped in
    :class:`SkipBadSamples` when DATALOADER.SKIP_BAD_SAMPLES is True; for evaluation
    :class:`EvaluationDatasetMapper` (detectron2's ``DatasetMapper(cfg, False)``: resize to the
    test size, no labels; never skips a sample)."""
    if not is_train:
        return EvaluationDatasetMapper(cfg, False)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        raise KeyError(
            f"cfg.INPUT.DATASET_MAPPER_NAME={name!r} is not a known dataset mapper; "
            f"known names: {sorted(DATASET_MAPPERS)}"
        )
    mapper = DATASET_MAPPERS[name](cfg, True)
    return SkipBadSamples(mapper) if cfg.DATALOADER.SKIP_BAD_SAMPLES else mapper


class RetryingMapDataset(MapDataset):
    """detectron2's ``MapDataset`` (map-style case) with a retry that works on every Python.

    When the mapper returns None (a sample skipped by :class:`SkipBadSamples`), detectron2 v0.6
    draws a replacement with ``random.sample`` from a set, which Python 3.11 refuses
    ("Population must be a sequence"). Here the replacement is drawn the same way from a sorted
    list, and a loader whose every sample fails stops with an error instead of looping forever.
    """

    def __getitem__(self, idx):
        cur_idx = int(idx)
        for retry_count in range(len(self) + 1):
            data = self._map_func(self._dataset[cur_idx])
            if data is not None:
                self._fallback_candidates.add(cur_idx)
                return data
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                break
            # sorted: the order of a set of ints is an implementation detail; with a list the
            # draws stay reproducible from the fixed seed, as detectron2 intends
            cur_idx = self._rng.choice(sorted(self._fallback_candidates))
            if retry_count + 1 >= 3:
                logger.warning(
                    f"Failed to map training sample {int(idx)}, retry count: {retry_count + 1}"
                )
        raise RuntimeError(
            f"All {len(self)} training samples tried by this data-loader worker were skipped as "
            "bad (see the warnings above); check the dataset"
        )


def build_train_loader(cfg: CfgNode):
    """detectron2's ``build_detection_train_loader`` (same sampler, batching, workers) over the
    records of DATASETS.TRAIN (:func:`load_dataset_dicts`, readable loading errors) mapped by
    :func:`build_dataset_mapper`, with :class:`RetryingMapDataset` in place of ``MapDataset``."""
    records: List[Dict] = load_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    mapper = build_dataset_mapper(cfg, is_train=True)
    # detectron2 picks the sampler (TrainingSampler / RepeatFactorTrainingSampler) from the
    # records; only the mapping step is replaced, so the loader gets mapper=None
    kwargs = build_detection_train_loader.from_config(cfg, mapper=mapper, dataset=records)
    mapper = kwargs.pop("mapper")
    kwargs["dataset"] = RetryingMapDataset(DatasetFromList(records, copy=False), mapper)
    return build_detection_train_loader(mapper=None, **kwargs)
