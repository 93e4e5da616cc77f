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
    reads them.

    The tables cover the positions asked for so far (tables()), doubling as longer sequences come, up to the
    model's max_positions: a full table is tens of MB per model (65536 positions), most of which a CPU server
    never reads. Rows are the same whatever the length. On a GPU the engine asks for max_model_len at start, before
    it profiles memory and captures the decode graphs, so the tables never move under a graph."""

    INITIAL_POSITIONS = 4096

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos", torch.empty(0, head_dim, dtype=torch.float32), persistent=False)
        self.register_buffer("sin", torch.empty(0, head_dim, dtype=torch.float32), persistent=False)
        self.tables(min(self.INITIAL_POSITIONS, max_positions))

    def tables(self, num_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [at least num_positions (up to max_positions), head_dim] float32."""
        have = self.cos.shape[0]
        if num_positions > have and have < self.max_positions:
            length = min(max(num_positions, 2 * have), self.max_positions)
            positions = torch.arange(length, dtype=torch.int64, device=self.inv_freq.device).float()
            freqs = positions[:, None] * self.inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            self.cos, self.sin = emb.cos(), emb.sin()
        return self.cos, self.sin
