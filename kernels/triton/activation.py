"""Triton SiLU-and-mul: silu(gate) * up for gate_up [tokens, 2 * intermediate], as the torch reference rounds."""

import torch
import triton
import triton.language as tl

from qasr.kernels.triton.utils import check_last_dim_contiguous

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(gate_up_ptr, out_ptr, stride_in, stride_out, INTERMEDIATE: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTERMEDIATE
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(gate_up_ptr + row * stride_in + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + INTERMEDIATE + offs, mask=mask, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, (silu * up).to(dtype), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    intermediate = gate_up.shape[-1] // 2
    x = gate_up.reshape(-1, 2 * intermediate)
    check_last_dim_contiguous(x)
    out = torch.empty(x.shape[0], intermediate, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        block = min(BLOCK, triton.next_power_of_2(intermediate))
        _silu_and_mul_kernel[(x.shape[0], triton.cdiv(intermediate, block))](
            gate_up_ptr=x, out_ptr=out, stride_in=x.stride(0), stride_out=out.stride(0), INTERMEDIATE=intermediate,
            BLOCK=block,
        )
    return out.view(*gate_up.shape[:-1], intermediate)
