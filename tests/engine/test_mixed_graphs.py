"""Steps with prefill chunks through the CUDA-graph input buffers: padded steps give the tokens of unpadded ones.

Without a GPU the padded buffers run eagerly (what a graph replays) through the interpreted Triton kernels; on a GPU
the graphs are captured (cuda_graph_mode="full").
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.engine import ASR, SamplingParams
from qasr.engine.encoder_graphs import chunk_count_ladder
from qasr.engine.mixed_graphs import MixedStepGraphs, token_count_ladder
from qasr.kernels import AttentionMetadata
from qasr.kernels.triton.tuning import AttentionTuning, attention_tuning

MAX_TOKENS = 4


@pytest.fixture(scope="module")
def checkpoint(checkpoint_root: Path, shapes, write_checkpoint) -> Path:
    return write_checkpoint(checkpoint_root / "mixed-graphs", shapes[1], layout="hf", seed=9)


@pytest.fixture(scope="module")
def clips(speech_like) -> list[np.ndarray]:
    return [speech_like(0.5 + 0.4 * i, seed=400 + i) for i in range(3)]


def transcribe(asr: ASR, clips: list[np.ndarray], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    results = asr.transcribe([(c, 16000) for c in clips], sampling_params=SamplingParams(max_tokens=max_tokens))
    return [r.token_ids for r in results]


def test_token_count_ladder() -> None:
    assert token_count_ladder(16) == [16]
    assert token_count_ladder(10) == [10]
    assert token_count_ladder(100) == [16, 24, 32, 48, 64, 96, 100]
    ladder = token_count_ladder(8192)
    assert ladder[-4:] == [3072, 4096, 6144, 8192]
    assert all(b <= 1.5 * a for a, b in zip(ladder, ladder[1:]))  # a step pads by at most half its tokens


def test_the_torch_backend_cannot_be_graphed(checkpoint: Path) -> None:
    runner = ASR(str(checkpoint), attention_backend="torch").engine.core.runner
    with pytest.raises(ValueError, match="need the triton backend"):
        MixedStepGraphs(runner.model, runner.ops, max_num_seqs=4, max_num_tokens=64, max_blocks_per_seq=8,
                        block_size=16)


def hand_made_step(query_lens: list[int], context_lens: list[int], hidden_size: int, seed: int, blocks_per_seq: int = 2,
                   block_size: int = 16) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Embeddings, positions and metadata of one step: sequence i holds blocks 2i and 2i + 1 of the cache."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(sum(query_lens), hidden_size, generator=generator)
    positions = torch.cat([torch.arange(c, c + q) for q, c in zip(query_lens, context_lens)])
    tables = torch.arange(len(query_lens) * blocks_per_seq, dtype=torch.int32).view(len(query_lens), blocks_per_seq)
    owner = torch.repeat_interleave(torch.arange(len(query_lens)), torch.tensor(query_lens))
    slots = tables[owner, positions // block_size].long() * block_size + positions % block_size
    seq_lens = [q + c for q, c in zip(query_lens, context_lens)]
    meta = AttentionMetadata(
        slot_mapping=slots, query_start_loc=torch.tensor(np.cumsum([0, *query_lens]), dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_tables=tables, max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), query_lens_host=query_lens, seq_lens_host=seq_lens,
        num_decodes=next((i for i, q in enumerate(query_lens) if q != 1), len(query_lens)))
    return embeds, positions, meta


@pytest.mark.parametrize("decodes_apart", [False, True], ids=["decodes with the chunks", "decodes apart"])
def test_a_padded_step_reads_and_writes_only_its_own(decodes_apart: bool, checkpoint: Path) -> None:
    """Each step against the same step unpadded on a cache of random context: the same hidden states, and no slot
    written but the step's own. Later steps have fewer sequences, and fewer decodes, than the first: what the first
    left in the buffers past its sequences must not count (with its decodes apart, a stale count would take the
    second step's chunk for a decode)."""
    asr = ASR(str(checkpoint), attention_backend="triton", max_num_seqs=4, num_kv_blocks=8)
    runner = asr.engine.core.runner
    graphs = MixedStepGraphs(runner.model, runner.ops, max_num_seqs=4, max_num_tokens=40, max_blocks_per_seq=2,
                             block_size=16)
    context = torch.randn(runner.kv_cache.shape, generator=torch.Generator().manual_seed(1))
    hidden_size = runner.model.config.text.hidden_size
    tuning = AttentionTuning(decode_launch_min_seqs=1 if decodes_apart else 0)  # 0: never apart
    steps = [([1, 1, 9], [20, 7, 3]), ([1, 7], [4, 11]), ([5], [11])]
    for seed, (query_lens, context_lens) in enumerate(steps):
        embeds, positions, meta = hand_made_step(query_lens, context_lens, hidden_size, seed)
        runner.kv_cache.copy_(context)
        with torch.inference_mode(), attention_tuning(tuning):
            expected = runner.model(embeds, positions, meta, runner.ops)
        expected_cache = runner.kv_cache.clone()
        runner.kv_cache.copy_(context)
        with torch.inference_mode(), attention_tuning(tuning):
            hidden = graphs.run(embeds, positions, meta)
        # the attention splits off the decodes by this count (test_attention: each launch writes its part's rows).
        # Too low a count costs only speed; too high, and a chunk would fall to the decodes' launch, whose grid holds
        # one token a sequence: rows left unwritten
        assert graphs.num_decodes.tolist() == [meta.num_decodes]
        assert graphs.padded_size(len(embeds), meta.num_seqs) > len(embeds)
        torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
        written = (runner.kv_cache != context).flatten(4).any(-1)  # [k/v, layer, block, offset in block]
        assert written.flatten(2).any(1).any(0).nonzero().flatten().tolist() == sorted(meta.slot_mapping.tolist())
        torch.testing.assert_close(runner.kv_cache, expected_cache, rtol=1e-5, atol=1e-5)


def test_what_a_capture_runs_is_a_valid_step_at_every_size(checkpoint: Path) -> None:
    """The capture's forwards (no capture here: the same calls, eagerly) with nothing stored and every sequence
    empty: valid at every size, and they leave the cache alone."""
    runner = ASR(str(checkpoint), attention_backend="triton", max_num_seqs=4, num_kv_blocks=4).engine.core.runner
    graphs = MixedStepGraphs(runner.model, runner.ops, max_num_seqs=4, max_num_tokens=40, max_blocks_per_seq=2,
                             block_size=16)
    runner.kv_cache.normal_()
    before = runner.kv_cache.clone()
    graphs.slot_mapping.fill_(-1)  # as capture() leaves it
    with torch.inference_mode():
        for size in graphs.sizes:
            graphs._forward(size)
    assert torch.equal(runner.kv_cache, before)


@pytest.mark.parametrize("min_decodes", [256, 2], ids=["decodes with the chunks", "decodes apart from 2"])
def test_padded_steps_with_prefill_chunks_give_the_same_tokens(min_decodes: int, checkpoint: Path, clips) -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the CUDA-graph test on a GPU")
    # small steps: prefill chunks ride with decodes (or from 2 decodes, apart), steps between ladder sizes pad
    options = {"max_num_batched_tokens": 40, "max_num_seqs": 4}
    expected = transcribe(ASR(str(checkpoint), attention_backend="torch", **options), clips)
    asr = ASR(str(checkpoint), attention_backend="triton", **options)
    runner = asr.engine.core.runner
    graphs = MixedStepGraphs(runner.model, runner.ops, max_num_seqs=4, max_num_tokens=40, max_blocks_per_seq=16,
                             block_size=16)
    runner.mixed_graphs = graphs
    steps: list[tuple[int, int, int]] = []  # (tokens, padded to, decodes) of each step
    original_run = graphs.run

    def run(embeds: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        steps.append((len(embeds), graphs.padded_size(len(embeds), meta.num_seqs), meta.num_decodes))
        return original_run(embeds, positions, meta)

    graphs.run = run
    with attention_tuning(AttentionTuning(decode_launch_min_seqs=min_decodes)):
        assert transcribe(asr, clips) == expected
    assert any(decodes >= 2 and tokens > decodes for tokens, _, decodes in steps), f"no decodes beside a chunk: {steps}"
    assert any(padded != tokens for tokens, padded, _ in steps), f"no step was padded: {steps}"


@pytest.mark.gpu
def test_full_cuda_graphs_replay_what_the_padded_steps_give_eagerly_in_bf16(checkpoint: Path, speech_like) -> None:
    """Graph replays (decoder and audio encoder) against the same padded buffers run eagerly, which the CPU tests
    hold to the unpadded passes: the same kernels at the same shapes, so the same tokens (unpadded eager steps may
    take other tiles and cuBLAS kernels, and a bf16 near-tie of random weights could flip). Mixed steps of 2 decodes
    or more attend them in a launch of their own (256 by default), whose count the graphs read on the device."""
    clips = [speech_like(0.4 + 0.45 * i, seed=500 + i) for i in range(11)]
    options = {"max_num_batched_tokens": 96, "max_num_seqs": 8}  # arrivals in several steps: mixed steps
    with attention_tuning(AttentionTuning(decode_launch_min_seqs=2)):  # read when the graphs are captured
        graphed = ASR(str(checkpoint), dtype="bfloat16", cuda_graph_mode="full", **options)
        padded = ASR(str(checkpoint), dtype="bfloat16", cuda_graph_mode="full", **options)
    runner = graphed.engine.core.runner
    assert runner.mixed_graphs is not None and set(runner.mixed_graphs.graphs) == set(token_count_ladder(96))
    assert runner.encoder_graphs is not None and set(runner.encoder_graphs.graphs) == set(chunk_count_ladder(64))
    # without a graph: the same padded buffers, eagerly
    padded.engine.core.runner.mixed_graphs.graphs = {}
    padded.engine.core.runner.encoder_graphs.graphs = {}
    # the KV pool was sized with both sets of graphs measured beforehand; the real capture must not take more
    memory = graphed.engine.core.graph_memory
    assert memory.captured_bytes <= memory.profiled_bytes * 1.1 + (64 << 20), memory
    replays: list[tuple[int, int]] = []  # (max_query_len, leading decodes) of each step the graphs ran
    original_run = runner.mixed_graphs.run

    def run(embeds: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        replays.append((meta.max_query_len, meta.num_decodes))
        return original_run(embeds, positions, meta)

    runner.mixed_graphs.run = run
    encoder_graphs, passes = runner.encoder_graphs, []  # the padded chunk count of each encoder pass
    original_encode = encoder_graphs.encode

    def encode(mels: list[torch.Tensor]) -> torch.Tensor:
        passes.append(encoder_graphs.padded_size(encoder_graphs.encoder.prepare(mels).chunks.shape[0]))
        return original_encode(mels)

    encoder_graphs.encode = encode
    with attention_tuning(AttentionTuning(decode_launch_min_seqs=2)):  # the padded steps' eager launches
        tokens, expected = transcribe(graphed, clips, 10), transcribe(padded, clips, 10)
        if tokens != expected:  # which graphs: the same run with the encoder's passes eager too (a window is short)
            captured, encoder_graphs.graphs = encoder_graphs.graphs, {}
            blame = ("the audio encoder's" if transcribe(graphed, clips, 10) == expected
                     else "the decoder's mixed-step (the encoder's too, maybe)")
            encoder_graphs.graphs = captured
            pytest.fail(f"full graphs' replays differ from the padded steps run eagerly; {blame} graphs are at fault")
    assert any(longest > 1 and decodes >= 2 for longest, decodes in replays), f"no decodes apart: {replays}"
    assert passes and all(size in encoder_graphs.graphs for size in passes), passes  # every pass a replay
