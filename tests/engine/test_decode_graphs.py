"""Decode through the CUDA-graph input buffers: padded batches give the tokens of unpadded ones.

Without a GPU the padded buffers run eagerly (what a graph replays); on a GPU the graphs are captured.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.engine import ASR, SamplingParams
from qasr.engine.decode_graphs import DecodeGraphs, batch_size_ladder

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def checkpoint(checkpoint_root: Path, shapes, write_checkpoint) -> Path:
    return write_checkpoint(checkpoint_root / "graphs-gqa3", shapes[1], layout="hf", seed=8)


@pytest.fixture(scope="module")
def clips(speech_like) -> list[np.ndarray]:
    return [speech_like(0.4 + 0.45 * i, seed=300 + i) for i in range(11)]


def transcribe(asr: ASR, clips: list[np.ndarray], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    results = asr.transcribe([(c, 16000) for c in clips], sampling_params=SamplingParams(max_tokens=max_tokens))
    return [r.token_ids for r in results]


def test_batch_size_ladder() -> None:
    assert batch_size_ladder(1) == [1]
    assert batch_size_ladder(6) == [1, 2, 4, 6]
    assert batch_size_ladder(40) == [1, 2, 4, 8, 16, 32, 40]
    assert batch_size_ladder(512)[-3:] == [480, 496, 512]
    assert batch_size_ladder(640)[-5:] == [480, 496, 512, 576, 640]  # the split runs of bench throughput's 120 s rows
    assert batch_size_ladder(1000)[-3:] == [896, 960, 1000]


def test_decode_steps_of_up_to_1024_sequences_replay_graphs(checkpoint: Path) -> None:
    """The plan the engine captures by (here on the CPU, where nothing is captured): a split run of 128 clips of 2
    minutes has 640 pieces in flight."""
    for max_num_seqs, graphed in [(640, 640), (4096, 1024)]:
        core = ASR(str(checkpoint), max_num_seqs=max_num_seqs, num_kv_blocks=64).engine.core
        assert core.graph_plan.max_decode_batch == graphed


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_padded_decode_buffers_give_the_same_tokens(backend: str, checkpoint: Path, clips) -> None:
    if backend == "triton" and torch.cuda.is_available():
        pytest.skip("covered by the CUDA-graph test on a GPU")
    # the torch ops unpadded: the Triton kernels give their tokens (test_model_ops), so one short interpreted run of
    # three clips (decode batches of 3, padded to 4) will do
    count, max_tokens = (11, MAX_TOKENS) if backend == "torch" else (3, 4)
    expected = transcribe(ASR(str(checkpoint), attention_backend="torch"), clips[:count], max_tokens)
    asr = ASR(str(checkpoint), attention_backend=backend)
    runner = asr.engine.core.runner
    graphs = DecodeGraphs(runner.model, runner.ops, max_batch_size=16, max_blocks_per_seq=64, block_size=16)
    runner.decode_graphs = graphs
    calls = []
    original_run = graphs.run

    def run(*args):
        calls.append(args[2].num_seqs)
        return original_run(*args)

    graphs.run = run
    assert transcribe(asr, clips[:count], max_tokens) == expected
    assert calls and any(graphs.padded_size(n) != n for n in calls), "no decode step was padded"


@pytest.mark.gpu
def test_cuda_graphs_on_and_off_give_the_same_tokens_in_bf16(checkpoint: Path, clips) -> None:
    eager = ASR(str(checkpoint), dtype="bfloat16", enforce_eager=True)
    graphed = ASR(str(checkpoint), dtype="bfloat16", max_num_seqs=16)
    assert graphed.engine.core.runner.decode_graphs is not None and graphed.engine.core.runner.decode_graphs.graphs
    assert eager.engine.core.runner.decode_graphs is None
    # the KV pool was sized with the graphs' memory measured beforehand; the real capture must not take more
    memory = graphed.engine.core.graph_memory
    assert memory.profiled_bytes > 0 and eager.engine.core.graph_memory.profiled_bytes == 0
    assert memory.captured_bytes <= memory.profiled_bytes * 1.1 + (64 << 20), memory
    rotary = graphed.engine.core.runner.model.model.rotary
    tables = rotary.cos.data_ptr(), rotary.sin.data_ptr()
    assert rotary.cos.shape[0] >= graphed.engine.max_model_len  # all there before the capture
    assert transcribe(graphed, clips) == transcribe(eager, clips)
    assert (rotary.cos.data_ptr(), rotary.sin.data_ptr()) == tables  # what the graphs read never moved
