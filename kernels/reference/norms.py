"""RMSNorm, fused add+RMSNorm and q/k norm+RoPE in plain torch: the CPU path and the reference of the Triton
kernels of the same names.

They reproduce transformers' Qwen3 step by step, including where it rounds to the activation dtype.
"""

import torch

from qasr.kernels.reference.kv_store import store_kv


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(residual + x), residual + x); with no residual yet (first layer) x is the residual."""
    residual = x if residual is None else residual + x
    return rms_norm(residual, weight, eps), residual


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX (rotate-half) RoPE of x [tokens, heads, head_dim] with cos/sin [tokens, 1, head_dim] in x's dtype."""
    return x * cos + rotate_half(x) * sin


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, q_weight: torch.Tensor,
                 k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                 sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q [tokens, heads, dim] and k [tokens, kv_heads, dim], then RoPE at `positions`.

    cos_cache/sin_cache: float32 [max_positions, head_dim], cast to the activation dtype as the reference does.
    """
    # q's heads and k's in one tensor: each head gets the same arithmetic as apart, in half the calls (a decode step
    # on the CPU is mostly the calls' own cost)
    num_heads = q.shape[1]
    qk = torch.cat([q, k], dim=1)
    weight = torch.cat([q_weight.expand(num_heads, -1), k_weight.expand(k.shape[1], -1)])
    cos = cos_cache.index_select(0, positions).to(q.dtype).unsqueeze(1)  # index_select: half of [positions]'s cost
    sin = sin_cache.index_select(0, positions).to(q.dtype).unsqueeze(1)
    qk = apply_rope(rms_norm(qk, weight, eps), cos, sin)
    return qk[:, :num_heads], qk[:, num_heads:]


def qk_norm_rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                       q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                       sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> torch.Tensor:
    """qk_norm_rope, then store_kv of the normed k and of v: returns q (the Triton backend does both in one
    launch)."""
    q, k = qk_norm_rope(q, k, positions, q_weight, k_weight, eps, cos_cache, sin_cache)
    store_kv(k, v, k_cache, v_cache, slot_mapping)
    return q
