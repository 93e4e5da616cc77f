"""Giving freed host memory back to the operating system.

glibc keeps what a process frees on its heap for reuse, so a server's resident memory stays at the peak of its
busiest moment (a batch of long clips through the audio encoder on the CPU) long after it is idle again.
malloc_trim hands the free pages back; it costs a few milliseconds, so it runs when work stops, not per step.
"""

import ctypes
import ctypes.util
import sys
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # musl has none


def release_freed_memory() -> bool:
    """Returns the heap's free pages to the OS (glibc's malloc_trim); False where there is no such call."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
