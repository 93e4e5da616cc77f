"""Paged attention in plain torch: the CPU path, and the reference of the Triton kernel of the same name."""

import torch
import torch.nn.functional as F

from qasr.kernels.attention_metadata import AttentionMetadata


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """One sequence's first `length` cached rows, converted to `dtype` after the gather."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    return cache.index_select(0, block_table[:num_blocks]).flatten(0, 1)[:length].to(dtype)


def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Causal attention of query [num_tokens, heads, head_dim] over each sequence's cached context. Single-token
    queries (decodes) go through one batched call, also in a step that mixes them with prefill chunks; so do prefill
    chunks of one length with nothing cached before them (a batch of new clips); any other chunk goes alone."""
    if meta.is_pure_decode:
        return _decode_attention(query, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.max_seq_len, scale)
    out = torch.empty_like(query)
    decode_rows, decode_seqs = [], []
    fresh: dict[int, tuple[list[int], list[int]]] = {}  # chunk length -> (first rows, sequences)
    start = 0
    for i, (q_len, s_len) in enumerate(zip(meta.query_lens_host, meta.seq_lens_host)):
        if q_len == 1:
            decode_rows.append(start)
            decode_seqs.append(i)
        elif q_len == s_len:
            starts, seqs = fresh.setdefault(q_len, ([], []))
            starts.append(start)
            seqs.append(i)
        else:
            q = query[start:start + q_len].transpose(0, 1)[None]
            k = gather_kv(k_cache, meta.block_tables[i], s_len, query.dtype).transpose(0, 1)[None]
            v = gather_kv(v_cache, meta.block_tables[i], s_len, query.dtype).transpose(0, 1)[None]
            rows = torch.arange(q_len, device=query.device)[:, None] + (s_len - q_len)
            mask = torch.arange(s_len, device=query.device)[None, :] <= rows
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
            out[start:start + q_len] = attended[0].transpose(0, 1)
        start += q_len
    for length, (starts, seqs) in fresh.items():
        rows = torch.tensor(starts, device=query.device)[:, None] + torch.arange(length, device=query.device)
        out[rows] = _fresh_chunks_attention(query[rows], k_cache, v_cache,
                                            meta.block_tables[torch.tensor(seqs, device=query.device)], scale)
    if decode_rows:
        rows = torch.tensor(decode_rows, device=query.device)
        seqs = torch.tensor(decode_seqs, device=query.device)
        longest = max(meta.seq_lens_host[i] for i in decode_seqs)
        out[rows] = _decode_attention(query[rows], k_cache, v_cache, meta.block_tables[seqs], meta.seq_lens[seqs],
                                      longest, scale)
    return out


def _fresh_chunks_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of chunks [chunks, length, heads, dim] with nothing cached before them, in one call:
    each chunk's keys are its own `length` first cache rows. [chunks, heads, length, dim] with a batch dimension is
    what the CPU's fused kernel takes (3-D inputs take the unfused path, 2-5x slower)."""
    num_chunks, length = query.shape[:2]
    block_size = k_cache.shape[1]
    tables = block_tables[:, :(length + block_size - 1) // block_size].flatten()
    k, v = (gather_blocks(cache, tables, num_chunks, query.dtype)[:, :, :length] for cache in (k_cache, v_cache))
    attended = F.scaled_dot_product_attention(query.transpose(1, 2), k, v, is_causal=True, scale=scale,
                                              enable_gqa=True)
    return attended.transpose(1, 2)


def gather_blocks(cache: torch.Tensor, tables: torch.Tensor, num_seqs: int, dtype: torch.dtype) -> torch.Tensor:
    """The blocks of `tables` (num_seqs rows of block ids, flattened: index_select on a flat index is twice as fast
    as cache[tables]) as [num_seqs, kv_heads, rows, dim] in `dtype` (an FP8 cache converts after the gather)."""
    return cache.index_select(0, tables).view(num_seqs, -1, *cache.shape[2:]).transpose(1, 2).to(dtype)


def _decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      seq_lens: torch.Tensor, max_seq_len: int, scale: float) -> torch.Tensor:
    """One query token per sequence [seqs, heads, dim] over its first seq_lens cached rows."""
    block_size = k_cache.shape[1]
    max_blocks = (max_seq_len + block_size - 1) // block_size
    tables = block_tables[:, :max_blocks].flatten()
    num_seqs = block_tables.shape[0]
    k, v = (gather_blocks(cache, tables, num_seqs, query.dtype) for cache in (k_cache, v_cache))
    mask = torch.arange(k.shape[2], device=query.device) < seq_lens.view(-1, 1, 1, 1)  # [seqs, 1, 1, rows]
    # a KV head's query heads (h // group) as that head's queries: no copy of K and V per query head, as
    # enable_gqa makes (the same arithmetic, a quarter to a half less time on the CPU)
    kv_heads, head_dim = k.shape[1], query.shape[-1]
    grouped = query.reshape(num_seqs, kv_heads, -1, head_dim)
    out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale)
    return out.reshape(query.shape)  # a fused CUDA kernel may return a transposed layout: reshape, not view
