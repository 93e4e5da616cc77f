"""Writing new keys and values into the paged cache, in plain torch (reference of the Triton kernel)."""

import torch

from qasr.kernels.kv_cache_dtype import is_fp8, to_cache_dtype


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """key/value [num_tokens, kv_heads, head_dim] into caches [num_blocks, block_size, kv_heads, head_dim],
    converted to the cache dtype (FP8 saturates, see kernels.kv_cache_dtype)."""
    slots = slot_mapping
    # padding rows (a CUDA graph's) are skipped, as the kernel does; looked for first, as masking every step costs a
    # one-sequence CPU decode step some 4%
    if len(slot_mapping) and int(slot_mapping.min()) < 0:
        keep = slot_mapping >= 0
        slots, key, value = slot_mapping[keep], key[keep], value[keep]
    for rows, cache in ((key, k_cache), (value, v_cache)):
        rows = to_cache_dtype(rows, cache.dtype)
        if is_fp8(cache.dtype):  # index_copy_ has no FP8 kernel on the CPU: copy the bytes
            rows, cache = rows.view(torch.uint8), cache.view(torch.uint8)
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, rows)
