"""Triton paged attention for the decoder: one launch over a batch mixing decode, chunked and fresh prefill.

Grid (q-blocks, kv_heads). A q-block is BLOCK_Q consecutive query tokens of one sequence times the
QUERIES_PER_KV query heads sharing one KV head, packed into BLOCK_M rows, so every K/V tile is read once
per KV head (GQA packing). The number of q-blocks is bounded by num_tokens // BLOCK_Q + num_seqs without
looking at the query lengths on the host; a program finds its sequence by binary search and exits if its
block lies past the sequence's queries. Small pure-decode batches go to the split-KV kernels instead. A step that
mixes many decodes with prefill chunks attends its leading decodes in a launch of their own, with the decode
settings (a decode in the prefill launch fills 2 of a 64-row block), and the chunks in a second launch. A CUDA graph
of such steps (engine/mixed_graphs.py) is replayed whatever its number of decodes, so there the two launches read
that number from the device (`num_decodes_device`), each grid sized for the most it can be, and the programs with no
sequence of their part exit at once.
"""

import math
from functools import partial

import torch
import triton
import triton.language as tl

from qasr.kernels.attention_metadata import AttentionMetadata, padded_head_dim, split_kv_max_seqs
from qasr.kernels.kv_cache_dtype import is_fp8
from qasr.kernels.triton.attention_tiles import attend_kv_tiles, find_seq_idx
from qasr.kernels.triton.split_kv_attention import split_kv_decode_attention
from qasr.kernels.triton.tuning import LaunchSettings, current_tuning
from qasr.kernels.triton.utils import check_last_dim_contiguous, dot_precision, fp16_dots, upcast_tiles

DECODE_BLOCK_M, PREFILL_BLOCK_M = 16, 64
# which of the step's sequences a launch attends (SEQ_RANGE): those the host names (first_seq, num_seqs), or, in a
# graph's launches, its leading decodes or the sequences after them, as num_decodes_device says: the decodes count
# as such only from min_decodes on (fewer ride in the chunks' launch). The kernel compares these strings.
HOST_RANGE, DEVICE_DECODES, DEVICE_CHUNKS = "host", "device decodes", "device chunks"


# num_seqs and the block-table width change every step; specialised (1, multiple of 16) they would each
# trigger a compile mid-serving
@triton.jit(do_not_specialize=["first_seq", "num_seqs", "q_block_offset", "min_decodes", "stride_table"])
def _unified_attention_kernel(
        q_ptr, out_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
        num_decodes_ptr, first_seq, num_seqs, q_block_offset, min_decodes, qk_scale, stride_qt, stride_qh,
        stride_ot, stride_oh, stride_table, stride_cache_block, stride_cache_slot, stride_cache_head,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, QUERIES_PER_KV: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_Q: tl.constexpr, TILE_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, UPCAST: tl.constexpr,
        FP16_DOTS: tl.constexpr, DOT_PRECISION: tl.constexpr, SEQ_RANGE: tl.constexpr):
    if SEQ_RANGE != "host":  # the grid covers the most decodes (or the whole step); the decodes' number comes here
        decodes = tl.load(num_decodes_ptr)
        decodes = tl.where(decodes >= min_decodes, decodes, 0)
        if SEQ_RANGE == "device decodes":
            num_seqs = decodes
        else:  # as the host would launch the chunks after `decodes` one-token sequences
            first_seq = decodes
            num_seqs -= decodes
            q_block_offset = decodes // BLOCK_Q
        if num_seqs == 0:
            return
    # the sequences from first_seq on (offset here: a sliced tensor's pointer could lose the 16-byte alignment the
    # kernel was compiled for, and a new compile would stall the step)
    query_start_loc_ptr += first_seq
    seq_lens_ptr += first_seq
    block_tables_ptr += first_seq.to(tl.int64) * stride_table
    q_block = tl.program_id(0) + q_block_offset
    kv_head = tl.program_id(1)
    seq = find_seq_idx(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    first_query = (q_block - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if first_query >= q_len:
        return
    context_len = tl.load(seq_lens_ptr + seq) - q_len

    rows = tl.arange(0, BLOCK_M)
    query = first_query + rows // QUERIES_PER_KV  # position among this step's queries of the sequence
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_mask = (rows < BLOCK_Q * QUERIES_PER_KV) & (query < q_len)
    token = (q_start + query).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :], mask=mask,
                other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if FP16_DOTS:  # the tiles follow q's dtype (attend_kv_tiles)
        q = q.to(tl.float16)

    # keys up to the last query of this block, which sees the context and every earlier query
    kv_end = context_len + tl.minimum(first_query + BLOCK_Q, q_len)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    block_table = block_tables_ptr + seq.to(tl.int64) * stride_table
    row_max, row_sum, acc = attend_kv_tiles(
        q=q, row_max=row_max, row_sum=row_sum, acc=acc, k_cache_ptr=k_cache_ptr, v_cache_ptr=v_cache_ptr,
        block_table_ptr=block_table, kv_head=kv_head, tile_lo=0, tile_hi=tl.cdiv(kv_end, TILE_N), seq_len=kv_end,
        key_limit=context_len + query, qk_scale=qk_scale, stride_cache_block=stride_cache_block,
        stride_cache_slot=stride_cache_slot, stride_cache_head=stride_cache_head, HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D,
        BLOCK_SIZE=BLOCK_SIZE, TILE_N=TILE_N, DOT_PRECISION=DOT_PRECISION)
    out = acc / row_sum[:, None]
    tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


def use_split_kv(meta: AttentionMetadata, num_kv_heads: int) -> bool:
    """Pure decode with too few (sequence, KV head) programs to fill the GPU."""
    return meta.is_pure_decode and meta.num_seqs <= split_kv_max_seqs(num_kv_heads)


def unified_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                      scale: float, split_kv: bool | None = None, block_m: int | None = None) -> torch.Tensor:
    """Causal attention of query [num_tokens, heads, head_dim] over each sequence's paged cache.

    split_kv and block_m override the heuristics (tests use them to reach every path).
    """
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not share {num_kv_heads} KV heads evenly")
    if k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have the same layout")
    check_last_dim_contiguous(query, k_cache)
    if split_kv is None:
        split_kv = use_split_kv(meta, num_kv_heads)
    if split_kv:
        return split_kv_decode_attention(query, k_cache, v_cache, meta, scale)
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    tuning = current_tuning()
    queries_per_kv = num_heads // num_kv_heads
    launch = partial(_launch_2d, query, out, k_cache, v_cache, meta, scale)
    fp8_cache = is_fp8(k_cache.dtype)
    decode_settings = tuning.decode(fp8_cache)
    if meta.is_pure_decode:
        launch(0, meta.num_seqs, num_tokens, block_m or default_block_m(1, queries_per_kv), decode_settings)
        return out
    min_decodes = tuning.decode_launch_min_seqs_for(fp8_cache)
    most_decodes = min(num_tokens, meta.num_seqs)
    # a graph's step, if it can have enough decodes beside a chunk: else its decodes launch would only ever exit,
    # a few microseconds a layer for nothing (with 256 sequences at most and bf16's 256, every such graph)
    if meta.num_decodes_device is not None and block_m is None and 0 < min_decodes < most_decodes:
        launch(0, most_decodes, most_decodes, default_block_m(1, queries_per_kv), decode_settings,
               seq_range=DEVICE_DECODES, min_decodes=min_decodes)
        launch(0, meta.num_seqs, num_tokens, default_block_m(meta.max_query_len, queries_per_kv), tuning.prefill(),
               seq_range=DEVICE_CHUNKS, min_decodes=min_decodes)
        return out
    decodes = meta.num_decodes if block_m is None and 0 < min_decodes <= meta.num_decodes else 0
    if decodes:
        launch(0, decodes, decodes, default_block_m(1, queries_per_kv), decode_settings)
    launch(decodes, meta.num_seqs, num_tokens, block_m or default_block_m(meta.max_query_len, queries_per_kv),
           tuning.prefill())
    return out


