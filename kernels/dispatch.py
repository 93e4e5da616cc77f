from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels import paged_attention, windowed_attention


@dataclass(frozen=True, slots=True)
class AttentionBackend:
    name: str
    store_kv: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    windowed_attention: Callable[..., torch.Tensor]


TORCH_BACKEND = AttentionBackend(
    name="torch",
    store_kv=paged_attention.store_kv,
    paged_attention=paged_attention.paged_attention,
    windowed_attention=windowed_attention.windowed_attention,
)


def get_attention_backend(name: str | None, device: torch.device) -> AttentionBackend:
    """None picks triton on CUDA and torch elsewhere."""
    if name is None:
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        return TORCH_BACKEND
    if name == "triton":
        raise NotImplementedError("the triton attention backend is not built yet; use attention_backend='torch'")
    raise ValueError(f"unknown attention backend {name!r}; choose 'torch' or 'triton'")
