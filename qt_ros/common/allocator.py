"""The C allocator's settings for training: keep freed memory in the process for reuse.

A training step allocates and frees the same large buffers (a batch of images in float, the
patches of the stem, activations) every step. glibc's ``malloc`` serves buffers above its mmap
threshold (128 KiB at start) with fresh ``mmap`` pages and returns them to the kernel on
``free``, so every step pays the page faults of zero-filling them again. Raising the mmap and
trim thresholds keeps the buffers in the heap, where the next step reuses them. Measured on the
2-core VM with farm-bench (``qt-ros bench train --allocator retain`` against ``default``,
``tiny``, 64x64, batch 32, 1 thread, 300 steps, 4 pairs): wall 0.94x, system time 2.7 s -> 0.7 s
a run (docs/design.md 7.1). PyTorch's documentation gives the same advice for CPU
training (``MALLOC_*`` variables or jemalloc/tcmalloc); this does it without a preload.

``QT_ROS_RETAIN_FREED_MEMORY=0`` turns it off; glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment are left to glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024      # glibc's maximum on 64-bit
TRIM_THRESHOLD = 256 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set.

    A no-op (False) off Linux/glibc, when ``QT_ROS_RETAIN_FREED_MEMORY=0``, or when the user set
    glibc's own variables. Memory use grows by at most what one step frees (it is reused).
    """
    if os.environ.get("QT_ROS_RETAIN_FREED_MEMORY", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt      # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
