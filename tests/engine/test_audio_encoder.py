"""The audio encoder's host-side preparation: the clips' log-mel frames in zero-padded 1 s chunks, which conv stem
outputs are real, and the attention windows, as each clip alone gives them."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qasr.engine import ASR
from qasr.engine.audio_encoder import conv_output_length, num_audio_tokens


@pytest.fixture(scope="module")
def encoder(checkpoint_root: Path, shapes, write_checkpoint):
    checkpoint = write_checkpoint(checkpoint_root / "audio-encoder", shapes[1], layout="hf", seed=11)
    return ASR(str(checkpoint), attention_backend="torch").engine.core.runner.model.audio_tower


def clip_alone(encoder, mel: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """One clip's chunks [chunks, mel, chunk_frames], its real conv outputs per chunk and its windows."""
    frames, size = mel.shape[-1], encoder.chunk_frames
    chunks = math.ceil(frames / size)
    padded = F.pad(mel, (0, chunks * size - frames)).view(mel.shape[0], chunks, size).transpose(0, 1)
    valid = [conv_output_length(size)] * (chunks - 1) + [conv_output_length(frames - (chunks - 1) * size)]
    tokens, window = num_audio_tokens(frames, size), encoder.window_tokens
    return padded, valid, [window] * (tokens // window) + ([tokens % window] if tokens % window else [])


def test_a_batch_holds_each_clips_chunks_keeps_and_windows(encoder) -> None:
    """Clips shorter than a chunk, of whole chunks and past several windows, two of them views of one wider tensor,
    as the log-mel front end hands them out on a GPU (one of whole chunks, which F.pad leaves strided): the batch is
    the clips' own chunks in order, to the bit, contiguous in the encoder's dtype."""
    generator = torch.Generator().manual_seed(0)
    size = encoder.chunk_frames
    wide = torch.randn(200, 128, generator=generator)
    mels = [torch.randn(128, n, generator=generator) for n in (50, size, 3 * size + 37, 9 * size - 1)]
    joined = torch.randn(128, 5 * size + 77, generator=generator)
    mels[2:2] = [wide.T[:, 13:13 + size + 1], *joined.split([2 * size, 3 * size + 77], dim=1)]  # not contiguous
    batch = encoder.prepare(mels)
    alone = [clip_alone(encoder, mel) for mel in mels]
    assert batch.chunks.is_contiguous() and batch.chunks.dtype == encoder.conv_out.weight.dtype
    assert torch.equal(batch.chunks[:, 0], torch.cat([chunks for chunks, _, _ in alone]))
    time = conv_output_length(size)
    valid = [n for _, clip_valid, _ in alone for n in clip_valid]
    assert batch.keep.tolist() == [chunk * time + i for chunk, n in enumerate(valid) for i in range(n)]
    assert batch.window_lens == [w for _, _, windows in alone for w in windows]
    assert np.sum(batch.window_lens) == len(batch.keep)
