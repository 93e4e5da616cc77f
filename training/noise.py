"""Clips without speech: digital silence, room tone, white/pink/brown noise and mains hum, transcribed as nothing.

Levels are the clip's RMS in dBFS. The model must answer `language None<asr_text>` (empty text) for all of them,
as Qwen3-ASR does; the log-mel front end scales every clip to its own loudest frame, so a quiet clip looks as
loud as speech to the model and only its spectrum tells it apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.speech import SAMPLE_RATE, coloured_noise

KINDS = ("silence", "room", "white", "pink", "brown", "hum")
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@dataclass(frozen=True)
class NoiseRange:
    seconds: tuple[float, float]
    level_dbfs: tuple[float, float]


TRAIN_NOISE = NoiseRange(seconds=(0.5, 12.0), level_dbfs=(-65.0, -20.0))
HELDOUT_NOISE = NoiseRange(seconds=(1.0, 8.0), level_dbfs=(-50.0, -35.0))


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) or 1.0


def _at_level(samples: np.ndarray, level_dbfs: float) -> np.ndarray:
    return (samples * (10 ** (level_dbfs / 20) / _rms(samples))).astype(np.float32)


def _hum(length: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and a few harmonics of random strength, with a little hiss."""
    t = np.arange(length) / SAMPLE_RATE
    mains = float(rng.choice([50.0, 60.0]))
    hum = np.zeros(length)
    for harmonic in range(1, 9):
        hum += rng.uniform(0.0, 1.0) / harmonic * np.sin(2 * np.pi * mains * harmonic * t + rng.uniform(0, 2 * np.pi))
    hiss = coloured_noise(length, float(rng.uniform(0.0, 1.0)), rng)
    return hum + hiss * (_rms(hum) / _rms(hiss) * 10 ** (-rng.uniform(20, 40) / 20))


def noise_clip(kind: str, seconds: float, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """A float32 16 kHz clip of `kind` (one of KINDS), `seconds` long, at `level_dbfs` RMS."""
    length = max(1, int(seconds * SAMPLE_RATE))
    if kind == "silence":  # digital silence, half the time with a dither far below any speech
        if rng.uniform() < 0.5:
            return np.zeros(length, np.float32)
        return _at_level(rng.standard_normal(length), float(rng.uniform(-96.0, -80.0)))
    if kind == "room":  # the tone of a quiet room: mostly low rumble, sometimes with a faint hum in it
        room = coloured_noise(length, float(rng.uniform(1.3, 2.0)), rng)
        if rng.uniform() < 0.3:
            hum = _hum(length, rng)
            room = room / _rms(room) + 0.3 * hum / _rms(hum)
        return _at_level(room, level_dbfs)
    if kind == "hum":
        return _at_level(_hum(length, rng), level_dbfs)
    if kind in NOISE_EXPONENTS:
        exponent = NOISE_EXPONENTS[kind] + float(rng.uniform(-0.2, 0.2))
        return _at_level(coloured_noise(length, exponent, rng), level_dbfs)
    raise ValueError(f"unknown noise kind {kind!r}; one of {KINDS}")


def random_noise_clip(rng: np.random.Generator, noise_range: NoiseRange, kind: str | None = None
                      ) -> tuple[str, np.ndarray]:
    kind = kind or str(rng.choice(KINDS))
    seconds = float(rng.uniform(*noise_range.seconds))
    return kind, noise_clip(kind, seconds, float(rng.uniform(*noise_range.level_dbfs)), rng)
