"""Triton fused RMSNorm kernels: residual add + RMSNorm, and per-head q/k RMSNorm + NeoX RoPE (alone, or with the
normed k and v stored into the KV cache in the same launch).

Arithmetic is fp32, rounded to the activation dtype wherever the torch reference (kernels/reference/norms.py) rounds,
so both backends agree to fp rounding.
"""

import torch
import triton
import triton.language as tl

from qasr.kernels.kv_cache_dtype import is_fp8
from qasr.kernels.triton.kv_store import round_to_e4m3, store_heads
from qasr.kernels.triton.utils import check_last_dim_contiguous


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """Round fp32 x to DTYPE and back, where the reference stores an intermediate in the activation dtype."""
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def _add_rms_norm_kernel(x_ptr, residual_ptr, out_ptr, residual_out_ptr, weight_ptr, eps, stride_x, stride_r,
                         stride_o, stride_ro, HIDDEN: tl.constexpr, BLOCK: tl.constexpr,
                         HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x = _round(tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32) + x, dtype)
        tl.store(residual_out_ptr + row * stride_ro + offs, x.to(dtype), mask=mask)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / HIDDEN + eps)
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (weight * _round(x * rstd, dtype)).to(dtype), mask=mask)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(residual + x), residual + x) for x [tokens, hidden]; no residual: x is the residual."""
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)
    check_last_dim_contiguous(x2)
    out = torch.empty_like(x2)
    # the first layer has no residual yet: x itself becomes it, and the kernel writes no copy
    residual_in = x2 if residual is None else residual.reshape(-1, hidden)
    residual_out = x2 if residual is None else torch.empty_like(x2)
    check_last_dim_contiguous(residual_in)
    if x2.shape[0]:
        block = triton.next_power_of_2(hidden)
        _add_rms_norm_kernel[(x2.shape[0],)](
            x_ptr=x2, residual_ptr=residual_in, out_ptr=out, residual_out_ptr=residual_out, weight_ptr=weight, eps=eps,
            stride_x=x2.stride(0), stride_r=residual_in.stride(0), stride_o=out.stride(0),
            stride_ro=residual_out.stride(0), HIDDEN=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None,
            num_warps=min(16, max(1, block // 256)),
        )
    return out.view(x.shape), residual_out.view(x.shape)


@triton.jit
def _norm_rope_heads(src_ptr, dst_ptr, weight_ptr, cos_ptr, sin_ptr, eps, stride_src_head, stride_dst_head,
                     NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                     FP8: tl.constexpr):
    """RMSNorm + RoPE of all NUM_HEADS heads of one token, a [BLOCK_H, BLOCK_D] tile, in the source's dtype; into
    an FP8 cache rounded to e4m3 as store_kv rounds."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    offs = tl.arange(0, BLOCK_D)
    mask = (heads < NUM_HEADS) & (offs < HEAD_DIM)[None, :]
    half: tl.constexpr = HEAD_DIM // 2
    first_half = offs < half
    partner = tl.where(first_half, offs + half, offs - half)  # rotate_half reads the other half
    dtype = src_ptr.dtype.element_ty
    src = src_ptr + heads * stride_src_head
    x = tl.load(src + offs[None, :], mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(src + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)[:, None]
    weight = tl.load(weight_ptr + offs, mask=offs < HEAD_DIM, other=0.0).to(tl.float32)[None, :]
    weight_partner = tl.load(weight_ptr + partner, mask=offs < HEAD_DIM, other=0.0).to(tl.float32)[None, :]
    normed = _round(weight * _round(x * rstd, dtype), dtype)
    normed_partner = _round(weight_partner * _round(x_partner * rstd, dtype), dtype)
    rotated = tl.where(first_half[None, :], -normed_partner, normed_partner)
    cos = _round(tl.load(cos_ptr + offs, mask=offs < HEAD_DIM, other=0.0), dtype)[None, :]
    sin = _round(tl.load(sin_ptr + offs, mask=offs < HEAD_DIM, other=0.0), dtype)[None, :]
    out = (_round(normed * cos, dtype) + _round(rotated * sin, dtype)).to(dtype)
    if FP8:
        out = round_to_e4m3(out.to(tl.float32))
    tl.store(dst_ptr + heads * stride_dst_head + offs[None, :], out.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(q_ptr, k_ptr, q_out_ptr, k_out_ptr, q_weight_ptr, k_weight_ptr, positions_ptr, cos_ptr,
                         sin_ptr, eps, stride_qt, stride_qh, stride_kt, stride_kh, stride_qot, stride_qoh,
                         stride_kot, stride_koh, stride_rope, NUM_Q_HEADS: tl.constexpr,
                         NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_HQ: tl.constexpr,
                         BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token)
    cos_row = cos_ptr + position * stride_rope
    sin_row = sin_ptr + position * stride_rope
    if tl.program_id(1) == 0:
        _norm_rope_heads(q_ptr + token * stride_qt, q_out_ptr + token * stride_qot, q_weight_ptr, cos_row, sin_row,
                         eps, stride_qh, stride_qoh, NUM_Q_HEADS, HEAD_DIM, BLOCK_HQ, BLOCK_D, False)
    else:
        _norm_rope_heads(k_ptr + token * stride_kt, k_out_ptr + token * stride_kot, k_weight_ptr, cos_row, sin_row,
                         eps, stride_kh, stride_koh, NUM_KV_HEADS, HEAD_DIM, BLOCK_HK, BLOCK_D, False)


@triton.jit
def _qk_norm_rope_store_kernel(q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
                               q_weight_ptr, k_weight_ptr, positions_ptr, cos_ptr, sin_ptr, eps, stride_qt,
                               stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_qot, stride_qoh,
                               stride_cache_block, stride_cache_slot, stride_cache_head, stride_rope,
                               NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                               BLOCK_SIZE: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                               BLOCK_D: tl.constexpr, FP8: tl.constexpr):
    """_qk_norm_rope_kernel whose k program writes k, and copies v, into the token's cache slot (_store_kv_kernel)."""
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token)
    cos_row = cos_ptr + position * stride_rope
    sin_row = sin_ptr + position * stride_rope
    if tl.program_id(1) == 0:
        _norm_rope_heads(q_ptr + token * stride_qt, q_out_ptr + token * stride_qot, q_weight_ptr, cos_row, sin_row,
                         eps, stride_qh, stride_qoh, NUM_Q_HEADS, HEAD_DIM, BLOCK_HQ, BLOCK_D, False)
    else:
        slot = tl.load(slot_mapping_ptr + token)
        if slot >= 0:  # else padding: nothing to store
            dst = (slot // BLOCK_SIZE) * stride_cache_block + (slot % BLOCK_SIZE) * stride_cache_slot
            _norm_rope_heads(k_ptr + token * stride_kt, k_cache_ptr + dst, k_weight_ptr, cos_row, sin_row, eps,
                             stride_kh, stride_cache_head, NUM_KV_HEADS, HEAD_DIM, BLOCK_HK, BLOCK_D, FP8)
            store_heads(v_ptr + token * stride_vt, v_cache_ptr + dst, stride_vh, stride_cache_head, NUM_KV_HEADS,
                        HEAD_DIM, BLOCK_HK, BLOCK_D, FP8)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, q_weight: torch.Tensor,
                 k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                 sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q [tokens, heads, dim] and k [tokens, kv_heads, dim], then RoPE at `positions`.

    Grid (tokens, 2): one program for a token's q heads, one for its k heads. q and k may be strided views
    of a fused qkv projection; the results are new contiguous tensors.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    check_last_dim_contiguous(q, k, cos_cache, sin_cache)
    if cos_cache.stride() != sin_cache.stride():
        raise ValueError("cos_cache and sin_cache must have the same layout")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens:
        _qk_norm_rope_kernel[(num_tokens, 2)](
            q_ptr=q, k_ptr=k, q_out_ptr=q_out, k_out_ptr=k_out, q_weight_ptr=q_weight, k_weight_ptr=k_weight,
            positions_ptr=positions, cos_ptr=cos_cache, sin_ptr=sin_cache, eps=eps, stride_qt=q.stride(0),
            stride_qh=q.stride(1), stride_kt=k.stride(0), stride_kh=k.stride(1), stride_qot=q_out.stride(0),
            stride_qoh=q_out.stride(1), stride_kot=k_out.stride(0), stride_koh=k_out.stride(1),
            stride_rope=cos_cache.stride(0), NUM_Q_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
            BLOCK_HQ=triton.next_power_of_2(num_heads), BLOCK_HK=triton.next_power_of_2(num_kv_heads),
            BLOCK_D=triton.next_power_of_2(head_dim),
        )
    return q_out, k_out


def qk_norm_rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                       q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                       sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> torch.Tensor:
    """qk_norm_rope, then store_kv of the normed k and of v, in one launch: returns q; k goes only to the cache,
    where attention reads it."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    check_last_dim_contiguous(q, k, v, cos_cache, sin_cache, k_cache)
    if cos_cache.stride() != sin_cache.stride():
        raise ValueError("cos_cache and sin_cache must have the same layout")
    if k_cache.stride() != v_cache.stride() or k_cache.dtype != v_cache.dtype:
        raise ValueError("k_cache and v_cache must have the same layout and dtype")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens:
        _qk_norm_rope_store_kernel[(num_tokens, 2)](
            q_ptr=q, k_ptr=k, v_ptr=v, q_out_ptr=q_out, k_cache_ptr=k_cache, v_cache_ptr=v_cache,
            slot_mapping_ptr=slot_mapping, q_weight_ptr=q_weight, k_weight_ptr=k_weight, positions_ptr=positions,
            cos_ptr=cos_cache, sin_ptr=sin_cache, eps=eps, stride_qt=q.stride(0), stride_qh=q.stride(1),
            stride_kt=k.stride(0), stride_kh=k.stride(1), stride_vt=v.stride(0), stride_vh=v.stride(1),
            stride_qot=q_out.stride(0), stride_qoh=q_out.stride(1), stride_cache_block=k_cache.stride(0),
            stride_cache_slot=k_cache.stride(1), stride_cache_head=k_cache.stride(2), stride_rope=cos_cache.stride(0),
            NUM_Q_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
            BLOCK_HQ=triton.next_power_of_2(num_heads), BLOCK_HK=triton.next_power_of_2(num_kv_heads),
            BLOCK_D=triton.next_power_of_2(head_dim), FP8=is_fp8(k_cache.dtype),
        )
    return q_out
