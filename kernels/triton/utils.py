import torch
import triton

from qasr.kernels.kv_cache_dtype import is_fp8


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1 was set: kernels then run on the CPU through numpy."""
    return bool(triton.knobs.runtime.interpret)


def upcast_tiles(dtype: torch.dtype) -> bool:
    """Whether kernels must convert loaded bf16 tiles to fp32 before any arithmetic.

    The interpreter computes bf16 arithmetic and bf16 tl.dot on raw bit patterns (triton #11584); a GPU does not.
    """
    return dtype == torch.bfloat16 and interpreting()


def fp16_dots(cache_dtype: torch.dtype, fp8_dot_fp16: int) -> bool:
    """Whether attention over a cache of `cache_dtype` takes its dot products in fp16 (tuning.fp8_dot_fp16)."""
    return bool(fp8_dot_fp16) and is_fp8(cache_dtype)


def dot_precision(dtype: torch.dtype, upcast: bool, fp16_dots: bool = False) -> str:
    """fp32 operands must not be rounded to tf32 on the GPU; half-precision operands (fp16 dots included) ignore the
    setting."""
    return "ieee" if not fp16_dots and (upcast or dtype == torch.float32) else "tf32"


def check_last_dim_contiguous(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.stride(-1) != 1:
            raise ValueError(f"the last dimension must be contiguous, got strides {t.stride()}")
