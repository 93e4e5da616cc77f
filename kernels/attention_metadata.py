from dataclasses import dataclass

import torch

SPLIT_KV_SEGMENTS = 16
# Split-KV pays when the 2D grid (one program per sequence and KV head in pure decode) leaves SMs idle.
SPLIT_KV_MAX_PROGRAMS = 128


def padded_head_dim(head_dim: int) -> int:
    """The head dimension the Triton kernels tile: tl.arange needs a power of two and tl.dot at least 16 along the
    reduced dimension. Here rather than with the kernels, so the CPU path never imports Triton."""
    return max(16, 1 << (head_dim - 1).bit_length())


def split_kv_max_seqs(num_kv_heads: int) -> int:
    """The largest pure-decode batch that takes the split-KV path."""
    return max(1, SPLIT_KV_MAX_PROGRAMS // num_kv_heads)


@dataclass(slots=True)
class SplitKVWorkspace:
    """fp32 partial results of split-KV decode, one row per (sequence, query head, KV segment).

    Allocate once for the largest batch and pass it in AttentionMetadata, so a CUDA graph captured
    around the split-KV path keeps pointing at the same buffers.
    """

    out: torch.Tensor  # [max_seqs, num_heads, segments, padded_head_dim] unnormalised outputs
    max: torch.Tensor  # [max_seqs, num_heads, segments] running max of the scaled scores (log2 domain)
    expsum: torch.Tensor  # [max_seqs, num_heads, segments] sum of exp2(score - max)

    @classmethod
    def allocate(cls, max_seqs: int, num_heads: int, padded_head_dim: int, device: torch.device | str,
                 segments: int = SPLIT_KV_SEGMENTS) -> "SplitKVWorkspace":
        def empty(*shape: int) -> torch.Tensor:
            return torch.empty(max_seqs, num_heads, segments, *shape, dtype=torch.float32, device=device)

        return cls(out=empty(padded_head_dim), max=empty(), expsum=empty())

    def fits(self, num_seqs: int, num_heads: int, padded_head_dim: int) -> bool:
        max_seqs, heads, _, dim = self.out.shape
        return num_seqs <= max_seqs and heads == num_heads and dim == padded_head_dim

    @property
    def segments(self) -> int:
        return self.out.shape[2]


@dataclass(slots=True)
class AttentionMetadata:
    """Where this step's tokens sit in the paged KV cache; the same for every attention backend.

    Tokens are packed flat, sequence after sequence. Sequence i owns query rows
    query_start_loc[i]:query_start_loc[i+1]; its keys are its first seq_lens[i] cache slots
    (earlier context plus this step's tokens), found through block_tables[i].
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64 cache slot of each new token; -1 = do not store
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    max_query_len: int
    max_seq_len: int
    query_lens_host: list[int]
    seq_lens_host: list[int]
    split_kv_workspace: SplitKVWorkspace | None = None  # None: the Triton backend allocates per call
    # the first num_decodes sequences have one query token each (the scheduler puts decodes first), which a
    # backend may attend apart from the rest; 0: not counted
    num_decodes: int = 0
    # int32 [1]: num_decodes on the device, for a CUDA graph's launches, which replay whatever the step's decodes
    # (num_decodes is frozen at capture); None: the host's num_decodes is the step's
    num_decodes_device: torch.Tensor | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1
