from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels import layer_ops, paged_attention, windowed_attention
from kernels.attention_metadata import AttentionMetadata


@dataclass(frozen=True, slots=True)
class AttentionBackend:
    """Every model op that has more than one implementation; the model calls these and the same model code
    runs on either backend. Signatures are those of the torch versions in kernels.layer_ops,
    kernels.paged_attention and kernels.windowed_attention."""

    name: str
    store_kv: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
    paged_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, float], torch.Tensor]
    windowed_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[int], float], torch.Tensor]
    add_rms_norm: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, float],
                           tuple[torch.Tensor, torch.Tensor]]
    qk_norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]


TORCH_BACKEND = AttentionBackend(
    name="torch",
    store_kv=paged_attention.store_kv,
    paged_attention=paged_attention.paged_attention,
    windowed_attention=windowed_attention.windowed_attention,
    add_rms_norm=layer_ops.add_rms_norm,
    qk_norm_rope=layer_ops.qk_norm_rope,
    silu_and_mul=layer_ops.silu_and_mul,
)


def get_attention_backend(name: str | None, device: torch.device) -> AttentionBackend:
    """"torch" runs anywhere; "triton" needs CUDA, or TRITON_INTERPRET=1 on the CPU. None picks triton on CUDA
    and torch elsewhere."""
    if name is None:
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        return TORCH_BACKEND
    if name != "triton":
        raise ValueError(f"unknown attention backend {name!r}; choose 'torch' or 'triton'")
    from kernels.triton_utils import interpreting

    message = (f"the triton backend runs on CUDA devices; on {device.type} it needs the Triton interpreter: "
               "set TRITON_INTERPRET=1 before the first kernels import (and expect it to be slow), "
               "or use attention_backend='torch'")
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(message)
    from kernels.triton_backend import TRITON_BACKEND, kernels_are_interpreted

    if device.type != "cuda" and not kernels_are_interpreted():
        raise RuntimeError(message + " (the kernels were imported before TRITON_INTERPRET=1 was set)")
    return TRITON_BACKEND
