"""Host memory between the engine's steps: kept for reuse while work runs, given back to the OS when it stops.

glibc keeps what a process frees on its heap for reuse, so a server's resident memory stays at the peak of its
busiest moment (a batch of long clips through the audio encoder on the CPU) long after it is idle again.
malloc_trim hands the free pages back; it costs a few milliseconds, so it runs when work stops, not per step.

The opposite holds within a run of steps: a tensor of a few MB (a batch's conv stem activations, logits) that glibc
maps fresh or trims off the heap's top when it is freed comes back as new pages next step, each one a page fault,
and on a virtual machine those are dear (on a 2-core AVX2 EPYC the tiny preset's conv stem over 160 chunks took
55-60 ms faulting and 16-18 ms not; 32 clips of 5 s through the engine 122-135 ms against 101-104). glibc raises its
thresholds as large blocks are freed, but only to the size of the largest so far, and a trim or a slightly larger
block starts the faulting again; keep_freed_memory_for_reuse sets them where glibc's own rule ends up at most.
"""

import ctypes
import ctypes.util
import os
import sys
from functools import cache

# mallopt parameters (malloc.h) and the values set: glibc's largest dynamic mmap threshold on 64-bit, and the trim
# threshold it pairs with it (twice that)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES = 32 << 20, 64 << 20
ENVIRONMENT_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


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


@cache
def keep_freed_memory_for_reuse() -> bool:
    """Blocks under 32 MB come from the heap and go back to it, and up to 64 MB free at its top stay, so that the next
    step reuses them instead of faulting fresh pages in (process-wide, once). A trim still hands them back. False
    where there is no glibc, or where the environment sets glibc's thresholds itself (those settings stand)."""
    libc = _libc()
    if libc is None or any(name in os.environ for name in ENVIRONMENT_SETTINGS) \
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
