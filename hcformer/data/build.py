"""Pick the training dataset mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, and build the
training data loader around it."""

import itertools
from typing import Callable, Dict, Iterator, List

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.data.common import AspectRatioGroupedDataset
from torch.utils.data import Sampler

from hcformer.detectron2_compat import RetryingMapDataset

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

__all__ = ["DATASET_MAPPERS", "ResumableSampler", "build_dataset_mapper", "build_train_loader", "check_mapper_name"]


# name (cfg.INPUT.DATASET_MAPPER_NAME) -> class built as cls(cfg, is_train=True)
DATASET_MAPPERS: Dict[str, Callable] = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticLSJDatasetMapper,
    "coco_instance_lsj": COCOInstanceLSJDatasetMapper,
}


def check_mapper_name(name: str) -> None:
    """Raise ValueError unless INPUT.DATASET_MAPPER_NAME ``name`` is one of :data:`DATASET_MAPPERS`."""
    if name not in DATASET_MAPPERS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not a known dataset mapper; known: {sorted(DATASET_MAPPERS)}"
        )


def build_dataset_mapper(cfg: CfgNode, is_train: bool = True) -> Callable[[Dict], Dict]:
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` for training, wrapped in
    :class:`SkipBadSamples` when DATALOADER.SKIP_BAD_SAMPLES is True; for evaluation
    :class:`EvaluationDatasetMapper` (detectron2's ``DatasetMapper(cfg, False)``: resize to the
    test size, no labels; never skips a sample)."""
    if not is_train:
        return EvaluationDatasetMapper(cfg, False)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    check_mapper_name(name)
    mapper = DATASET_MAPPERS[name](cfg, True)
    return SkipBadSamples(mapper) if cfg.DATALOADER.SKIP_BAD_SAMPLES else mapper


class ResumableSampler(Sampler):
    """A training sampler's index stream, started ``start`` indices in.

    detectron2's training samplers are infinite streams fixed by their seed; a resumed run
    (``--resume``) sets ``start`` to the indices this process consumed before the checkpoint
    (iterations × images per process), so that it reads the images the uninterrupted run would
    have read next. Exact when every batch empties the aspect-ratio buckets (images all
    landscape, all portrait, or ``DATALOADER.ASPECT_RATIO_GROUPING False``); otherwise the
    images a bucket held at the checkpoint are skipped.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start, None)


def build_train_loader(cfg: CfgNode):
    """detectron2's ``build_detection_train_loader`` (same sampler, batching, workers) over the
    records of DATASETS.TRAIN (:func:`load_dataset_dicts`, readable loading errors) mapped by
    :func:`build_dataset_mapper`, with :class:`RetryingMapDataset` in place of ``MapDataset``
    (a detectron2 v0.6 workaround, see :mod:`hcformer.detectron2_compat`)
    and the sampler wrapped in a :class:`ResumableSampler` (``loader.resumable_sampler``)."""
    records: List[Dict] = load_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    mapper = build_dataset_mapper(cfg, is_train=True)
    # detectron2 picks the sampler (TrainingSampler / RepeatFactorTrainingSampler) from the
    # records; only the mapping step is replaced, so the loader gets mapper=None
    kwargs = build_detection_train_loader.from_config(cfg, mapper=mapper, dataset=records)
    mapper = kwargs.pop("mapper")
    kwargs["dataset"] = RetryingMapDataset(DatasetFromList(records, copy=False), mapper)
    kwargs["sampler"] = ResumableSampler(kwargs["sampler"])
    loader = build_detection_train_loader(mapper=None, **kwargs)
    # the trainer sets its start on --resume; the loader iterates it lazily, from the first step
    loader.resumable_sampler = kwargs["sampler"]
    # A torch DataLoader draws its workers' base seed when it is first read, from torch's global
    # generator unless it has one of its own. Drawn here, when the loader is built, the global
    # stream is the same at every step whether the loader was first read at iteration 0 or, on
    # --resume, after the checkpoint's random state was restored.
    torch_loader = loader.dataset if isinstance(loader, AspectRatioGroupedDataset) else loader
    torch_loader.generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    return loader
