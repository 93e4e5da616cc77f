"""Rendering a sentence as 16 kHz speech with espeak-ng, then light noise, gain and silence around it."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
ESPEAK = "espeak-ng"

# espeak-ng voice variants (espeak-ng-data/voices/!v) on the en-us voice. m4 is never trained on.
TRAIN_VARIANTS = ("m1", "m2", "m3", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")
UNSEEN_VARIANTS = ("m4",)
SPEED_RANGE = (130, 200)  # words per minute (espeak-ng -s)
PITCH_RANGE = (30, 70)  # espeak-ng -p, 0..99
SNR_DB_RANGE = (25.0, 40.0)
GAIN_DB_RANGE = (-12.0, 4.0)
SILENCE_RANGE = (0.02, 0.3)  # seconds added before and after


@dataclass(frozen=True, slots=True)
class Voice:
    variant: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return f"en-us+{self.variant}"


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def random_voice(rng: np.random.Generator, variants: tuple[str, ...]) -> Voice:
    return Voice(variants[int(rng.integers(len(variants)))], int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
                 int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)))


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """espeak-ng's rendering of `text`, float32 mono at 16 kHz."""
    wav = subprocess.run([ESPEAK, "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout",
                          text], check=True, capture_output=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return to_model_rate(samples, rate)


def to_model_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """float32 at 16 kHz (soxr: linear phase, no delay, so times stay where they were)."""
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0  # as soundfile reads PCM_16
    return soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)


def augment(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Silence before and after, a gain change, and white to pink noise 25-40 dB below the speech."""
    return augment_with_offset(speech, rng)[0]


def augment_with_offset(speech: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """`augment`, and the samples of silence it put before the speech (what shifts word times)."""
    before, after = (int(rng.uniform(*SILENCE_RANGE) * SAMPLE_RATE) for _ in range(2))
    speech = np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])
    speech_rms = float(np.sqrt(np.mean(speech**2))) or 1e-3
    noise = coloured_noise(len(speech), float(rng.uniform(0.0, 1.0)), rng)
    noise *= speech_rms / (float(np.sqrt(np.mean(noise**2))) or 1.0) * 10 ** (-rng.uniform(*SNR_DB_RANGE) / 20)
    mixed = (speech + noise) * 10 ** (rng.uniform(*GAIN_DB_RANGE) / 20)
    peak = float(np.abs(mixed).max())
    if peak > 0.99:  # a gain change never clips
        mixed *= 0.99 / peak
    return mixed.astype(np.float32), before


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power falling as 1/f**exponent: 0 is white, 1 is pink."""
    size = 1 << max(1, (length - 1).bit_length())  # a power of two: a fast FFT
    spectrum = np.fft.rfft(rng.standard_normal(size))
    frequencies = np.fft.rfftfreq(size)
    frequencies[0] = frequencies[1]
    return np.fft.irfft(spectrum * frequencies ** (-exponent / 2), n=size)[:length].astype(np.float32)


def render(text: str, voice: Voice, seed: int) -> np.ndarray:
    return augment(synthesize(text, voice), np.random.default_rng(seed))


PAUSE_RANGE = (0.25, 1.0)  # seconds between the sentences of one clip
MAX_CLIP_SECONDS = 30.0


def render_sentences(texts: list[str], voice: Voice, seed: int, max_seconds: float = MAX_CLIP_SECONDS,
                     min_seconds: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """Several sentences read by one voice with pauses between them, then `augment`ed as one clip.

    Sentences are taken in order while the clip stays within `max_seconds` (at least one), and only until it is
    `min_seconds` long; returns the clip and the sentences it holds.
    """
    rng = np.random.default_rng(seed)
    edges = SILENCE_RANGE[1] * 2  # the most augment adds
    parts: list[np.ndarray] = []
    used: list[str] = []
    length = 0
    for text in texts:
        speech = synthesize(text, voice)
        pause = np.zeros(int(rng.uniform(*PAUSE_RANGE) * SAMPLE_RATE), np.float32) if parts else np.zeros(0, np.float32)
        if parts and (length + len(pause) + len(speech)) / SAMPLE_RATE + edges > max_seconds:
            break
        parts += [pause, speech]
        used.append(text)
        length += len(pause) + len(speech)
        if length / SAMPLE_RATE + edges >= min_seconds > 0:
            break
    return augment(np.concatenate(parts), rng), used
