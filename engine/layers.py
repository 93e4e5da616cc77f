import torch
from torch import nn


class RMSNorm(nn.Module):
    """Holds the weight and eps; the decoder applies them through its ModelOps' fused norms."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


class RotaryEmbedding(nn.Module):
    """NeoX-style (rotate-half) 1-D RoPE tables, cos/sin in float32 as in the reference; the q/k norm+RoPE op
    reads them."""

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.arange(max_positions, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)  # [max_positions, head_dim] float32
        self.register_buffer("sin", emb.sin(), persistent=False)
