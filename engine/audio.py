"""Decoding any common audio input into the float32 mono 16 kHz waveform the model expects."""

import codecs
import io
import math
import os
from collections.abc import Callable

import numpy as np

# av, soundfile and soxr are imported where files are decoded or audio resampled, not here: the engine itself
# (arrays at 16 kHz in, as benchmarks and the GPU check feed it) then runs where they are not installed.

SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 1000  # below this a header is not describing speech: a 1 Hz WAV of 22 KB resampled to 3 hours
MAX_SAMPLE_RATE = 768_000
BLOCK_FRAMES = 1 << 16

AudioInput = str | os.PathLike | bytes | bytearray | np.ndarray | tuple[np.ndarray, int]


class AudioError(ValueError):
    """The input could not be turned into audio: undecodable, empty, malformed or out of range."""


class AudioTooLongError(AudioError):
    """The audio lasts longer than the caller allows (found out while decoding, before it is all in memory)."""


def load_audio(source: AudioInput, sample_rate: int | None = None, channel: int | None = None,
               max_seconds: float | None = None, on_decoded: Callable[[float], None] | None = None) -> np.ndarray:
    """Returns `source` as a contiguous float32 mono waveform at 16 kHz, peak-limited to [-1, 1].

    `source` is a file path, the raw bytes of an audio file (wav, flac, mp3, ogg, opus, m4a, webm, ...),
    an `(array, sample_rate)` tuple, or a bare array whose rate is `sample_rate` (default 16 kHz).
    Arrays are shaped (frames,) or (frames, channels), as soundfile returns them; integer arrays are
    PCM and scaled to [-1, 1]. `sample_rate` is only used for bare arrays; rates outside 1 kHz - 768 kHz are refused.

    Channels are averaged into one, unless `channel` picks one of them. Files are decoded, mixed and resampled a
    block at a time, so memory holds the 16 kHz result rather than the file's own samples. Audio longer than
    `max_seconds` is an AudioTooLongError, raised as soon as the header or the decoded blocks show it (a small
    compressed file can hold hours of audio); `on_decoded(seconds)` hears of every block of output as it is made,
    and may raise to stop the decoding.
    """
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError(f"audio tuple must be (array, sample_rate), got {len(source)} items")
        stream = _Output(source[1], channel, max_seconds, on_decoded)
        stream.push(_pcm_to_float(source[0]))
    elif isinstance(source, np.ndarray):
        stream = _Output(SAMPLE_RATE if sample_rate is None else sample_rate, channel, max_seconds, on_decoded)
        stream.push(_pcm_to_float(source))
    elif isinstance(source, bytes | bytearray):
        if not source:
            raise AudioError("audio bytes are empty (0 bytes)")
        stream = _decode(bytes(source), channel, max_seconds, on_decoded)
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise AudioError(f"audio file not found: {path}")
        if not os.path.isfile(path):
            raise AudioError(f"audio path is not a file: {path}")
        if os.path.getsize(path) == 0:
            raise AudioError(f"audio file is empty (0 bytes): {path}")
        stream = _decode(path, channel, max_seconds, on_decoded)
    else:
        raise AudioError(f"unsupported audio input type: {type(source).__name__}")
    return stream.finish()


