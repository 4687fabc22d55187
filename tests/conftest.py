import os

import pytest
import torch

from tiny_configs import tiny_hcformer_cfg

# Two cores: keep intra-op threads per test worker low so xdist workers don't oversubscribe.
torch.set_num_threads(int(os.environ.get("HCFORMER_TEST_THREADS", "1")))


@pytest.fixture
def make_cfg():
    return tiny_hcformer_cfg
