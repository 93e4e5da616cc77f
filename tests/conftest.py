import os
import sys
from pathlib import Path

# Triton kernels must see the interpreter switch before they are imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def speech_like(seconds: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope plus a wandering voiced tone: varied, speech-like input."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6))
    pitch = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    voiced = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate)
    return (0.3 * envelope * (voiced + 0.5 * rng.standard_normal(n))).astype(np.float32)


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")
