"""Log-mel features of a corpus split, computed once per clip with the engine's extractor and cached.

Each clip is extracted alone (never batched with others: padding would change its frames), stored as
float16 in one memory-mapped [total_frames, mel_bins] file with an offsets index.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qasr.engine.audio import load_audio
from qasr.engine.features import FeatureConfig, LogMelExtractor

CHUNK = 64  # clips per worker task


def _extract_chunk(files: list[str]) -> list[np.ndarray]:
    extractor = LogMelExtractor(FeatureConfig())
    mels = extractor([load_audio(file) for file in files])
    return [mel.T.numpy().astype(np.float16) for mel in mels]


def _map(function: Callable[[list[str]], list[np.ndarray]], chunks: list[list[str]], workers: int
         ) -> Iterator[list[np.ndarray]]:
    if workers == 1:  # no pool to start for a few clips
        yield from map(function, chunks)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.imap(function, chunks)


class FeatureStore:
    """The cached features of a list of audio files; `store[i]` is a float32 [mel_bins, frames] tensor."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data = data
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def frames(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def read_ahead(self, block_bytes: int = 64 << 20) -> None:
        """Reads the cached file once, in order, so that the page cache holds it: a first epoch then takes its
        features from memory, not page by page from disk (which cost a step of long clips 60-70 ms here)."""
        buffer = bytearray(block_bytes)
        with open(self.data.filename, "rb", buffering=0) as file:
            while file.readinto(buffer):
                pass

    def __getitem__(self, index: int) -> torch.Tensor:
        rows = self.data[self.offsets[index]:self.offsets[index + 1]]
        return torch.from_numpy(np.ascontiguousarray(rows.T, dtype=np.float32))

    @classmethod
    def build(cls, files: list[Path], cache: Path, mel_bins: int = 128, workers: int | None = None,
              desc: str = "features") -> FeatureStore:
        """Loads `cache` (.f16 data + .offsets.npy) when it holds these files' features, else computes it."""
        data_path, offsets_path = cache.with_suffix(".f16"), cache.with_suffix(".offsets.npy")
        if not (data_path.exists() and offsets_path.exists() and len(np.load(offsets_path)) == len(files) + 1):
            cache.parent.mkdir(parents=True, exist_ok=True)
            chunks = [[str(f) for f in files[i:i + CHUNK]] for i in range(0, len(files), CHUNK)]
            workers = min(workers or os.cpu_count() or 1, max(1, len(chunks)))
            lengths = [0]
            with open(data_path, "wb") as out, tqdm(total=len(files), desc=desc, unit="clip") as bar:
                for mels in _map(_extract_chunk, chunks, workers):
                    for mel in mels:
                        out.write(mel.tobytes())
                        lengths.append(mel.shape[0])
                    bar.update(len(mels))
            np.save(offsets_path, np.cumsum(lengths).astype(np.int64))  # written last: marks a complete cache
        offsets = np.load(offsets_path)
        data = np.memmap(data_path, dtype=np.float16, mode="r", shape=(int(offsets[-1]), mel_bins))
        return cls(data, offsets)
