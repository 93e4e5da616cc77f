"""Triton building blocks shared by the paged attention kernels (unified 2D and split-KV 3D)."""

import triton
import triton.language as tl


@triton.jit
def find_seq_idx(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """The sequence owning virtual q-block `q_block`, where sequence i owns the q-blocks from
    query_start_loc[i] // BLOCK_Q + i on: the largest i with that start <= q_block (binary search)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if start <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def attend_kv_tiles(q, row_max, row_sum, acc, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head,
                    tile_lo, tile_hi, seq_len, key_limit, qk_scale,
                    stride_cache_block, stride_cache_slot, stride_cache_head,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Online softmax of q [BLOCK_M, BLOCK_D] over key tiles [tile_lo, tile_hi) of one sequence's paged cache.

    Row r sees the keys at positions <= key_limit[r] and < seq_len; the caller guarantees every row sees a
    key in the first tile, so no running max stays -inf. row_max and row_sum are the running max and sum
    of exp2 in the log2 domain (qk_scale includes log2(e)); acc is the unnormalised output; all fp32.
    K/V tiles are converted to q's dtype after the load, so the cache may be narrower (FP8) than q.
    A key's cache slot comes from block_table[position // BLOCK_SIZE], so tiles need not align with blocks.
    """
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    for tile in range(tile_lo, tile_hi):
        offs_n = tile * TILE_N + tl.arange(0, TILE_N)
        n_mask = offs_n < seq_len
        physical_block = tl.load(block_table_ptr + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        slot = physical_block * stride_cache_block + (offs_n % BLOCK_SIZE) * stride_cache_slot \
            + kv_head * stride_cache_head
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + slot[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + slot[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        # to q's dtype: fp32 where the bf16 tiles are upcast, and the query dtype from an FP8 cache
        k = k.to(q.dtype)
        v = v.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        visible = n_mask[None, :] & (offs_n[None, :] <= key_limit[:, None])
        s = tl.where(visible, s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        alpha = tl.exp2(row_max - new_max)
        p = tl.exp2(s - new_max[:, None])
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max
    return row_max, row_sum, acc
