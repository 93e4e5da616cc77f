"""Fixtures for the kernel tests: random paged-KV batches (`paged_batch`) and stable per-case seeds (`seed_of`)."""

import zlib
from dataclasses import dataclass

import pytest
import torch

from qasr.kernels import AttentionMetadata


def seed_of(*parts: object) -> int:
    """A seed that differs per test case and is the same in every run (unlike hash() of a str)."""
    return zlib.crc32(repr(parts).encode())


@dataclass
class PagedBatch:
    query: torch.Tensor  # [num_tokens, heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, head_dim]
    v_cache: torch.Tensor
    meta: AttentionMetadata
    scale: float


def paged_batch(query_lens: list[int], context_lens: list[int], num_heads: int, num_kv_heads: int, head_dim: int,
                dtype: torch.dtype, seed: int, block_size: int = 16, spare_blocks: int = 3,
                spare_columns: int = 2, device: str = "cpu") -> PagedBatch:
    """Sequences whose blocks are scattered over a shuffled cache that also holds blocks nobody owns.

    Every cache slot holds random data, so reading a slot past a sequence's length or through a padded
    block-table entry (0) changes the result. Block tables have spare zero columns at the end.
    """
    generator = torch.Generator().manual_seed(seed)
    seq_lens = [q + c for q, c in zip(query_lens, context_lens, strict=True)]
    blocks_per_seq = [-(-length // block_size) for length in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    physical = torch.randperm(num_blocks, generator=generator).tolist()
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq) + spare_columns, dtype=torch.int32)
    for i, count in enumerate(blocks_per_seq):
        block_tables[i, :count] = torch.tensor(physical[:count], dtype=torch.int32)
        physical = physical[count:]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype).to(device)

    meta = AttentionMetadata(
        slot_mapping=torch.full((sum(query_lens),), -1, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32,
                                     device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_host=list(query_lens),
        seq_lens_host=seq_lens,
        num_decodes=next((i for i, q_len in enumerate(query_lens) if q_len != 1), len(query_lens)),
    )
    return PagedBatch(query=randn(sum(query_lens), num_heads, head_dim),
                      k_cache=randn(num_blocks, block_size, num_kv_heads, head_dim),
                      v_cache=randn(num_blocks, block_size, num_kv_heads, head_dim),
                      meta=meta, scale=head_dim**-0.5)


@pytest.fixture(name="seed_of", scope="session")
def fixture_seed_of():
    """`seed_of(*parts)`: a stable seed for a test case."""
    return seed_of


@pytest.fixture(name="paged_batch", scope="session")
def fixture_paged_batch():
    """`paged_batch(query_lens, context_lens, num_heads, num_kv_heads, head_dim, dtype, seed, ...)`: a PagedBatch
    (query, k_cache, v_cache, meta, scale) over a shuffled cache; `dataclasses.replace` it to swap the caches."""
    return paged_batch
