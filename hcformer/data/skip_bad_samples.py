"""Training may go on without a sample whose files are broken, if the config allows it.

With DATALOADER.SKIP_BAD_SAMPLES True, a mapper failure caused by the sample's files (a
``BadSampleError``: missing, truncated or oversized image, label PNG of the wrong mode or size,
category ids the model does not have) is logged with the file's name and the sample is
replaced: returning None makes detectron2's ``MapDataset`` draw another one. Other exceptions
(bugs) always propagate, and evaluation never skips (see ``EvaluationDatasetMapper``).
"""
import logging
from typing import Callable, Dict, Optional

from .checks import BadSampleError

__all__ = ["SkipBadSamples"]

logger = logging.getLogger(__name__)


class SkipBadSamples:
    """Wraps a training mapper: bad samples give None (skipped) and a warning naming them."""

    def __init__(self, mapper: Callable[[Dict], Dict]):
        self.mapper = mapper
        self.skipped = 0  # per data-loader worker process

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        try:
            return self.mapper(dataset_dict)
        except BadSampleError as e:
            self.skipped += 1
            logger.warning(
                f"Skipping training sample {dataset_dict.get('file_name', '<no file_name>')} "
                f"(DATALOADER.SKIP_BAD_SAMPLES is True; {self.skipped} skipped by this worker): {e}"
            )
            return None
