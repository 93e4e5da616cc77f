"""Triton KV-cache store: one program per new token copies its K and V rows into the token's cache slot.

An FP8 cache gets the rows rounded to e4m3 and saturated at ±448 (kernels.kv_cache_dtype).
"""

import torch
import triton
import triton.language as tl

from qasr.kernels.kv_cache_dtype import is_fp8
from qasr.kernels.triton.utils import check_last_dim_contiguous


@triton.jit
def round_to_e4m3(x):
    """fp32 x rounded to the nearest e4m3 value (ties to even), saturated at ±448; still fp32.

    The GPU's fp32 -> e4m3 conversion rounds the same way, but the interpreter's truncates subnormals and
    rounds ties up, so the rounding is done here and the conversion that follows is exact on both.
    """
    x = tl.clamp(x, -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)  # kernels.kv_cache_dtype.FP8_MAX
    bits = x.to(tl.uint32, bitcast=True)
    # normal range: keep 3 of fp32's 23 mantissa bits
    normal = (((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) << 20).to(tl.float32, bitcast=True)
    # below 2^-6 e4m3 is subnormal, multiples of 2^-9: adding 1.5 * 2^23 rounds |x| * 512 to an integer
    magnitude = tl.abs(x)
    subnormal = ((magnitude * 512.0 + 12582912.0) - 12582912.0) / 512.0
    subnormal = (subnormal.to(tl.uint32, bitcast=True) | ((bits >> 31) << 31)).to(tl.float32, bitcast=True)
    return tl.where(magnitude < 0.015625, subnormal, normal)


@triton.jit
def store_heads(src_ptr, dst_ptr, stride_src_head, stride_dst_head, num_heads, HEAD_DIM: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr):
    """One token's rows of every head from src into a cache slot at dst (rounded to e4m3 first for an FP8 cache)."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < num_heads) & (dims < HEAD_DIM)
    rows = tl.load(src_ptr + heads * stride_src_head + dims, mask=mask)
    if FP8:
        rows = round_to_e4m3(rows.to(tl.float32))
    tl.store(dst_ptr + heads * stride_dst_head + dims, rows.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh, stride_cache_block, stride_cache_slot,
                     stride_cache_head, num_kv_heads, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    if slot < 0:  # padding: nothing to store
        return
    dst = (slot // BLOCK_SIZE) * stride_cache_block + (slot % BLOCK_SIZE) * stride_cache_slot
    store_heads(key_ptr + token * stride_kt, k_cache_ptr + dst, stride_kh, stride_cache_head, num_kv_heads, HEAD_DIM,
                BLOCK_H, BLOCK_D, FP8)
    store_heads(value_ptr + token * stride_vt, v_cache_ptr + dst, stride_vh, stride_cache_head, num_kv_heads,
                HEAD_DIM, BLOCK_H, BLOCK_D, FP8)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """key/value [num_tokens, kv_heads, head_dim] into caches [num_blocks, block_size, kv_heads, head_dim]."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    if k_cache.stride() != v_cache.stride() or k_cache.dtype != v_cache.dtype:
        raise ValueError("k_cache and v_cache must have the same layout and dtype")
    check_last_dim_contiguous(key, value, k_cache)
    _store_kv_kernel[(num_tokens,)](
        key_ptr=key, value_ptr=value, k_cache_ptr=k_cache, v_cache_ptr=v_cache, slot_mapping_ptr=slot_mapping,
        stride_kt=key.stride(0), stride_kh=key.stride(1), stride_vt=value.stride(0), stride_vh=value.stride(1),
        stride_cache_block=k_cache.stride(0), stride_cache_slot=k_cache.stride(1), stride_cache_head=k_cache.stride(2),
        num_kv_heads=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        FP8=is_fp8(k_cache.dtype),
    )
