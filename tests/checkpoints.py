"""Small random Qwen3-ASR checkpoints on disk, in both layouts, for tests.

Not a test module: tests import it. Everything is deterministic from (shape, seed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from qasr.engine.checkpoint import ASR_CHAT_TEMPLATE, canonical_name, disk_name, save_safetensors
from training.export import original_config
from training.tokenizer import ASR_TEXT_TOKEN, SPECIAL_TOKENS
from training.tokenizer import build_tokenizer as build_bpe_tokenizer


@dataclass(frozen=True)
class Shape:
    name: str
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


SHAPES: list[Shape] = [
    Shape("gqa2", enc_d_model=32, enc_layers=2, enc_heads=2, enc_ffn=64, conv_channels=8,
          hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=64),
    Shape("gqa3", enc_d_model=48, enc_layers=2, enc_heads=4, enc_ffn=96, conv_channels=8,
          hidden=48, layers=2, heads=6, kv_heads=2, head_dim=24, intermediate=96),
    Shape("mha", enc_d_model=64, enc_layers=2, enc_heads=4, enc_ffn=128, conv_channels=16,
          hidden=64, layers=2, heads=2, kv_heads=2, head_dim=32, intermediate=128),
]

BPE_VOCAB_SIZE = 600  # 256 byte symbols + merges; the added tokens come after

CORPUS = """\
Set a timer for ten minutes and remind me to check the oven.
What is the weather like in Paris, London, Berlin and Tokyo today?
Turn off the lights in the kitchen and the living room, please.
Play some quiet music in the bedroom at half volume.
Add milk, eggs, bread, butter, apples and coffee to my shopping list.
Wake me up at seven thirty tomorrow morning with a gentle alarm.
How long does it take to drive from the station to the airport?
The quick brown fox jumps over the lazy dog near the river bank.
Today we release a new model for speech recognition in thirty languages.
Please read the last message from my sister again, a little slower.
It will be sunny in the afternoon with a light wind from the north.
Cancel the meeting on Friday and move the call with the team to Monday.
Open the window, close the door, and set the heating to twenty degrees.
My favourite songs are old jazz records and piano music from the sixties.
Remind me every evening at nine to water the plants on the balcony.
Language English, language Chinese, language German, language French.
Numbers: one two three four five six seven eight nine ten eleven twelve.
Hello, how are you? I am fine, thank you. What time is it now?
The report says the river will rise by two metres before the weekend.
Call mum, text dad, and send an email to the landlord about the rent.
system user assistant: language English, language None.
"""


def build_tokenizer(dst: Path) -> None:
    """A small byte-level BPE with Qwen's special tokens at non-Qwen ids (the demo model's tokenizer builder)."""
    build_bpe_tokenizer(dst, CORPUS.splitlines() * 3, BPE_VOCAB_SIZE)


ORIGINAL_CHAT_TEMPLATE = """\
{%- set ns = namespace(system_text='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}
    {%- if m.content is string -%}
      {%- set ns.system_text = ns.system_text + m.content -%}
    {%- else -%}
      {%- for c in m.content -%}
        {%- if c.type == 'text' and (c.text is defined) -%}
          {%- set ns.system_text = ns.system_text + c.text -%}
        {%- endif -%}
      {%- endfor -%}
    {%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- set ns2 = namespace(audio_tokens='') -%}
{%- for m in messages -%}
  {%- if m.content is not string -%}
    {%- for c in m.content -%}
      {%- if c.type == 'audio' or ('audio' in c) or ('audio_url' in c) -%}
        {%- set ns2.audio_tokens = ns2.audio_tokens + '<|audio_start|><|audio_pad|><|audio_end|>' -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endfor -%}
{{- '<|im_start|>system\\n' + (ns.system_text if ns.system_text is string else '') + '<|im_end|>\\n' -}}
{{- '<|im_start|>user\\n' + ns2.audio_tokens + '<|im_end|>\\n' -}}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

SUPPORT_LANGUAGES = [
    "Chinese", "English", "Cantonese", "Arabic", "German", "French", "Spanish", "Portuguese", "Indonesian",
    "Italian", "Korean", "Russian", "Thai", "Vietnamese", "Japanese", "Turkish", "Hindi", "Malay", "Dutch",
    "Swedish", "Danish", "Finnish", "Polish", "Czech", "Filipino", "Persian", "Greek", "Romanian",
    "Hungarian", "Macedonian",
]
N_WINDOW, N_WINDOW_INFER, NUM_MEL_BINS = 50, 800, 128


def _token_ids(dst: Path) -> dict[str, int]:
    tokenizer = Tokenizer.from_file(str(dst / "tokenizer.json"))
    return {t: tokenizer.token_to_id(t) for t in [*SPECIAL_TOKENS, ASR_TEXT_TOKEN]} | {
        "vocab_size": tokenizer.get_vocab_size()}


def _vocab_size(tokenizer_size: int) -> int:
    return (tokenizer_size + 63) // 64 * 64  # a few unused rows, as real checkpoints have


def hf_config(shape: Shape, ids: dict[str, int], dtype: torch.dtype):
    from transformers import Qwen3ASRConfig

    return Qwen3ASRConfig(
        audio_config={
            "num_mel_bins": NUM_MEL_BINS, "d_model": shape.enc_d_model, "encoder_layers": shape.enc_layers,
            "encoder_attention_heads": shape.enc_heads, "encoder_ffn_dim": shape.enc_ffn,
            "downsample_hidden_size": shape.conv_channels, "output_dim": shape.hidden,
            "n_window": N_WINDOW, "n_window_infer": N_WINDOW_INFER, "activation_function": "gelu",
        },
        text_config={
            "vocab_size": _vocab_size(ids["vocab_size"]), "hidden_size": shape.hidden,
            "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
            "head_dim": shape.head_dim, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
            "max_position_embeddings": 65536, "tie_word_embeddings": True,
        },
        audio_token_id=ids["<|audio_pad|>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
        pad_token_id=ids["<|im_end|>"],
        tie_word_embeddings=True,
        dtype=str(dtype).removeprefix("torch."),
    )


# Found by experiment (greedy decoding of noise and speech-like clips, 0.3 s to 23 s, three shapes, 8 seeds).
# Random tied-embedding models fall into repeating the last token: its own embedding, carried by the
# residual stream, scores highest under the tied lm_head. A small embedding std with a larger final-norm gain
# keeps the logit scale and shrinks that self-bonus; q/k-norm gains near 3 make attention sharp enough for
# the audio to matter; smaller special-token rows make eos (and the other specials) rare but possible.
EMBED_STD = 0.1
LINEAR_GAIN = 1.4  # linear and conv weights: std LINEAR_GAIN / sqrt(fan_in)
QK_NORM_GAIN = 3.0
FINAL_NORM_GAIN = 2.5
SPECIAL_ROW_SCALE = 0.7


def _init_weights(model: torch.nn.Module, seed: int, special_ids: list[int]) -> None:
    """Deterministic weights that keep activations O(1) and make greedy outputs vary with the audio."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std + mean

    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                value = normal(param.shape, 0.1 * QK_NORM_GAIN, mean=QK_NORM_GAIN)
            elif name == "model.language_model.norm.weight":
                value = normal(param.shape, 0.1 * FINAL_NORM_GAIN, mean=FINAL_NORM_GAIN)
            elif param.dim() == 1 and "norm" in name and name.endswith("weight"):
                value = normal(param.shape, 0.1, mean=1.0)
            elif param.dim() == 1:  # biases
                value = normal(param.shape, 0.05)
            elif "embed_tokens" in name:
                value = normal(param.shape, EMBED_STD)
                value[special_ids] *= SPECIAL_ROW_SCALE
            else:
                fan_in = math.prod(param.shape[1:])
                value = normal(param.shape, LINEAR_GAIN / math.sqrt(fan_in))
            param.copy_(value)


def build_model(shape: Shape, ids: dict[str, int], seed: int, dtype: torch.dtype = torch.float32):
    from transformers import Qwen3ASRForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(hf_config(shape, ids, dtype))
    _init_weights(model, seed, [ids[t] for t in [*SPECIAL_TOKENS, ASR_TEXT_TOKEN]])
    model.tie_weights()
    return model.eval()


WHISPER_PREPROCESSOR = {
    "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "Qwen3ASRProcessor",
    "feature_size": NUM_MEL_BINS, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "chunk_length": 30,
    "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0, "dither": 0.0,
    "return_attention_mask": True,
}


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_checkpoint(dst: Path, shape: Shape, layout: str = "hf", seed: int = 0, shards: int = 1,
                     dtype: torch.dtype = torch.float32) -> Path:
    """A random Qwen3-ASR checkpoint folder in `layout` ("hf" or "original"); same seed, same weights."""
    from transformers import GenerationConfig, Qwen3ASRFeatureExtractor

    if layout not in ("hf", "original"):
        raise ValueError(f"layout must be 'hf' or 'original', not {layout!r}")
    dst = Path(dst)
    build_tokenizer(dst)
    ids = _token_ids(dst)
    model = build_model(shape, ids, seed)
    state = {name: t.detach().to(dtype) for name, t in model.state_dict().items()}
    eos = [ids["<|endoftext|>"], ids["<|im_end|>"]]

    if layout == "hf":
        state.pop("lm_head.weight")  # tied: save_pretrained leaves it out too
        save_safetensors(dst, state, shards)
        model.config.save_pretrained(dst)
        GenerationConfig(eos_token_id=eos, pad_token_id=ids["<|im_end|>"], do_sample=False,
                         max_new_tokens=512).save_pretrained(dst)
        Qwen3ASRFeatureExtractor(n_window=N_WINDOW).save_pretrained(dst)
        (dst / "chat_template.jinja").write_text(ASR_CHAT_TEMPLATE)
        return dst

    tensors = {disk_name(canonical_name(name, "hf"), "original"): t for name, t in state.items()}
    tensors["thinker.lm_head.weight"] = state["lm_head.weight"].clone()  # stored, and equal to the embedding
    save_safetensors(dst, tensors, shards)
    config = original_config(model, ids, str(dtype).removeprefix("torch."))
    _write_json(dst / "config.json", {**config, "support_languages": SUPPORT_LANGUAGES})
    _write_json(dst / "generation_config.json", {
        "eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"], "do_sample": False,
        "transformers_version": "4.57.6"})
    _write_json(dst / "preprocessor_config.json", WHISPER_PREPROCESSOR)
    _write_json(dst / "chat_template.json", {"chat_template": ORIGINAL_CHAT_TEMPLATE})
    # vocab.json + merges.txt beside tokenizer.json, as the original repositories ship them
    Tokenizer.from_file(str(dst / "tokenizer.json")).model.save(str(dst))
    return dst
