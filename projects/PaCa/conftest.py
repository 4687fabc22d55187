"""pytest collects projects/PaCa/tests from the repository root: make `import paca` work there,
and keep torch to the thread count of the main suite (tests/conftest.py) when run alone."""
import os
import sys
from pathlib import Path

import torch

_PROJECT = str(Path(__file__).resolve().parent)
if _PROJECT not in sys.path:
    sys.path.insert(0, _PROJECT)

torch.set_num_threads(int(os.environ.get("HCFORMER_TEST_THREADS", "1")))
