import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    num_mel_bins: int = 128
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    min_samples: int = 8000  # shorter clips are zero-padded to 0.5 s, as transformers and qwen-asr do

    def num_frames(self, num_samples: int) -> int:
        """Mel frames of a clip of `num_samples` samples (short clips are padded to min_samples first)."""
        return max(num_samples, self.min_samples) // self.hop_length

    @classmethod
    def from_checkpoint(cls, path: Path) -> "FeatureConfig":
        """From preprocessor_config.json, or the `feature_extractor` of processor_config.json (where transformers 5
        saves a processor's parts together)."""
        file, processor_file = path / "preprocessor_config.json", path / "processor_config.json"
        if file.exists():
            raw = json.loads(file.read_text())
        elif processor_file.exists():
            raw = json.loads(processor_file.read_text()).get("feature_extractor") or {}
        else:
            return cls()
        default = cls()
        return cls(
            num_mel_bins=raw.get("feature_size", default.num_mel_bins),
            sample_rate=raw.get("sampling_rate", default.sample_rate),
            n_fft=raw.get("n_fft", default.n_fft),
            hop_length=raw.get("hop_length", default.hop_length),
            min_samples=raw.get("min_length", default.min_samples),
        )


class LogMelExtractor:
    """Whisper-style log-mel features: each clip gets exactly the features it would get alone (no padding to
    batch-mates), its own STFT with reflect padding, its own dynamic-range floor (max - 8). On the CPU one clip's
    spectrum is held at a time; on a GPU the clips are taken together (`batched`)."""

    def __init__(self, config: FeatureConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        filters = mel_filter_bank(
            num_frequency_bins=1 + config.n_fft // 2,
            num_mel_filters=config.num_mel_bins,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=config.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        mel_filters = torch.from_numpy(filters).to(self.device, torch.float32).T.contiguous()  # [mels, bins]
        if self.device.type == "cpu":
            # each filter is a triangle a few bins wide: 394 of the 25,728 weights are non-zero, and a sparse
            # product is a fifth of the dense one's time on the CPU (the same sums, at most a float rounding apart)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
                mel_filters = mel_filters.to_sparse_csr()
        self.mel_filters = mel_filters
        self.window = torch.hann_window(config.n_fft, device=self.device)

    def pad_to_min_length(self, samples: np.ndarray) -> np.ndarray:
        short = self.config.min_samples - len(samples)
        return np.pad(samples, (0, short)) if short > 0 else samples

    def num_frames(self, num_samples: int) -> int:
        return self.config.num_frames(num_samples)

    def __call__(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """Returns one float32 [num_mel_bins, frames] tensor per clip, frames = samples // hop_length."""
        if not clips:
            return []
        if self.device.type == "cuda":
            return self.batched(clips)
        features = []
        for clip in clips:  # one at a time: a batch of 30 s clips' spectra at once would take hundreds of MB
            log_spec = self.log_mel(self.power_spectrum(torch.from_numpy(self.as_float32(clip))))
            features.append(torch.maximum(log_spec, log_spec.max() - 8.0).add_(4.0).div_(4.0))
        return features

    def as_float32(self, clip: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.pad_to_min_length(clip), dtype=np.float32)

    def batched(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """The features of `clips` (not empty) in the same device operations whatever their number: one clip at a
        time a GPU would take some 17 launches a clip, on the host's time. The clips lie end to end in one buffer,
        each in a block that starts on a hop and holds its reflect padding (written on the host), so one unfold
        frames them all; each clip's floor is still its own maximum - 8. The spectra of all the clips are held at
        once: a step's audio, at most what the engine's memory profile passes through. The clips' features are
        views of one [mels, frames] tensor."""
        n_fft, hop = self.config.n_fft, self.config.hop_length
        pad = n_fft // 2
        waves = [self.as_float32(clip) for clip in clips]
        lengths = np.array([len(wave) for wave in waves])
        blocks = -(-(lengths + 2 * pad) // hop) * hop
        starts = np.concatenate([[0], np.cumsum(blocks)[:-1]])
        # the gaps after each block's padding stay unwritten: no frame of a clip reaches them
        buffer = torch.empty(int(blocks.sum()), dtype=torch.float32, pin_memory=self.device.type == "cuda")
        host = buffer.numpy()
        for wave, start in zip(waves, starts):
            host[start + pad:start + pad + len(wave)] = wave
        # the reflect padding of every clip at once: pad samples each side, mirrored about the first and the last
        mirror = np.arange(1, pad + 1)
        first, last = (starts + pad)[:, None], (starts + pad + lengths - 1)[:, None]
        host[first - mirror], host[last + mirror] = host[first + mirror], host[last - mirror]
        # each clip's frames: unfold rows from its block's first hop on, as many as it has (the last one dropped)
        counts = lengths // hop
        clip_of_frame = np.repeat(np.arange(len(clips)), counts)
        first_frame = np.cumsum(counts) - counts
        rows = np.repeat(starts // hop, counts) + np.arange(counts.sum()) - np.repeat(first_frame, counts)
        indices = torch.from_numpy(np.stack([rows, clip_of_frame]))
        if self.device.type == "cuda":
            buffer = buffer.to(self.device, non_blocking=True)
            indices = indices.pin_memory().to(self.device, non_blocking=True)
        log_spec = self.log_mel(self.power(buffer.unfold(0, n_fft, hop).index_select(0, indices[0])))
        clip_max = torch.full((len(clips),), float("-inf"), device=self.device).scatter_reduce_(
            0, indices[1], log_spec.amax(0), "amax")
        floor = (clip_max - 8.0).index_select(0, indices[1])
        features = torch.maximum(log_spec, floor).add_(4.0).div_(4.0)
        return list(features.split(counts.tolist(), dim=1))  # views: the encoder joins them again

    def power_spectrum(self, wave: torch.Tensor) -> torch.Tensor:
        """|STFT|^2 of a 1-D wave, [frames, bins]: torch.stft's (center=True, reflect padding) to the bit, without
        the last frame, which Whisper-style features drop, in fewer passes over the samples than torch.stft makes."""
        n_fft = self.config.n_fft
        return self.power(reflect_pad(wave, n_fft // 2).unfold(0, n_fft, self.config.hop_length)[:-1])

    def power(self, frames: torch.Tensor) -> torch.Tensor:
        """|FFT|^2 of windowed frames [frames, n_fft], [frames, bins] (without the square root abs() would take)."""
        spectrum = torch.fft.rfft(frames * self.window)
        return spectrum.real.square().add_(spectrum.imag.square())

    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """log10 of the mel filters' sums of a power spectrum [frames, bins], [mels, frames], before the floor."""
        return (self.mel_filters @ power.T.contiguous()).clamp_(min=1e-10).log10_()


def reflect_pad(wave: torch.Tensor, pad: int) -> torch.Tensor:
    """F.pad(mode="reflect") of a 1-D wave (which runs at a third of a copy's speed on the CPU): its first and last
    `pad` samples after the edge, mirrored. The wave must be longer than `pad`."""
    return torch.cat([wave[1:pad + 1].flip(0), wave, wave[-pad - 1:-1].flip(0)])
