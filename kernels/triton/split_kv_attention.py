"""Split-KV ("flash-decoding") paged attention for small pure-decode batches.

Grid (sequences, kv_heads, segments): each program attends its sequence's single query (all query heads
of one KV head, GQA-packed) over one contiguous segment of the keys and writes the unnormalised partial
output with its row max and exp-sum. A reduce kernel, grid (sequences, query heads), rescales and sums the
segments. Segments past the end of a short sequence exit at once and the reduce ignores them.
"""

import math

import torch
import triton
import triton.language as tl

from qasr.kernels.attention_metadata import AttentionMetadata, SplitKVWorkspace, padded_head_dim
from qasr.kernels.triton.attention_tiles import attend_kv_tiles
from qasr.kernels.triton.tuning import current_tuning
from qasr.kernels.triton.utils import dot_precision, fp16_dots, upcast_tiles

MIN_BLOCK_M = 16  # tl.dot needs 16 rows even when a KV head serves fewer query heads


@triton.jit(do_not_specialize=["stride_table"])
def _segment_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
        segment_out_ptr, segment_max_ptr, segment_expsum_ptr, qk_scale, stride_qt, stride_qh, stride_table,
        stride_cache_block, stride_cache_slot, stride_cache_head, NUM_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, QUERIES_PER_KV: tl.constexpr, BLOCK_M: tl.constexpr,
        SEGMENTS: tl.constexpr, TILE_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, UPCAST: tl.constexpr,
        FP16_DOTS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    segment = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    num_tiles = tl.cdiv(seq_len, TILE_N)
    tiles_per_segment = tl.cdiv(num_tiles, SEGMENTS)
    tile_lo = segment * tiles_per_segment
    if tile_lo >= num_tiles:
        return
    tile_hi = tl.minimum(tile_lo + tiles_per_segment, num_tiles)

    token = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    head = kv_head * QUERIES_PER_KV + rows
    row_mask = rows < QUERIES_PER_KV
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + token * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_mask[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if FP16_DOTS:  # the tiles follow q's dtype (attend_kv_tiles)
        q = q.to(tl.float16)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    key_limit = tl.full([BLOCK_M], 0, tl.int32) + seq_len - 1  # a decode query sees every key
    row_max, row_sum, acc = attend_kv_tiles(
        q=q, row_max=row_max, row_sum=row_sum, acc=acc, k_cache_ptr=k_cache_ptr, v_cache_ptr=v_cache_ptr,
        block_table_ptr=block_tables_ptr + seq * stride_table, kv_head=kv_head, tile_lo=tile_lo, tile_hi=tile_hi,
        seq_len=seq_len, key_limit=key_limit, qk_scale=qk_scale, stride_cache_block=stride_cache_block,
        stride_cache_slot=stride_cache_slot, stride_cache_head=stride_cache_head, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D,
        BLOCK_SIZE=BLOCK_SIZE, TILE_N=TILE_N, DOT_PRECISION=DOT_PRECISION)

    partial = (seq * NUM_HEADS + head) * SEGMENTS + segment  # [BLOCK_M] row of the workspace
    tl.store(segment_out_ptr + partial[:, None] * BLOCK_D + offs_d[None, :], acc, mask=row_mask[:, None])
    tl.store(segment_max_ptr + partial, row_max, mask=row_mask)
    tl.store(segment_expsum_ptr + partial, row_sum, mask=row_mask)


@triton.jit
def _reduce_segments_kernel(
        out_ptr, seq_lens_ptr, query_start_loc_ptr, segment_out_ptr, segment_max_ptr, segment_expsum_ptr,
        stride_ot, stride_oh, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        SEGMENTS: tl.constexpr, TILE_N: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    num_tiles = tl.cdiv(tl.load(seq_lens_ptr + seq), TILE_N)
    used_segments = tl.cdiv(num_tiles, tl.maximum(tl.cdiv(num_tiles, SEGMENTS), 1))
    segments = tl.arange(0, SEGMENTS)
    used = segments < used_segments
    partial = (seq * NUM_HEADS + head) * SEGMENTS + segments
    seg_max = tl.load(segment_max_ptr + partial, mask=used, other=float("-inf"))
    weight = tl.where(used, tl.exp2(seg_max - tl.max(seg_max, axis=0)), 0.0)
    expsum = tl.sum(weight * tl.load(segment_expsum_ptr + partial, mask=used, other=0.0), axis=0)
    offs_d = tl.arange(0, BLOCK_D)
    seg_out = tl.load(segment_out_ptr + partial[:, None] * BLOCK_D + offs_d[None, :], mask=used[:, None],
                      other=0.0)
    out = tl.sum(seg_out * weight[:, None], axis=0) / expsum
    token = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


def split_kv_decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Decode attention (one query per sequence) over the paged cache, keys split into segments."""
    if not meta.is_pure_decode:
        raise ValueError("split-KV attention takes pure decode batches only (one query per sequence)")
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    queries_per_kv = num_heads // num_kv_heads
    block_d = padded_head_dim(head_dim)
    workspace = meta.split_kv_workspace
    if workspace is None or not workspace.fits(meta.num_seqs, num_heads, block_d):
        workspace = SplitKVWorkspace.allocate(meta.num_seqs, num_heads, block_d, query.device)
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    upcast = upcast_tiles(query.dtype)
    tuning = current_tuning()
    fp16 = fp16_dots(k_cache.dtype, tuning.fp8_dot_fp16)
    _segment_kernel[(meta.num_seqs, num_kv_heads, workspace.segments)](
        q_ptr=query, k_cache_ptr=k_cache, v_cache_ptr=v_cache, block_tables_ptr=meta.block_tables,
        seq_lens_ptr=meta.seq_lens, query_start_loc_ptr=meta.query_start_loc, segment_out_ptr=workspace.out,
        segment_max_ptr=workspace.max, segment_expsum_ptr=workspace.expsum, qk_scale=scale * math.log2(math.e),
        stride_qt=query.stride(0), stride_qh=query.stride(1), stride_table=meta.block_tables.stride(0),
        stride_cache_block=k_cache.stride(0), stride_cache_slot=k_cache.stride(1), stride_cache_head=k_cache.stride(2),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, QUERIES_PER_KV=queries_per_kv,
        BLOCK_M=max(MIN_BLOCK_M, triton.next_power_of_2(queries_per_kv)), SEGMENTS=workspace.segments,
        TILE_N=tuning.split_tile_n, BLOCK_SIZE=k_cache.shape[1], UPCAST=upcast, FP16_DOTS=fp16,
        DOT_PRECISION=dot_precision(query.dtype, upcast, fp16), **tuning.split().compile_options(),
    )
    _reduce_segments_kernel[(meta.num_seqs, num_heads)](
        out_ptr=out, seq_lens_ptr=meta.seq_lens, query_start_loc_ptr=meta.query_start_loc,
        segment_out_ptr=workspace.out, segment_max_ptr=workspace.max, segment_expsum_ptr=workspace.expsum,
        stride_ot=out.stride(0), stride_oh=out.stride(1), NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        SEGMENTS=workspace.segments, TILE_N=tuning.split_tile_n,  # the segment kernel's, to find its segments
    )
    return out
