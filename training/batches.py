"""Training examples in the engine's exact prompt format, length-bucketed batches, and their tensors.

An example is the prompt the engine builds for a clip (empty system turn, `<|audio_pad|>` once per encoder
output, assistant turn) followed by the target `language English<asr_text>{text}<|im_end|>` (for a clip
without speech `language None<asr_text><|im_end|>`, as Qwen3-ASR answers silence); the loss is on the target
only. CTC targets are the text's own token ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from qasr.engine.audio_encoder import num_audio_tokens
from qasr.engine.prompt import PromptBuilder, language_header
from qasr.engine.tokenizer import SpecialTokens
from training.features import FeatureStore

LANGUAGE = "English"
NO_SPEECH = "None"  # the language Qwen3-ASR names for audio without speech
CHUNK_FRAMES = 100  # the encoder's chunk: features are padded to a multiple of it


@dataclass(frozen=True)
class Example:
    target: list[int]  # language English<asr_text>{text}<|im_end|>
    ctc: list[int]  # {text}


class ExampleBuilder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        vocab = tokenizer.get_vocab()
        self.tokenizer = tokenizer
        self.im_end = vocab["<|im_end|>"]
        self.pad = vocab["<|endoftext|>"]
        self.special = SpecialTokens(audio_pad=vocab["<|audio_pad|>"], audio_start=vocab["<|audio_start|>"],
                                     audio_end=vocab["<|audio_end|>"], asr_text=vocab["<asr_text>"],
                                     eos=(vocab["<|endoftext|>"], self.im_end))
        self.prompts = PromptBuilder(tokenizer, self.special)

    def example(self, text: str) -> Example:
        header = language_header(LANGUAGE if text else NO_SPEECH)
        target = self.tokenizer.encode(header + text, add_special_tokens=False)
        return Example(target + [self.im_end], self.tokenizer.encode(text, add_special_tokens=False))

    def prompt(self, frames: int, context: str = "") -> list[int]:
        ids, _ = self.prompts.build(num_audio_tokens(frames), context)
        return ids


def bucketed_batches(frames: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch: clips of similar length together (lengths jittered so buckets change), batches shuffled."""
    jittered = frames * rng.uniform(0.85, 1.15, size=len(frames))
    order = np.argsort(jittered, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def frame_budget_batches(frames: np.ndarray, max_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches of similar-length clips whose padded size (clips x longest) stays within `max_frames`:
    many short clips or a few long ones per step; batches shuffled."""
    jittered = frames * rng.uniform(0.85, 1.15, size=len(frames))
    order = np.argsort(jittered, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * int(frames[order[start:end + 1]].max()) <= max_frames:
            end += 1
        batches.append(order[start:end])
        start = end
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class SpecAugment:
    """Masks on the log-mel features (SpecAugment without time warping): a few frequency bands, and short
    stretches of time (short enough that a word is blurred rather than lost)."""
    freq_masks: int = 2
    max_freq_width: int = 15
    time_masks_per_second: float = 0.5
    max_time_width: int = 8

    def __call__(self, mel: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        mel = mel.clone()
        fill = float(mel.mean())
        bins, frames = mel.shape
        for _ in range(self.freq_masks):
            width = int(rng.integers(0, self.max_freq_width + 1))
            low = int(rng.integers(0, bins - width + 1))
            mel[low:low + width] = fill
        for _ in range(int(frames / 100 * self.time_masks_per_second)):
            width = int(rng.integers(0, self.max_time_width + 1))
            start = int(rng.integers(0, max(1, frames - width + 1)))
            mel[:, start:start + width] = fill
        return mel


def padded_features(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, mel_bins, frames rounded up to whole chunks] features and their [batch, frames] valid mask."""
    frames = [m.shape[1] for m in mels]
    width = math.ceil(max(frames) / CHUNK_FRAMES) * CHUNK_FRAMES
    features = torch.zeros(len(mels), mels[0].shape[0], width)
    mask = torch.zeros(len(mels), width, dtype=torch.long)
    for i, mel in enumerate(mels):
        features[i, :, :mel.shape[1]] = mel
        mask[i, :mel.shape[1]] = 1
    return features, mask


def collate(indices: np.ndarray, store: FeatureStore, examples: list[Example], builder: ExampleBuilder,
            augment: tuple[SpecAugment, np.random.Generator] | None = None,
            context: Callable[[], str] | None = None) -> dict[str, torch.Tensor]:
    """`context`: each example's system turn (training.contexts), empty without one."""
    mels = [store[int(i)] for i in indices]
    if augment is not None:
        mels = [augment[0](mel, augment[1]) for mel in mels]
    features, features_mask = padded_features(mels)
    sequences, labels = [], []
    for i, mel in zip(indices, mels):
        prompt, target = builder.prompt(mel.shape[1], context() if context else ""), examples[int(i)].target
        sequences.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    length = max(map(len, sequences))
    input_ids = torch.full((len(sequences), length), builder.pad)
    label_ids = torch.full((len(sequences), length), -100)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, (sequence, label) in enumerate(zip(sequences, labels)):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        label_ids[row, :len(label)] = torch.tensor(label)
        attention_mask[row, :len(sequence)] = 1
    ctc = [examples[int(i)].ctc for i in indices]
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids,
        "input_features": features, "input_features_mask": features_mask,
        "audio_lengths": torch.tensor([num_audio_tokens(m.shape[1]) for m in mels]),
        "ctc_targets": torch.tensor([t for target in ctc for t in target], dtype=torch.long),
        "ctc_lengths": torch.tensor([len(target) for target in ctc]),
    }
