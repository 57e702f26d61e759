"""Keep freed memory in the process: with glibc's defaults, CPU sampling spends a sixth of its time in the kernel.

PyTorch on a CPU allocates and frees the same activation buffers at every network call. glibc serves each large
buffer with a fresh mmap and unmaps it when it is freed (and returns the free top of its heap to the system), so
the next call faults every page of its activations in again. In the embedded default's refinement and sampling
that was 15-20 % of the wall time, nearly all of it system time. Served from a heap that keeps freed memory, most
buffers reuse pages already faulted in. Not all: small allocations split some freed buffers, and the heap grows
for the next large one (tests/test_allocator.py counts the faults). Where a tensor lives changes no number:
images, metrics and weights stay the same to the bit (benchmarks/allocator.py measures both).

`adagen`'s command line sets it for its own process and the training job's; a library user can call it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap is returned to the system only beyond 1 GiB
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time rather than by one buffer


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap (no per-buffer mmap) and keep up to 1 GiB of it free for reuse;
    False, settings unchanged, where the C library is not glibc (macOS, musl)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1
               for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
