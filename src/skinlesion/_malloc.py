"""Keep freed activation buffers in the process instead of returning them to the OS on every call.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 kB at first, adapting up to 32 MB) with
``mmap`` and unmaps them on ``free``; a CNN step allocates and frees buffers of many megabytes, so
every step pays page faults to zero fresh pages. Raising the mmap threshold to its maximum and the
trim threshold above it keeps those pages for reuse (what ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` do when set before start-up). A no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_TRIM = 1024 * 1024 * 1024
_done = False


def keep_freed_memory() -> bool:
    """Apply the two ``mallopt`` settings once per process; True when glibc accepted them."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM))
    _done = ok
    log.debug("mallopt mmap threshold %d, trim threshold %d: %s", _MMAP_MAX, _TRIM, ok)
    return ok
