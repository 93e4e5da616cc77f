"""Windowed bidirectional attention of the audio encoder in plain torch: the CPU path, and the reference of the
Triton kernel."""

import torch
import torch.nn.functional as F


def windowed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window_lens: list[int],
                       scale: float, starts: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional attention inside consecutive windows of packed tokens [num_tokens, heads, head_dim].

    Windows of equal length run as one batched call, so a batch of many audios costs a handful of calls. `starts`
    (the Triton kernel's device copy of the bounds) is not read: the lengths say the same. The padded passes of CUDA
    graphs (empty windows, tokens past the last window) are the Triton kernel's alone: graphs need that backend.
    """
    out = torch.empty_like(query)
    starts_by_length: dict[int, list[int]] = {}
    offset = 0
    for length in window_lens:
        starts_by_length.setdefault(length, []).append(offset)
        offset += length
    for length, window_starts in starts_by_length.items():
        index = (torch.tensor(window_starts, device=query.device)[:, None]
                 + torch.arange(length, device=query.device)[None, :])
        q, k, v = (t[index].transpose(1, 2) for t in (query, key, value))  # [windows, heads, length, dim]
        out[index] = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)
    return out
