"""The trained model: transformers' Qwen3ASRForConditionalGeneration at small dimensions, plus a CTC head.

The CTC head (a linear layer on the projector output, blank as an extra class) exists only in training: it
makes the encoder carry the words early, so that the decoder learns to read the audio instead of guessing
from the sentence patterns. It is not exported; the checkpoint is the plain Qwen3-ASR architecture.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

NUM_MEL_BINS, N_WINDOW, N_WINDOW_INFER = 128, 50, 800  # as in Qwen/Qwen3-ASR-*
MAX_POSITIONS = 65536
ROPE_THETA = 1_000_000


@dataclass(frozen=True)
class Dims:
    enc_d_model: int
    enc_layers: int
    enc_heads: int
    enc_ffn: int
    conv_channels: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


DIMS: dict[str, Dims] = {
    "tiny": Dims(enc_d_model=32, enc_layers=1, enc_heads=2, enc_ffn=64, conv_channels=8,
                 hidden=32, layers=1, heads=2, kv_heads=1, head_dim=16, intermediate=64),
    "XS": Dims(enc_d_model=128, enc_layers=2, enc_heads=4, enc_ffn=512, conv_channels=32,
               hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=512),
    # conv_channels 32, not 64: the convolution stem was half of a training step on 2 CPU cores at 64
    "S": Dims(enc_d_model=192, enc_layers=4, enc_heads=4, enc_ffn=768, conv_channels=32,
              hidden=192, layers=4, heads=4, kv_heads=2, head_dim=48, intermediate=512),
}


def audio_config(dims: Dims) -> dict:
    return {"num_mel_bins": NUM_MEL_BINS, "d_model": dims.enc_d_model, "encoder_layers": dims.enc_layers,
            "encoder_attention_heads": dims.enc_heads, "encoder_ffn_dim": dims.enc_ffn,
            "downsample_hidden_size": dims.conv_channels, "output_dim": dims.hidden, "n_window": N_WINDOW,
            "n_window_infer": N_WINDOW_INFER, "activation_function": "gelu"}


def text_config(dims: Dims, vocab_size: int) -> dict:
    return {"vocab_size": vocab_size, "hidden_size": dims.hidden, "intermediate_size": dims.intermediate,
            "num_hidden_layers": dims.layers, "num_attention_heads": dims.heads,
            "num_key_value_heads": dims.kv_heads, "head_dim": dims.head_dim, "rms_norm_eps": 1e-6,
            "rope_theta": ROPE_THETA, "max_position_embeddings": MAX_POSITIONS, "tie_word_embeddings": True}


def build_model(dims: Dims, vocab_size: int, ids: dict[str, int], seed: int) -> Qwen3ASRForConditionalGeneration:
    config = Qwen3ASRConfig(
        audio_config=audio_config(dims), text_config=text_config(dims, vocab_size),
        audio_token_id=ids["<|audio_pad|>"], eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
        pad_token_id=ids["<|im_end|>"], tie_word_embeddings=True, dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|endoftext|>"], ids["<|im_end|>"]]
    model.generation_config.pad_token_id = ids["<|im_end|>"]
    return model


def grow_decoder(model: Qwen3ASRForConditionalGeneration, layers: int) -> Qwen3ASRForConditionalGeneration:
    """The model with decoder layers added on top of its own up to `layers`, computing the same function.

    Each new layer starts as the identity of the residual stream (its attention output and MLP down projections
    zero, the rest initialized as from scratch), so training goes on from what the model had learned with more
    depth to learn with.
    """
    text = model.config.text_config
    if layers < text.num_hidden_layers:
        raise ValueError(f"the model has {text.num_hidden_layers} decoder layers, more than {layers}")
    config = copy.deepcopy(model.config)
    config.text_config.num_hidden_layers = layers
    config.text_config.layer_types = [text.layer_types[0]] * layers
    grown = Qwen3ASRForConditionalGeneration(config)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or not all(".language_model.layers." in name for name in missing):
        raise ValueError(f"weights that do not carry over: {unexpected or missing}")
    with torch.no_grad():
        for layer in grown.model.language_model.layers[text.num_hidden_layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    grown.generation_config = model.generation_config
    return grown


@dataclass
class Losses:
    total: torch.Tensor
    ce: float
    ctc: float


class CTCTrainer(nn.Module):
    """The ASR model with the training-only CTC head; `forward(batch)` gives next-token + CTC losses."""

    def __init__(self, model: Qwen3ASRForConditionalGeneration, ctc_weight: float):
        super().__init__()
        self.model = model
        self.ctc_weight = ctc_weight
        self.num_classes = model.config.text_config.vocab_size + 1  # the blank is the last class
        self.ctc_head = nn.Linear(model.config.audio_config.output_dim, self.num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> Losses:
        out = self.model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               input_features=batch["input_features"],
                               input_features_mask=batch["input_features_mask"])
        # next-token loss on the target only: position t predicts token t + 1
        predicts = batch["labels"][:, 1:] != -100
        hidden = out.last_hidden_state[:, :-1][predicts]
        ce = F.cross_entropy(self.model.lm_head(hidden).float(), batch["labels"][:, 1:][predicts])

        audio = out.audio_hidden_states  # packed projector outputs, clip after clip
        lengths = batch["audio_lengths"]
        per_clip = torch.nn.utils.rnn.pad_sequence(list(audio.split(lengths.tolist())), batch_first=False)
        log_probs = self.ctc_head(per_clip).float().log_softmax(-1)
        ctc = F.ctc_loss(log_probs, batch["ctc_targets"], lengths, batch["ctc_lengths"],
                         blank=self.num_classes - 1, zero_infinity=True)
        return Losses(ce + self.ctc_weight * ctc, float(ce.detach()), float(ctc.detach()))
