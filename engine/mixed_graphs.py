"""Steps with prefill chunks replayed from CUDA graphs, one for each of a ladder of padded token counts.

Run eagerly, such a step costs the host a Python launch per kernel, some 300 for the decoder alone: on an H200,
enqueueing a step of 64-512 decodes and one new 1 s request (its audio encoder and the decoder, both eager) took
16-22 ms, against 0.2-0.3 ms for the same decodes replayed from a graph (step-cuda-2026-12-04-h200.json in
benchmarks/results; the encoder has graphs of its own, encoder_graphs.py). The unified attention kernel needs no
host knowledge of the query lengths (its grid is bounded by tokens // BLOCK_Q + sequences; each program finds its
sequence on the device), so the whole decoder forward can be captured, as vLLM's full graphs are for its Triton
backend: the step's tokens padded to the next size of the ladder with tokens that store nothing (slot -1) and belong
to no sequence, its sequences padded to max_num_seqs with empty ones, whose programs exit at once. The step's
number of leading decodes goes to the device too, so that its attention takes them in a launch of their own with
the decode tiles where there are enough of them (decode_launch_min_seqs), as an eager step's does (the tuner's
timings of both ways: README, "GPU numbers"). The embeddings, with the step's encoder outputs put in, are made
eagerly into the graph's input buffer. With capture off the same padded buffers run eagerly, which is how the
padding is tested without a GPU.
"""

import torch

from qasr.engine.cuda_graphs import capture_graphs, half_step_ladder, padded_size
from qasr.engine.model import Qwen3ASRModel
from qasr.kernels import AttentionMetadata, ModelOps


def token_count_ladder(max_num_tokens: int) -> list[int]:
    """16, 24, 32, 48, ... up to max_num_tokens: a step of 16 tokens or more pads by at most half its tokens."""
    return half_step_ladder(max_num_tokens, smallest=16)


class MixedStepGraphs:
    """Decoder forwards of up to max_num_tokens tokens of up to max_num_seqs sequences, prefill or decode."""

    def __init__(self, model: Qwen3ASRModel, ops: ModelOps, max_num_seqs: int, max_num_tokens: int,
                 max_blocks_per_seq: int, block_size: int):
        if ops.name != "triton":  # the torch attention reads each sequence's lengths on the host, every step
            raise ValueError(f"graphs of steps with prefill chunks need the triton backend, not {ops.name!r}")
        self.model = model
        self.ops = ops
        self.sizes = token_count_ladder(max_num_tokens)
        self.max_num_seqs = max_num_seqs
        self.max_seq_len = max_blocks_per_seq * block_size
        parameter = next(model.parameters())
        n, s = self.sizes[-1], max_num_seqs

        def zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=parameter.device)

        self.embeds = zeros(n, model.config.text.hidden_size, dtype=parameter.dtype)
        self.positions = zeros(n, dtype=torch.long)
        self.slot_mapping = zeros(n, dtype=torch.long)
        self.query_start_loc = zeros(s + 1, dtype=torch.int32)
        self.seq_lens = zeros(s, dtype=torch.int32)
        self.block_tables = zeros(s, max_blocks_per_seq, dtype=torch.int32)
        self.num_decodes = zeros(1, dtype=torch.int32)
        self.hidden = torch.zeros_like(self.embeds)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def padded_size(self, num_tokens: int, num_seqs: int) -> int | None:
        return padded_size(self.sizes, num_tokens) if num_seqs <= self.max_num_seqs else None

    def metadata(self, size: int) -> AttentionMetadata:
        # of the host-side fields the Triton kernels read only the number of sequences and max_query_len, which
        # above 1 gives the sequences after the decodes the prefill tiles; each sequence's lengths come from the
        # buffers, and the number of decodes too
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], query_start_loc=self.query_start_loc, seq_lens=self.seq_lens,
            block_tables=self.block_tables, max_query_len=size, max_seq_len=self.max_seq_len,
            query_lens_host=[0] * self.max_num_seqs, seq_lens_host=[0] * self.max_num_seqs,
            num_decodes_device=self.num_decodes)

    def _forward(self, size: int) -> None:
        self.hidden[:size] = self.model(self.embeds[:size], self.positions[:size], self.metadata(size), self.ops)

    def capture(self, pool: tuple[int, int] | None = None) -> None:
        self.slot_mapping.fill_(-1)  # no sequence, nothing stored: the warm-up and capture leave the cache alone
        self.graphs = capture_graphs(self.sizes, self._forward, pool)

    def run(self, embeds: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [tokens, hidden] of a step that fits: padded_size(tokens, meta.num_seqs) is not None."""
        num_tokens, num_seqs = embeds.shape[0], meta.num_seqs
        size = self.padded_size(num_tokens, num_seqs)
        assert size is not None
        width = meta.block_tables.shape[1]
        self.embeds[:num_tokens].copy_(embeds)
        self.positions[:num_tokens].copy_(positions)
        self.slot_mapping[:num_tokens].copy_(meta.slot_mapping)
        self.query_start_loc[:num_seqs + 1].copy_(meta.query_start_loc)
        self.seq_lens[:num_seqs].copy_(meta.seq_lens)
        self.block_tables[:num_seqs, :width].copy_(meta.block_tables)
        self.num_decodes.fill_(meta.num_decodes)  # a fill's value travels with its launch: no copy from the host
        self.positions[num_tokens:size].zero_()
        self.slot_mapping[num_tokens:size].fill_(-1)
        # empty sequences after the last, whose programs exit before reading their seq_lens
        self.query_start_loc[num_seqs + 1:].fill_(num_tokens)
        graph = self.graphs.get(size)
        if graph is not None:
            graph.replay()
        else:
            self._forward(size)
        return self.hidden[:num_tokens]
