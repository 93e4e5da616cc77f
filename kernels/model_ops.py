"""The model's swappable ops: every op with both a plain-torch and a Triton implementation. The model calls
them through a ModelOps and runs unchanged on either set."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qasr.kernels.attention_metadata import AttentionMetadata


@dataclass(frozen=True, slots=True)
class ModelOps:
    """Signatures are those of the torch versions in kernels/reference/."""

    name: str  # the attention_backend option that picks this set: "torch" or "triton"
    # store_kv and qk_norm_rope: the model runs them as one op, qk_norm_rope_store; they stay for the tests and
    # benchmarks that take them apart
    store_kv: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
    paged_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, float], torch.Tensor]
    windowed_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[int], float, torch.Tensor | None],
                                 torch.Tensor]
    add_rms_norm: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, float],
                           tuple[torch.Tensor, torch.Tensor]]
    qk_norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    qk_norm_rope_store: Callable[..., torch.Tensor]  # qk_norm_rope, then store_kv of k and v; returns q
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]


def get_model_ops(backend: str | None, device: torch.device) -> ModelOps:
    """"torch" runs anywhere; "triton" needs CUDA, or TRITON_INTERPRET=1 on the CPU. None picks triton on CUDA
    and torch elsewhere."""
    if backend is None:
        backend = "triton" if device.type == "cuda" else "torch"
    if backend == "torch":
        from qasr.kernels.reference.ops import TORCH_OPS

        return TORCH_OPS
    if backend != "triton":
        raise ValueError(f"unknown attention backend {backend!r}; choose 'torch' or 'triton'")
    from qasr.kernels.triton.utils import interpreting

    message = (f"the triton backend runs on CUDA devices; on {device.type} it needs the Triton interpreter: "
               "set TRITON_INTERPRET=1 before the first kernels import (and expect it to be slow), "
               "or use attention_backend='torch'")
    if device.type != "cuda" and not interpreting():
        raise ValueError(message)
    from qasr.kernels.triton.ops import TRITON_OPS, kernels_are_interpreted

    if device.type != "cuda" and not kernels_are_interpreted():
        raise ValueError(message + " (the kernels were imported before TRITON_INTERPRET=1 was set)")
    return TRITON_OPS
