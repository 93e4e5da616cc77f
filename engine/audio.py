"""Decoding any common audio input into the float32 mono 16 kHz waveform the model expects."""

import codecs
import io
import math
import os

import av
import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000

AudioInput = str | os.PathLike | bytes | bytearray | np.ndarray | tuple[np.ndarray, int]


class AudioError(ValueError):
    """The input could not be turned into audio: undecodable, empty, malformed or out of range."""


class AudioTooLongError(AudioError):
    """The audio lasts longer than the caller allows (found out while decoding, before it is all in memory)."""


def load_audio(source: AudioInput, sample_rate: int | None = None, channel: int | None = None,
               max_seconds: float | None = None) -> np.ndarray:
    """Returns `source` as a contiguous float32 mono waveform at 16 kHz, peak-limited to [-1, 1].

    `source` is a file path, the raw bytes of an audio file (wav, flac, mp3, ogg, opus, m4a, webm, ...),
    an `(array, sample_rate)` tuple, or a bare array whose rate is `sample_rate` (default 16 kHz).
    Arrays are shaped (frames,) or (frames, channels), as soundfile returns them; integer arrays are
    PCM and scaled to [-1, 1]. `sample_rate` is only used for bare arrays.

    Channels are averaged into one, unless `channel` picks one of them. Audio longer than `max_seconds` is an
    AudioTooLongError, raised as soon as the header or the decoded frames show it (a small compressed file can
    hold hours of audio).
    """
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError(f"audio tuple must be (array, sample_rate), got {len(source)} items")
        samples, rate = _pcm_to_float(source[0]), source[1]
    elif isinstance(source, np.ndarray):
        samples, rate = _pcm_to_float(source), SAMPLE_RATE if sample_rate is None else sample_rate
    elif isinstance(source, bytes | bytearray):
        if not source:
            raise AudioError("audio bytes are empty (0 bytes)")
        samples, rate = _decode(bytes(source), max_seconds)
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise AudioError(f"audio file not found: {path}")
        if not os.path.isfile(path):
            raise AudioError(f"audio path is not a file: {path}")
        if os.path.getsize(path) == 0:
            raise AudioError(f"audio file is empty (0 bytes): {path}")
        samples, rate = _decode(path, max_seconds)
    else:
        raise AudioError(f"unsupported audio input type: {type(source).__name__}")

    samples = _to_mono(samples, channel)
    if max_seconds is not None and rate > 0:
        _check_duration(len(samples), rate, max_seconds)
    if samples.size == 0:
        raise AudioError("audio is empty (0 samples)")
    if not (isinstance(rate, int | float | np.integer | np.floating) and 0 < rate < math.inf):
        raise AudioError(f"sample rate must be a positive number, got {rate!r}")
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        # HQ (20-bit) resampling noise sits far below the 80 dB range the log-mel front end keeps; VHQ buys
        # nothing audible to the model.
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
        if samples.size == 0:
            raise AudioError(f"audio is empty after resampling {rate} Hz to {SAMPLE_RATE} Hz (too few samples)")
    peak = float(np.abs(samples).max())
    if peak > 1.0:
        samples = samples / peak
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in (1, 2):
        raise AudioError(
            f"audio array must be 1-D (frames,) or 2-D (frames, channels), got shape {array.shape}"
        )
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if np.issubdtype(array.dtype, np.signedinteger):
        return array.astype(np.float32) / -float(np.iinfo(array.dtype).min)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        middle = float(np.iinfo(array.dtype).max // 2 + 1)
        return (array.astype(np.float32) - middle) / middle
    raise AudioError(f"unsupported audio sample dtype: {array.dtype}")


def _to_mono(samples: np.ndarray, channel: int | None) -> np.ndarray:
    if samples.ndim == 1:
        samples = samples[:, None]
    num_channels = samples.shape[1]
    if channel is None:
        if num_channels == 0:
            raise AudioError("audio has no channels")
        return samples.mean(axis=1, dtype=np.float32) if num_channels > 1 else samples[:, 0]
    if not 0 <= channel < num_channels:
        raise AudioError(f"channel {channel} is out of range: audio has {num_channels} channel(s)")
    return samples[:, channel]


def _check_duration(num_samples: int, rate: float, max_seconds: float) -> None:
    if num_samples > max_seconds * rate:
        raise AudioTooLongError(f"audio is longer than the {max_seconds:g} s allowed")


def _decode(source: str | bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decodes to ((frames, channels) float32, rate): soundfile first, PyAV for what libsndfile can't read."""
    try:
        with sf.SoundFile(_reopen(source)) as file:
            if max_seconds is not None:
                _check_duration(file.frames, file.samplerate, max_seconds)
            return file.read(dtype="float32", always_2d=True), file.samplerate
    except sf.SoundFileError:
        pass
    try:
        return _decode_with_av(_reopen(source), max_seconds)
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, EOFError) as error:
        if _looks_like_text(source):
            reason = "the input looks like text, not audio"
        else:
            reason = getattr(error, "strerror", None) or str(error)
        raise AudioError(f"could not decode audio: {reason}") from error


def _reopen(source: str | bytes) -> str | io.BytesIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _decode_with_av(source: str | io.BytesIO, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    with av.open(source, metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioError("could not decode audio: the input has no audio stream")
        # Converting every frame to planar float gives (channels, frames) arrays whatever the codec's layout.
        to_planar = av.AudioResampler(format="fltp")
        frames, num_samples = [], 0
        for frame in container.decode(container.streams.audio[0]):
            num_samples += frame.samples
            if max_seconds is not None:
                _check_duration(num_samples, frame.sample_rate, max_seconds)
            frames += to_planar.resample(frame)
        frames += to_planar.resample(None)
    if not frames:
        return np.zeros((0, 1), dtype=np.float32), SAMPLE_RATE
    return np.concatenate([frame.to_ndarray() for frame in frames], axis=1).T, frames[0].rate


def _looks_like_text(source: str | bytes) -> bool:
    if isinstance(source, str):
        with open(source, "rb") as file:
            head = file.read(512)
    else:
        head = source[:512]
    # The incremental decoder tolerates a multi-byte character cut off at the end of `head`.
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char.isspace() for char in text)
