"""Log-mel features equal Qwen3ASRFeatureExtractor's for each clip processed alone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3ASRFeatureExtractor

from qasr.engine.features import FeatureConfig, LogMelExtractor, reflect_pad


def noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * 16000)).astype(np.float32) * 0.2


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(speech_like) -> dict[str, np.ndarray]:
    return {
        "noise-0.1s": noise(0.1, 1),
        "noise-0.3s": noise(0.3, 2),
        "noise-2.37s": noise(2.37, 3),
        "tone-440-1s": tone(1.0, 440.0),
        "tone-3k-5.5s": tone(5.55, 3000.0),
        "speech-like-7.9s": speech_like(7.9, 4),
        "speech-like-12.3s": speech_like(12.3, 5),
        "silence-1s": np.zeros(16000, dtype=np.float32),
    }


def reference_features(clip: np.ndarray) -> np.ndarray:
    out = Qwen3ASRFeatureExtractor()(clip, sampling_rate=16000, padding="longest", return_attention_mask=True)
    frames = int(out["attention_mask"][0].sum())
    return out["input_features"][0, :, :frames].numpy()


def test_features_match_transformers_one_clip_at_a_time_and_batched(clips: dict[str, np.ndarray]) -> None:
    extractor = LogMelExtractor(FeatureConfig())
    batched = extractor(list(clips.values()))
    for (name, clip), ours_in_batch in zip(clips.items(), batched):
        expected = reference_features(clip)
        [alone] = extractor([clip])
        assert alone.shape == expected.shape, name
        assert np.abs(alone.numpy() - expected).max() < 1e-4, name
        assert np.array_equal(alone.numpy(), ours_in_batch.numpy()), f"{name} depends on its batch-mates"


@pytest.mark.parametrize("samples", [1, 159, 160, 161, 7999, 8000, 8001, 16000, 16159])
def test_frame_count_is_samples_over_hop_with_a_half_second_floor(samples: int) -> None:
    extractor = LogMelExtractor(FeatureConfig())
    [mel] = extractor([noise(samples / 16000, 0)[:samples] if samples > 1 else np.ones(1, np.float32)])
    assert mel.shape == (128, max(samples, 8000) // 160)
    assert extractor.num_frames(samples) == mel.shape[1]


def test_feature_config_reads_the_checkpoint(tmp_path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        '{"feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400}')
    config = FeatureConfig.from_checkpoint(tmp_path)
    assert config.num_mel_bins == 80 and config.min_samples == 8000
    assert FeatureConfig.from_checkpoint(tmp_path / "missing") == FeatureConfig()


def test_power_spectrum_is_torch_stfts_to_the_bit(clips: dict[str, np.ndarray]) -> None:
    """The extractor frames and transforms each clip itself, in fewer passes than torch.stft: the same numbers as its
    center=True with reflect padding, the last frame left out."""
    extractor = LogMelExtractor(FeatureConfig())
    for name, clip in clips.items():
        wave = torch.from_numpy(extractor.pad_to_min_length(clip))
        stft = torch.stft(wave, 400, 160, window=extractor.window, return_complex=True)[:, :-1]
        assert torch.equal(extractor.power_spectrum(wave).T, stft.real.square() + stft.imag.square()), name
        assert torch.equal(reflect_pad(wave, 200), F.pad(wave[None], (200, 200), mode="reflect")[0]), name


def test_the_gpus_batched_features_are_each_clips_own_on_the_cpu(clips: dict[str, np.ndarray]) -> None:
    """`batched` (what a GPU runs) gives every clip the features it gets alone, to the bit on the CPU: its frames,
    its reflect padding and its own floor, next to a clip 10^4 times louder and one 10^4 times quieter; shapes from
    one sample to past a minute, clips that end on a hop and one sample either side."""
    extractor = LogMelExtractor(FeatureConfig())
    loud, quiet = noise(3.0, 7) * 1e4, noise(1.3, 8) * 1e-4
    edges = [noise(samples / 16000, 9)[:samples] for samples in (1, 8000, 16159, 16160, 16161)]
    batch = [*clips.values(), loud, quiet, *edges, noise(61.7, 10)]
    for clip, ours in zip(batch, extractor.batched(batch)):
        [alone] = extractor([clip])
        assert torch.equal(ours, alone)


@pytest.mark.gpu
def test_features_on_the_gpu_match_the_cpus(clips: dict[str, np.ndarray]) -> None:
    """On a GPU the clips go through `batched` together: within float rounding of the CPU's, clip by clip (the FFT
    and the filters' product are cuFFT's and cuBLAS's there)."""
    batch = [*clips.values(), noise(3.0, 7) * 1e4, noise(31.0, 10)]
    on_gpu = LogMelExtractor(FeatureConfig(), "cuda")(batch)
    for clip, ours in zip(batch, on_gpu):
        [expected] = LogMelExtractor(FeatureConfig())([clip])
        assert ours.device.type == "cuda" and ours.shape == expected.shape
        assert (ours.cpu() - expected).abs().max().item() < 1e-4