def default_block_m(max_query_len: int, queries_per_kv: int) -> int:
    return DECODE_BLOCK_M if max_query_len * queries_per_kv <= DECODE_BLOCK_M else PREFILL_BLOCK_M


def _launch_2d(query: torch.Tensor, out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float, first_seq: int, end_seq: int, end_token: int, block_m: int,
               settings: LaunchSettings, seq_range: str = HOST_RANGE, min_decodes: int = 0) -> None:
    """The 2D kernel over sequences [first_seq, end_seq) of the step, whose tokens end at end_token: it writes
    their rows of `out`. The sequences before first_seq are decodes, one token each, so first_seq is also the
    first token. With a device range (DEVICE_DECODES, DEVICE_CHUNKS) the bounds are the most that range can span,
    and the kernel narrows them to meta.num_decodes_device's."""
    assert seq_range in (HOST_RANGE, DEVICE_DECODES, DEVICE_CHUNKS), seq_range  # the kernel compares strings
    num_heads, head_dim = query.shape[1:]
    num_kv_heads = k_cache.shape[2]
    queries_per_kv = num_heads // num_kv_heads
    block_m = max(block_m, triton.next_power_of_2(queries_per_kv))
    block_q = block_m // queries_per_kv
    num_seqs = end_seq - first_seq
    # the kernel numbers the sequences from first_seq, and query_start_loc keeps the step's token numbering:
    # sequence first_seq + i owns the q-blocks from query_start_loc[first_seq + i] // block_q + i on, so the
    # programs start at first_seq's and run up to the last sequence's end
    q_block_offset = first_seq // block_q
    upcast = upcast_tiles(query.dtype)
    fp16 = fp16_dots(k_cache.dtype, current_tuning().fp8_dot_fp16)
    grid = (end_token // block_q + num_seqs - q_block_offset, num_kv_heads)
    num_decodes = meta.num_decodes_device
    _unified_attention_kernel[grid](
        q_ptr=query, out_ptr=out, k_cache_ptr=k_cache, v_cache_ptr=v_cache,
        block_tables_ptr=meta.block_tables, seq_lens_ptr=meta.seq_lens, query_start_loc_ptr=meta.query_start_loc,
        # a host range never reads it: any int32 tensor will do
        num_decodes_ptr=num_decodes if num_decodes is not None else meta.seq_lens,
        first_seq=first_seq, num_seqs=num_seqs, q_block_offset=q_block_offset, min_decodes=min_decodes,
        qk_scale=scale * math.log2(math.e), stride_qt=query.stride(0), stride_qh=query.stride(1),
        stride_ot=out.stride(0), stride_oh=out.stride(1), stride_table=meta.block_tables.stride(0),
        stride_cache_block=k_cache.stride(0), stride_cache_slot=k_cache.stride(1), stride_cache_head=k_cache.stride(2),
        HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), QUERIES_PER_KV=queries_per_kv, BLOCK_M=block_m,
        BLOCK_Q=block_q, TILE_N=settings.tile_n, BLOCK_SIZE=k_cache.shape[1], UPCAST=upcast, FP16_DOTS=fp16,
        DOT_PRECISION=dot_precision(query.dtype, upcast, fp16), SEQ_RANGE=seq_range, **settings.compile_options(),
    )
