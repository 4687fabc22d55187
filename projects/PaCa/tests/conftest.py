"""Makes ``import paca`` work from the repository root, and keeps torch to few threads (two
shared cores; the suite may run under xdist)."""
import os
import sys
from pathlib import Path

import torch

PROJECT_DIR = Path(__file__).resolve().parents[1]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

torch.set_num_threads(int(os.environ.get("HCFORMER_TEST_THREADS", "1")))
