"""What the offline benchmarks run, and how they read the clock: speech-like synthetic clips named by (seconds, seed),
so that two processes make the same audio; fixed output lengths; waiting for the device before reading the time."""

import numpy as np
import torch

SAMPLE_RATE = 16000


def synthetic_clip(seconds: float, seed: int) -> np.ndarray:
    """Speech-like noise: a syllable-rate envelope over a voiced tone and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
    voiced = np.sin(2 * np.pi * np.cumsum(np.full_like(t, rng.uniform(90, 220))) / SAMPLE_RATE)
    return (0.3 * envelope * (voiced + 0.5 * rng.standard_normal(len(t)))).astype(np.float32)


def output_tokens(seconds: float, tokens_per_second: float) -> int:
    return max(1, round(seconds * tokens_per_second))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
