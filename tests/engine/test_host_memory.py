"""Freed host memory goes back to the OS when the server's engine runs out of work (glibc's malloc_trim)."""

import os
from pathlib import Path

import numpy as np

from qasr.engine.host_memory import release_freed_memory


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_heap_pages_go_back_to_the_os() -> None:
    chunks = [np.ones(64 * 1024 // 8) for _ in range(8000)]  # 512 MB in 64 KB pieces: on the heap, not mmap'd
    del chunks[:-1]  # all but the last: the heap's top stays in use, so only a trim can hand the rest back
    before = resident_bytes()
    assert release_freed_memory()
    assert before - resident_bytes() > 256 * 2**20