class _Output:
    """The 16 kHz mono result, built a block of input at a time: a channel picked or all mixed, resampled
    (soxr's stream gives the same samples as resampling the whole at once), its length checked as it grows."""

    def __init__(self, rate: object, channel: int | None, max_seconds: float | None,
                 on_decoded: Callable[[float], None] | None):
        if not (isinstance(rate, int | float | np.integer | np.floating) and 0 < rate < math.inf):
            raise AudioError(f"sample rate must be a positive number, got {rate!r}")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise AudioError(f"a sample rate of {rate:g} Hz is not audio a speech model can use: it must lie between "
                             f"{MIN_SAMPLE_RATE} Hz and {MAX_SAMPLE_RATE} Hz")
        self.rate = float(rate)
        self.channel = channel
        self.max_seconds = max_seconds
        self.on_decoded = on_decoded
        # HQ (20-bit) resampling noise sits far below the 80 dB range the log-mel front end keeps; VHQ buys nothing
        # audible to the model
        self.resampler = None
        if self.rate != SAMPLE_RATE:
            import soxr

            self.resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self.blocks: list[np.ndarray] = []
        self.num_input = 0
        self.num_output = 0

    def check_length(self, num_input_frames: int) -> None:
        """What a header says: refuses audio longer than max_seconds before anything is decoded."""
        if self.max_seconds is not None and num_input_frames > self.max_seconds * self.rate:
            raise AudioTooLongError(f"audio is longer than the {self.max_seconds:g} s allowed")

    def push(self, samples: np.ndarray) -> None:
        """samples: (frames,) or (frames, channels) float32 at the input rate."""
        mono = _to_mono(samples, self.channel)
        if not np.isfinite(mono).all():
            raise AudioError("audio contains NaN or infinite samples")
        self.num_input += len(mono)
        self.check_length(self.num_input)
        self._emit(self.resampler.resample_chunk(mono) if self.resampler is not None else mono)

    def _emit(self, out: np.ndarray) -> None:
        if len(out):
            self.blocks.append(out)
            self.num_output += len(out)
            if self.on_decoded is not None:
                self.on_decoded(len(out) / SAMPLE_RATE)

    def finish(self) -> np.ndarray:
        if self.resampler is not None:  # the resampler's tail
            self._emit(self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        if self.num_input == 0:
            raise AudioError("audio is empty (0 samples)")
        if self.num_output == 0:
            raise AudioError(f"audio is empty after resampling {self.rate:g} Hz to {SAMPLE_RATE} Hz (too few samples)")
        samples = self.blocks[0] if len(self.blocks) == 1 else np.concatenate(self.blocks)
        self.blocks = []
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
    if array.ndim == 2 and array.shape[1] > array.shape[0] > 0:  # averaging its "channels" would leave a few samples
        raise AudioError(f"audio array of shape {array.shape} has more channels than frames: arrays are (frames, "
                         "channels) as soundfile reads them; one shaped (channels, frames), as torchaudio and librosa "
                         "give them, goes in as array.T")
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


def _decode(source: str | bytes, channel: int | None, max_seconds: float | None,
            on_decoded: Callable[[float], None] | None) -> _Output:
    """Decodes a block at a time: soundfile first, PyAV for what libsndfile can't read."""
    import av
    import soundfile as sf

    try:
        with sf.SoundFile(_reopen(source)) as file:
            output = _Output(file.samplerate, channel, max_seconds, on_decoded)
            output.check_length(file.frames)
            for block in file.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
                output.push(block)
            return output
    except sf.SoundFileError:
        pass
    try:
        return _decode_with_av(_reopen(source), channel, max_seconds, on_decoded)
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


def _decode_with_av(source: str | io.BytesIO, channel: int | None, max_seconds: float | None,
                    on_decoded: Callable[[float], None] | None) -> _Output:
    import av

    with av.open(source, metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioError("could not decode audio: the input has no audio stream")
        # Converting every frame to planar float gives (channels, frames) arrays whatever the codec's layout.
        to_planar = av.AudioResampler(format="fltp")
        output = None
        for frame in container.decode(container.streams.audio[0]):
            for planar in to_planar.resample(frame):
                output = output or _Output(planar.sample_rate, channel, max_seconds, on_decoded)
                output.push(planar.to_ndarray().T)
        for planar in to_planar.resample(None):
            output = output or _Output(planar.sample_rate, channel, max_seconds, on_decoded)
            output.push(planar.to_ndarray().T)
    if output is None:
        raise AudioError("audio is empty (0 samples)")
    return output


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
