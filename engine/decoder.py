import torch
from torch import nn

from qasr.engine.layers import RMSNorm, RotaryEmbedding
from qasr.engine.model_config import TextConfig
from qasr.kernels import AttentionMetadata, ModelOps


class DecoderAttention(nn.Module):
    def __init__(self, config: TextConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary = rotary
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                ops: ModelOps) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = ops.qk_norm_rope_store(q.view(-1, self.num_heads, self.head_dim),
                                   k.view(-1, self.num_kv_heads, self.head_dim),
                                   v.view(-1, self.num_kv_heads, self.head_dim), positions, self.q_norm.weight,
                                   self.k_norm.weight, self.q_norm.eps, *self.rotary.tables(meta.max_seq_len),
                                   self.k_cache, self.v_cache, meta.slot_mapping)
        out = ops.paged_attention(q, self.k_cache, self.v_cache, meta, self.scale)
        return self.o_proj(out.flatten(1))


class DecoderMLP(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ops: ModelOps) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DecoderAttention(config, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DecoderMLP(config)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                meta: AttentionMetadata, ops: ModelOps) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden is the previous layer's MLP output, not yet added to the residual stream (None at layer 0).

        The same sums as the reference `hidden = hidden + attn(norm(hidden))`, with each add fused into
        the norm that follows it.
        """
        norm = self.input_layernorm
        hidden, residual = ops.add_rms_norm(hidden, residual, norm.weight, norm.eps)
        hidden = self.self_attn(hidden, positions, meta, ops)
        norm = self.post_attention_layernorm
        hidden, residual = ops.add_rms_norm(hidden, residual, norm.weight, norm.eps)
        return self.mlp(hidden, ops), residual


class Qwen3Decoder(nn.Module):
    """The Qwen3 text decoder over flat packed tokens and a paged KV cache."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(config, self.rotary) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                ops: ModelOps) -> torch.Tensor:
        hidden, residual = embeds, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, positions, meta, ops)
        hidden, _ = ops.add_rms_norm(hidden, residual, self.norm.weight, self.norm.eps)
        return hidden
