"""hcformer.engine.cpu_allocator: with it, a tensor allocated after another was freed reuses its
pages (no page faults); without it (glibc's defaults), every large tensor faults in fresh pages.

Each case runs in a fresh interpreter: malloc settings belong to the whole process.
"""
import json
import os
import subprocess
import sys

import pytest

from hcformer.engine.cpu_allocator import USER_SETTINGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fills a 64 MiB tensor and frees it, 24 times: the page faults of each fill.
PROBE = """
import json, resource, sys
import torch
from hcformer.engine.cpu_allocator import keep_freed_memory
message = keep_freed_memory() if sys.argv[1] == "keep" else "glibc defaults"
again = keep_freed_memory() if sys.argv[1] == "keep" else None  # the demo trains, then draws: set up twice
def faults_of_fill():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 * 2**20)  # 64 MiB: above glibc's largest default mmap threshold (32 MiB)
    t.fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del t
    return faults
print(json.dumps({"message": message, "again": again, "faults": [faults_of_fill() for _ in range(24)]}))
"""

PAGES_OF_64_MIB = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def run_probe(mode: str, env_extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}  # glibc's defaults unless env_extra
    env.update(env_extra or {}, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_without_page_faults():
    default = run_probe("default")
    kept = run_probe("keep")
    assert "kept for reuse" in kept["message"] and kept["again"] is None  # said once per process
    # glibc's default unmaps every freed 64 MiB block and faults in every page of the next one.
    # With the setting the blocks stay in the heap; the first fills still take new memory
    # (an aligned allocation splits the freed block, which then no longer fits the next
    # request, until neighbouring free blocks have merged), then every fill reuses it.
    assert all(f > 0.9 * PAGES_OF_64_MIB for f in default["faults"]), default
    assert all(f < 0.05 * PAGES_OF_64_MIB for f in kept["faults"][-8:]), kept


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_users_own_malloc_settings_win():
    probe = run_probe("keep", {"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert probe["message"] == "malloc: left as set by MALLOC_MMAP_THRESHOLD_"
    assert all(f > 0.9 * PAGES_OF_64_MIB for f in probe["faults"]), probe
