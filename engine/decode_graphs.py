import torch

from qasr.engine.cuda_graphs import capture_graphs, padded_size
from qasr.engine.model import Qwen3ASRModel
from qasr.kernels import AttentionMetadata, ModelOps
from qasr.kernels.attention_metadata import SplitKVWorkspace, padded_head_dim, split_kv_max_seqs


def batch_size_ladder(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 sizes up to 512 and every 64 beyond (a batch pads by at most an eighth there, and
    each size is a capture at start-up), up to max_batch_size."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch_size] + list(range(16, min(max_batch_size, 512) + 1, 16))
    sizes += list(range(576, max_batch_size + 1, 64))
    if not sizes or sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return sizes


class DecodeGraphs:
    """Pure-decode steps replayed from CUDA graphs captured for a ladder of padded batch sizes.

    Inputs go through static buffers; a batch is padded up to the next captured size with rows that store
    nothing (slot -1) and attend to one cached slot. With capture off, the same padded buffers run eagerly,
    which is how the padding is tested without a GPU.
    """

    def __init__(self, model: Qwen3ASRModel, ops: ModelOps, max_batch_size: int,
                 max_blocks_per_seq: int, block_size: int):
        self.model = model
        self.ops = ops
        self.sizes = batch_size_ladder(max_batch_size)
        self.max_seq_len = max_blocks_per_seq * block_size
        text = model.config.text
        device = next(model.parameters()).device
        n = self.sizes[-1]

        def zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.token_ids = zeros(n, dtype=torch.long)
        self.positions = zeros(n, dtype=torch.long)
        self.slot_mapping = zeros(n, dtype=torch.long)
        self.seq_lens = zeros(n, dtype=torch.int32)
        self.block_tables = zeros(n, max_blocks_per_seq, dtype=torch.int32)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.hidden = zeros(n, text.hidden_size, dtype=next(model.parameters()).dtype)
        # only batches up to split_kv_max_seqs take the split-KV path; larger ones never touch the workspace
        self.workspace = (SplitKVWorkspace.allocate(min(n, split_kv_max_seqs(text.num_kv_heads)), text.num_heads,
                                                    padded_head_dim(text.head_dim), device)
                          if ops.name == "triton" else None)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def padded_size(self, batch_size: int) -> int | None:
        return padded_size(self.sizes, batch_size)

    def metadata(self, size: int, max_seq_len: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], query_start_loc=self.query_start_loc[:size + 1],
            seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size], max_query_len=1,
            max_seq_len=max_seq_len, query_lens_host=[1] * size, seq_lens_host=[1] * size,
            split_kv_workspace=self.workspace)

    def _forward(self, size: int, max_seq_len: int) -> None:
        embeds = self.model.model.embed_tokens(self.token_ids[:size])
        meta = self.metadata(size, max_seq_len)
        self.hidden[:size] = self.model(embeds, self.positions[:size], meta, self.ops)

    def capture(self) -> None:
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(1)
        self.graphs = capture_graphs(self.sizes, lambda size: self._forward(size, self.max_seq_len))

    def run(self, token_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [batch, hidden] of a pure-decode batch that fits the ladder."""
        batch = meta.num_seqs
        size = self.padded_size(batch)
        assert size is not None and meta.is_pure_decode
        width = meta.block_tables.shape[1]
        self.token_ids[:batch].copy_(token_ids, non_blocking=True)
        self.positions[:batch].copy_(positions, non_blocking=True)
        self.slot_mapping[:batch].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:batch].copy_(meta.seq_lens, non_blocking=True)
        self.block_tables[:batch, :width].copy_(meta.block_tables, non_blocking=True)
        self.token_ids[batch:size].zero_()
        self.positions[batch:size].zero_()
        self.slot_mapping[batch:size].fill_(-1)
        self.seq_lens[batch:size].fill_(1)
        self.block_tables[batch:size, 0].zero_()
        graph = self.graphs.get(size)
        if graph is not None:
            graph.replay()
        else:
            self._forward(size, meta.max_seq_len)
        return self.hidden[:batch]
