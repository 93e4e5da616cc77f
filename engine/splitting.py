"""Cutting long audio into model-sized pieces at its quietest points, as the Qwen3-ASR reference does."""

from dataclasses import dataclass

import numpy as np

from qasr.engine.audio import SAMPLE_RATE

SEARCH_SECONDS = 5.0  # how far before the longest piece's end a cut may fall


@dataclass(frozen=True, slots=True)
class AudioPiece:
    samples: np.ndarray  # float32 mono; a short last piece carries zero padding at its tail
    start: float  # seconds from the start of the original audio
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def split_audio(
    samples: np.ndarray,
    max_piece_seconds: float,
    sample_rate: int = SAMPLE_RATE,
    search_seconds: float = SEARCH_SECONDS,
    min_window_ms: float = 100.0,
    min_piece_seconds: float = 0.5,
) -> list[AudioPiece]:
    """Splits `samples` into contiguous pieces of at most `max_piece_seconds`, cut where the audio is quiet.

    Each cut lies within the last `search_seconds` (at most half the piece) before the longest allowed piece would
    end: at the quietest `min_window_ms` window there (least sum of |x|), on that window's quietest sample, the latest
    of equally quiet ones. So every piece but the last is at least half the longest, even in silence. The unpadded
    pieces concatenate back to `samples` exactly. When a split happens, pieces shorter than
    `min_piece_seconds` are zero-padded to it (the model's minimum input); `start` keeps the true offset.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D mono audio, got shape {samples.shape}")
    max_len, search_len = _piece_lengths(max_piece_seconds, sample_rate, search_seconds)
    if len(samples) <= max_len:
        return [AudioPiece(samples, 0.0, sample_rate)]

    window_len = max(1, int(min_window_ms / 1000 * sample_rate))
    bounds = [0]
    while len(samples) - bounds[-1] > max_len:
        bounds.append(_quietest_cut(samples, bounds[-1], max_len, search_len, window_len))
    bounds.append(len(samples))

    min_len = int(min_piece_seconds * sample_rate)
    pieces = []
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        piece = samples[begin:end]
        if len(piece) < min_len:
            piece = np.pad(piece, (0, min_len - len(piece)))
        pieces.append(AudioPiece(piece, begin / sample_rate, sample_rate))
    return pieces


def max_pieces(num_samples: int, max_piece_seconds: float, sample_rate: int = SAMPLE_RATE,
               search_seconds: float = SEARCH_SECONDS) -> int:
    """The most pieces split_audio can cut num_samples of any audio into: every piece but the last ends at a cut
    no earlier than the longest piece less the search, so a 120 s clip in pieces of at most 30 s gives up to 5, not
    4 (what a batch of split clips puts in flight)."""
    max_len, search_len = _piece_lengths(max_piece_seconds, sample_rate, search_seconds)
    if num_samples <= max_len:
        return 1
    return 1 + -(-(num_samples - max_len) // (max_len - search_len))


def _piece_lengths(max_piece_seconds: float, sample_rate: int, search_seconds: float) -> tuple[int, int]:
    """The longest piece and the search before its end, in samples."""
    if max_piece_seconds <= 0:
        raise ValueError(f"max_piece_seconds must be positive, got {max_piece_seconds}")
    max_len = max(1, int(max_piece_seconds * sample_rate))
    return max_len, max(0, min(int(search_seconds * sample_rate), max_len // 2))


def _quietest_cut(samples: np.ndarray, begin: int, max_len: int, search_len: int, window_len: int) -> int:
    """End (exclusive) for the piece starting at `begin`: the quietest point in (begin, begin + max_len]."""
    ideal = begin + max_len
    # The reference also searches past `ideal`; stopping there keeps every piece within max_len.
    lowest = max(begin + 1, ideal - search_len)
    loudness = np.abs(samples[lowest : ideal + 1], dtype=np.float64)
    window_len = min(window_len, len(loudness))
    running = np.concatenate(([0.0], np.cumsum(loudness)))
    window_start = _last_argmin(running[window_len:] - running[:-window_len])
    return lowest + window_start + _last_argmin(loudness[window_start : window_start + window_len])


def _last_argmin(values: np.ndarray) -> int:
    """The last index of the minimum: among equally quiet places, the one giving the longest piece."""
    return len(values) - 1 - int(np.argmin(values[::-1]))
