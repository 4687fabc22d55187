import os

import pytest
import torch
from hypothesis import settings

from tiny_configs import tiny_hcformer_cfg

from hcformer.data.datasets.catalog_utils import unregister_dataset

# Two cores: keep intra-op threads per test worker low so xdist workers don't oversubscribe.
torch.set_num_threads(int(os.environ.get("HCFORMER_TEST_THREADS", "1")))

# Property tests explore new random examples on every local run (that is how they find bugs);
# in CI they draw the same examples every time, so a red CI always means a change broke it.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def make_cfg():
    return tiny_hcformer_cfg


@pytest.fixture
def dataset_names():
    """Names of the datasets a test registers, unregistered after it."""
    names = []
    yield names
    for name in names:
        unregister_dataset(name)
