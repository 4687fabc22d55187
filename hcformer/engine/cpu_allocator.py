"""glibc malloc settings for a process that runs the model on the CPU: keep freed memory.

By default glibc gives every allocation above ``M_MMAP_THRESHOLD`` (128 KiB, raised
adaptively up to 32 MiB) a fresh ``mmap`` and unmaps it when it is freed. One inference at
800×1216 allocates several GB of such blocks (the (Q, H, W) mask logits and probabilities are
390 MB each) and a training step about as much, so every forward writes into pages the kernel
must first fault in and zero — on the development machine a quarter of a ResNet-50 inference was
spent there. With

    M_MMAP_THRESHOLD = 1 GiB       blocks below it come from the heap and return to it when freed
    M_TRIM_THRESHOLD = 2 GiB − 1   the heap's free top is kept, not handed back to the system

the next forward reuses the pages of the previous one. This is what PyTorch's CPU performance
guide obtains by preloading jemalloc or tcmalloc, without another library. The cost: the
resident size stays near its peak between forwards instead of falling back.

The user's own glibc tunables win: nothing is changed when ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` is set.
"""
import ctypes
import ctypes.util
import os
from typing import Optional

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


_applied = False  # a process that trains, then draws (the demo), sets up twice: say it once


def keep_freed_memory() -> Optional[str]:
    """Apply the settings above to this process (and to the processes it forks later, such as
    data-loader workers). Returns one line saying what was done, for the log; None when an
    earlier call of this process did it."""
    global _applied
    if _applied:
        return None
    _applied = True
    user = [name for name in USER_SETTINGS if name in os.environ]
    if user:
        return f"malloc: left as set by {', '.join(user)}"
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to set
        return "malloc: not glibc, left as it is"
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        return "malloc: freed tensor memory is kept for reuse (hcformer.engine.cpu_allocator)"
    return "malloc: glibc refused the settings, left as it is"
