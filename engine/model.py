import torch
from torch import nn

from qasr.engine.audio_encoder import AudioEncoder
from qasr.engine.checkpoint import is_tied
from qasr.engine.decoder import Qwen3Decoder
from qasr.engine.model_config import ModelConfig
from qasr.kernels import AttentionMetadata, ModelOps

# canonical checkpoint names that load into one fused parameter, in order
FUSED_PARAMETERS = {
    "self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "self_attn.qkv_proj.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),  # encoder
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


class Qwen3ASRModel(nn.Module):
    """Audio encoder + projector + Qwen3 decoder, in the engine's calling convention; with the vocabulary head of
    the speech recognition model, or the time-slot classifier of the forced aligner."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.audio_tower = AudioEncoder(config.audio)
        self.model = Qwen3Decoder(config.text)
        # a forced aligner's head scores time slots; it shares the name (see checkpoint.py)
        self.lm_head = nn.Linear(config.text.hidden_size, config.head_size, bias=False)
        if is_tied(config):
            self.lm_head.weight = self.model.embed_tokens.weight

    def encode_audio(self, mels: list[torch.Tensor], ops: ModelOps) -> torch.Tensor:
        return self.audio_tower(mels, ops)

    def embed(self, token_ids: torch.Tensor, audio_rows: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings with audio placeholder rows replaced by encoder outputs."""
        embeds = self.model.embed_tokens(token_ids)
        if audio_rows.numel():
            embeds[audio_rows] = audio_embeds.to(embeds.dtype)
        return embeds

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                ops: ModelOps) -> torch.Tensor:
        return self.model(embeds, positions, meta, ops)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """In the model's dtype: a greedy argmax needs no float32 copy of [rows, vocab] (the upcast is exact and keeps
        every order and tie); sampling upcasts the rows it draws from."""
        return self.lm_head(hidden)

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for name, param in self.named_parameters():
            fused_suffix = next((s for s in FUSED_PARAMETERS if name.endswith(s)), None)
            if fused_suffix is None:
                param.copy_(weights[name])
            else:
                prefix = name[: -len(fused_suffix)]
                parts = [weights[prefix + part] for part in FUSED_PARAMETERS[fused_suffix]]
                param.copy_(torch.cat(parts, dim=0))
