"""Workarounds for detectron2 v0.6, gathered so that they go together.

Each stands for a detectron2 class or function fixed or added upstream after v0.6 (on
detectron2's main); when hcformer requires a detectron2 newer than v0.6, this module can be
deleted and its users return to detectron2's own:

* :class:`RetryingMapDataset` -> ``detectron2.data.MapDataset`` (used by ``data/build.py``). v0.6
  draws the replacement of a skipped sample with ``random.sample`` from a set, which Python 3.11
  refuses ("Population must be a sequence"); fixed upstream by drawing from a list. Ours also
  stops a loader whose every sample is skipped instead of looping forever (upstream loops; keep
  that error if it is deleted, see tests/test_bad_datasets.py).
* :func:`create_local_process_group` -> ``detectron2.utils.comm.create_local_process_group``
  (used by the CPU processes of ``engine/launch.py``), which v0.6 does not have: its own
  ``launch`` builds the group inline and stores it in ``comm._LOCAL_PROCESS_GROUP``.
"""
import logging

import torch.distributed as dist
from detectron2.data import MapDataset
from detectron2.utils import comm

__all__ = ["RetryingMapDataset", "create_local_process_group"]

logger = logging.getLogger(__name__)


class RetryingMapDataset(MapDataset):
    """detectron2's ``MapDataset`` (map-style case) with a retry that works on every Python.

    When the mapper returns None (a sample skipped by
    :class:`~hcformer.data.skip_bad_samples.SkipBadSamples`), a replacement is drawn the way
    detectron2 intends, from a sorted list, and a loader whose every sample fails stops with an
    error instead of looping forever.
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


def create_local_process_group(processes_per_machine: int, machine_rank: int, num_machines: int) -> None:
    """The group of the processes on this machine, where detectron2's ``comm`` looks for it
    (``comm.get_local_rank()`` / ``get_local_size()``); called by every process."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 after v0.6
        comm.create_local_process_group(processes_per_machine)
        return
    # v0.6: every process must take part in creating every group, then keeps its own
    for machine in range(num_machines):
        first = machine * processes_per_machine
        group = dist.new_group(list(range(first, first + processes_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
