"""Training keeps freed memory for reuse (qt_ros.common.allocator): a 4 MiB buffer, the size of
a batch of 64x64 frames in float, comes from the heap instead of fresh mmap pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
# In a child process: the setting is process-wide. Prints the mmapped bytes that a live 4 MiB
# buffer adds (glibc's mallinfo2().hblkhd) and whether the thresholds were set.
PROBE = """
import ctypes, sys
from qt_ros.common.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
retained = retain_freed_memory()
before = libc.mallinfo2().hblkhd
buffer = libc.malloc(4 << 20)
added = libc.mallinfo2().hblkhd - before
libc.free(buffer)
print(int(retained), added)
"""


def _probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return bool(int(out[0])), int(out[1])


def test_a_training_sized_buffer_is_reused_from_the_heap():
    retained, mmapped = _probe()
    assert retained and mmapped == 0
    # Turned off, glibc serves the same buffer with fresh mmap pages (its default threshold
    # is 128 KiB), so the setting is what makes the difference.
    retained, mmapped = _probe(QT_ROS_RETAIN_FREED_MEMORY="0")
    assert not retained and mmapped >= 4 << 20


def test_glibc_variables_of_the_user_win():
    retained, mmapped = _probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert not retained and mmapped >= 4 << 20
