"""Freed host memory goes back to the OS when the server's engine runs out of work (glibc's malloc_trim)."""

import os
import subprocess
import sys
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


def test_a_cpu_engine_never_imports_triton() -> None:
    """Triton's import alone is about 70 MB resident; the CPU path runs the torch ops and needs none of it."""
    code = ("import sys, numpy as np\n"
            "import qasr.serve.app\n"
            "from qasr.engine import ASR\n"
            "ASR(device='cpu').transcribe([(np.zeros(16000, np.float32), 16000)])\n"
            "assert 'triton' not in sys.modules, sorted(m for m in sys.modules if 'triton' in m)\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
