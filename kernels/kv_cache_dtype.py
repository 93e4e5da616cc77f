"""The KV cache's storage dtype: the model dtype, or FP8 e4m3 at half the bytes per block.

FP8 values are stored unscaled, i.e. with a per-tensor scale of 1.0 (vLLM's default when a checkpoint has no
calibrated k/v scales): K and V are rounded to the nearest e4m3 value (ties to even) and saturate at ±448
instead of overflowing to NaN. Qwen3's keys are RMS-normalised (k_norm) and its values are projections of a
normalised hidden state, so they normally sit far inside that range and the cost of FP8 is its 3-bit mantissa
(relative error up to 2^-4). That bound holds only above 2^-6: smaller magnitudes fall into e4m3's subnormals
(a fixed step of 2^-9), where a per-layer scale that lifts them would add precision. No scale is applied yet:
how much of a real checkpoint's K/V lies below 2^-6 is still to be measured on the real weights.
Attention reads FP8 tiles and converts them to the query dtype before any arithmetic (to fp16 with the attention
tuning's fp8_dot_fp16, kernels/triton/tuning.py).
"""

import torch

FP8_DTYPE: torch.dtype | None = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """"auto" is the model dtype; "fp8" is torch.float8_e4m3fn."""
    if name == "auto":
        return model_dtype
    if name != "fp8":
        raise ValueError(f"unknown kv_cache_dtype {name!r}; choose 'auto' or 'fp8'")
    if FP8_DTYPE is None:
        raise ValueError(f"kv_cache_dtype='fp8' needs torch.float8_e4m3fn, which torch {torch.__version__} lacks; "
                         "upgrade torch or use kv_cache_dtype='auto'")
    return FP8_DTYPE


def is_fp8(dtype: torch.dtype) -> bool:
    return FP8_DTYPE is not None and dtype == FP8_DTYPE


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as stored in a cache of `dtype`: FP8 saturates at ±448, as the Triton KV store does."""
    if is_fp8(dtype):
        return x.float().clamp(-FP8_MAX, FP8_MAX).to(dtype)
    return x.to(dtype)
