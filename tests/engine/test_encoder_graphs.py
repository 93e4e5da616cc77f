"""The audio encoder through the CUDA-graph input buffers: padded passes give the outputs of unpadded ones.

Without a GPU the padded buffers run eagerly (what a graph replays) through the interpreted Triton kernels; on a GPU
the graphs are captured with cuda_graph_mode="full" (its GPU test is in test_mixed_graphs.py).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.engine import ASR, SamplingParams
from qasr.engine.encoder_graphs import EncoderGraphs, chunk_count_ladder


@pytest.fixture(scope="module")
def checkpoint(checkpoint_root: Path, shapes, write_checkpoint) -> Path:
    return write_checkpoint(checkpoint_root / "encoder-graphs", shapes[1], layout="hf", seed=10)


def test_chunk_count_ladder() -> None:
    assert chunk_count_ladder(1) == [1]
    assert chunk_count_ladder(40) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40]
    assert chunk_count_ladder(64)[-3:] == [32, 48, 64]


def test_the_torch_backend_cannot_be_graphed(checkpoint: Path) -> None:
    runner = ASR(str(checkpoint), attention_backend="torch").engine.core.runner
    with pytest.raises(ValueError, match="need the triton backend"):
        EncoderGraphs(runner.model.audio_tower, runner.ops, max_chunks=4)


def test_padded_passes_give_the_unpadded_outputs(checkpoint: Path, speech_like) -> None:
    """Clips with partial last chunks and a window of more than one q-block (72 tokens), then fewer (what the first
    pass left in the buffers past the second's chunks, tokens and windows must not count), then more than the ladder
    holds (eager). Each padded pass also runs as a replay would, with the launch sized as at capture."""
    if torch.cuda.is_available():
        pytest.skip("covered by the CUDA-graph test on a GPU")
    runner = ASR(str(checkpoint), attention_backend="triton").engine.core.runner
    encoder = runner.model.audio_tower
    graphs = EncoderGraphs(encoder, runner.ops, max_chunks=8)
    window = encoder.window_tokens
    earlier: list[tuple[torch.Tensor, torch.Tensor]] = []
    for seconds in ([0.37, 5.6], [4.5], [4.2, 4.9]):  # 7 chunks (pads to 8), 5 (to 6), 10 (more than 8)
        mels = runner.features([speech_like(s, seed=int(100 * s)) for s in seconds])
        batch = encoder.prepare(mels)
        with torch.inference_mode():
            expected = encoder(mels, runner.ops)
            out = graphs.encode(mels)
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        earlier.append((out, expected))
        for kept, its_expected in earlier:  # a pass's outputs are the caller's: a later pass leaves them be
            torch.testing.assert_close(kept, its_expected, rtol=1e-5, atol=1e-5)
        size = graphs.padded_size(batch.chunks.shape[0])
        if size is not None:  # the bounds the kernel read: the windows', then empty ones at the real tokens' end
            tokens = batch.keep.shape[0]
            bounds = graphs.starts[:graphs.max_windows(size) + 1].tolist()
            assert bounds == np.cumsum([0, *batch.window_lens]).tolist() + [tokens] * (
                graphs.max_windows(size) - len(batch.window_lens))
            assert max(batch.window_lens) <= window
            with torch.inference_mode():  # the same buffers, the launch as captured
                graphs._forward(size, graphs.capture_window_lens(size))
            torch.testing.assert_close(graphs.out[:tokens], expected, rtol=1e-5, atol=1e-5)
    assert max(encoder.prepare(runner.features([speech_like(5.6, seed=560)])).window_lens) > 64  # two q-blocks


def test_what_a_capture_runs_is_a_valid_pass_at_every_size(checkpoint: Path) -> None:
    """The capture's forwards (no capture here: the same calls, eagerly) take window lengths that only size the
    launch; at every size they must be ones the kernel accepts."""
    runner = ASR(str(checkpoint), attention_backend="triton").engine.core.runner
    graphs = EncoderGraphs(runner.model.audio_tower, runner.ops, max_chunks=16)
    with torch.inference_mode():
        for size in graphs.sizes:
            lens = graphs.capture_window_lens(size)
            assert len(lens) == graphs.max_windows(size) and sum(lens) <= size * graphs.tokens_per_chunk
            graphs._forward(size, lens)


def test_transcripts_through_the_padded_encoder(checkpoint: Path, speech_like) -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the CUDA-graph test on a GPU")
    clips = [(speech_like(0.6 + 0.7 * i, seed=600 + i), 16000) for i in range(3)]
    params = SamplingParams(max_tokens=4)
    expected = [r.token_ids for r in ASR(str(checkpoint), attention_backend="torch").transcribe(clips,
                                                                                                sampling_params=params)]
    asr = ASR(str(checkpoint), attention_backend="triton")
    runner = asr.engine.core.runner
    graphs = runner.encoder_graphs = EncoderGraphs(runner.model.audio_tower, runner.ops, max_chunks=8)
    passes: list[tuple[int, int | None]] = []  # (chunks, padded to) of each pass
    original = graphs.encode

    def encode(mels: list[torch.Tensor]) -> torch.Tensor:
        chunks = graphs.encoder.prepare(mels).chunks.shape[0]
        passes.append((chunks, graphs.padded_size(chunks)))
        return original(mels)

    graphs.encode = encode
    assert [r.token_ids for r in asr.transcribe(clips, sampling_params=params)] == expected
    assert any(padded is not None and padded > chunks for chunks, padded in passes), passes
