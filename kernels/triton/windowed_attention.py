"""Triton bidirectional attention inside packed variable-length windows (the audio encoder's attention).

Grid (windows, heads, q-blocks of the longest window): a program loads BLOCK_M queries of one window and
runs an online softmax over that window's keys only; blocks past a shorter window's end exit at once.
"""

import math
from functools import lru_cache
from itertools import accumulate

import torch
import triton
import triton.language as tl

from qasr.kernels.attention_metadata import padded_head_dim
from qasr.kernels.triton.utils import check_last_dim_contiguous, dot_precision, upcast_tiles

BLOCK_M = 64
TILE_N = 64


@triton.jit
def _window_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, cu_window_ptr, qk_scale, stride_qt, stride_qh, stride_kt, stride_kh,
        stride_vt, stride_vh, stride_ot, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, TILE_N: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    window = tl.program_id(0)
    head = tl.program_id(1)
    first_query = tl.program_id(2) * BLOCK_M
    start = tl.load(cu_window_ptr + window)
    length = tl.load(cu_window_ptr + window + 1) - start
    if first_query >= length:
        return
    rows = first_query + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q_mask = (rows < length)[:, None] & d_mask[None, :]
    q_token = (start + rows).to(tl.int64)
    q = tl.load(q_ptr + q_token[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for key_start in range(0, length, TILE_N):
        keys = key_start + tl.arange(0, TILE_N)
        n_mask = keys < length
        kv_token = (start + keys).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + kv_token[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=kv_mask,
                    other=0.0)
        v = tl.load(v_ptr + kv_token[:, None] * stride_vt + head * stride_vh + offs_d[None, :], mask=kv_mask,
                    other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        alpha = tl.exp2(row_max - new_max)
        p = tl.exp2(s - new_max[:, None])
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(out_ptr + q_token[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=q_mask)


@lru_cache(maxsize=8)
def _window_starts(window_lens: tuple[int, ...], device: torch.device) -> torch.Tensor:
    # every encoder layer of one forward passes the same windows: copy them to the device once, without
    # making the host wait for the device (a pageable copy would)
    starts = torch.tensor([0, *accumulate(window_lens)], dtype=torch.int32)
    if device.type == "cuda":
        return starts.pin_memory().to(device, non_blocking=True)
    return starts


def windowed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window_lens: list[int],
                       scale: float, starts: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional attention inside consecutive windows of packed tokens [num_tokens, heads, head_dim].

    `starts`: the windows' bounds on the device ([windows + 1] int32, window_lens' running sum), where a CUDA graph
    keeps them in a buffer of its own; then the windows may end before the tokens (padding, left unwritten) and
    some be empty, and the launch depends on window_lens only through its length and its longest window."""
    num_tokens, num_heads, head_dim = query.shape
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    covered = sum(window_lens)
    if covered > num_tokens or (starts is None and covered != num_tokens):
        raise ValueError(f"windows cover {covered} tokens, the input has {num_tokens}")
    if starts is not None and starts.shape != (len(window_lens) + 1,):
        raise ValueError(f"starts holds {starts.shape[0]} bounds, {len(window_lens)} windows need one more")
    check_last_dim_contiguous(query, key, value)
    upcast = upcast_tiles(query.dtype)
    grid = (len(window_lens), num_heads, triton.cdiv(max(window_lens), BLOCK_M))
    _window_attention_kernel[grid](
        q_ptr=query, k_ptr=key, v_ptr=value, out_ptr=out,
        cu_window_ptr=_window_starts(tuple(window_lens), query.device) if starts is None else starts,
        qk_scale=scale * math.log2(math.e),
        stride_qt=query.stride(0), stride_qh=query.stride(1), stride_kt=key.stride(0), stride_kh=key.stride(1),
        stride_vt=value.stride(0), stride_vh=value.stride(1), stride_ot=out.stride(0), stride_oh=out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), BLOCK_M=BLOCK_M, TILE_N=TILE_N, UPCAST=upcast,
        DOT_PRECISION=dot_precision(query.dtype, upcast),
    )
    return out
