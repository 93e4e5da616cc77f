"""Writing the trained model as a checkpoint in the original Qwen/Qwen3-ASR-* layout.

The same files a real checkpoint has: config.json with `thinker_config`, model.safetensors with
`thinker.*` names, generation_config.json, preprocessor_config.json, chat_template.json and the tokenizer
(tokenizer.json, tokenizer_config.json, vocab.json, merges.txt). The CTC head is not part of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRForTokenClassification

from qasr.engine.checkpoint import canonical_name, disk_name, save_safetensors
from qasr.engine.hf_conversion import ASR_CHAT_TEMPLATE
from training.model import MAX_POSITIONS, N_WINDOW, N_WINDOW_INFER, NUM_MEL_BINS, ROPE_THETA

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
SUPPORT_LANGUAGES = ["English"]


def _mrope_section(head_dim: int) -> list[int]:
    half, rest = head_dim // 2, head_dim // 2 * 20 // 64  # [24, 20, 20] for head_dim 128, as Qwen's
    return [half - 2 * rest, rest, rest]


def original_config(model: Qwen3ASRForConditionalGeneration | Qwen3ASRForTokenClassification, ids: dict[str, int],
                    dtype: str) -> dict:
    """config.json as transformers 4.57 wrote it for Qwen/Qwen3-ASR-*: everything under thinker_config."""
    a, t = model.config.audio_config, model.config.text_config
    audio = {
        "model_type": "qwen3_asr_audio_encoder", "num_mel_bins": NUM_MEL_BINS, "d_model": a.d_model,
        "encoder_layers": a.encoder_layers, "encoder_attention_heads": a.encoder_attention_heads,
        "encoder_ffn_dim": a.encoder_ffn_dim, "downsample_hidden_size": a.downsample_hidden_size,
        "output_dim": a.output_dim, "n_window": N_WINDOW, "n_window_infer": N_WINDOW_INFER,
        "conv_chunksize": 500, "max_source_positions": 1500, "activation_function": "gelu",
        "scale_embedding": False, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "initializer_range": 0.02, "dtype": dtype,
    }
    text = {
        "model_type": "qwen3", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.head_dim, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
        "rms_norm_eps": t.rms_norm_eps, "rope_theta": ROPE_THETA, "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": True,
        "rope_scaling": {"interleaved": True, "mrope_interleaved": True, "mrope_section": _mrope_section(t.head_dim),
                         "rope_type": "default", "type": "default"},
        "use_cache": True, "sliding_window": None, "use_sliding_window": False, "initializer_range": 0.02,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "dtype": dtype,
    }
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "support_languages": SUPPORT_LANGUAGES,
        "thinker_config": {
            "model_type": "qwen3_asr", "audio_config": audio, "text_config": text,
            "audio_token_id": ids["<|audio_pad|>"], "audio_start_token_id": ids["<|audio_start|>"],
            "audio_end_token_id": ids["<|audio_end|>"], "dtype": dtype, "initializer_range": 0.02,
        },
        "transformers_version": "4.57.6",
    }


PREPROCESSOR = {
    "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "Qwen3ASRProcessor",
    "feature_size": NUM_MEL_BINS, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "chunk_length": 30,
    "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0, "dither": 0.0,
    "return_attention_mask": True,
}


def export_checkpoint(model: Qwen3ASRForConditionalGeneration, ids: dict[str, int], tokenizer_dir: Path,
                      dst: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Writes `dst` (replacing what is there) in the original layout; returns it."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    dtype_name = str(dtype).removeprefix("torch.")
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: left out, as save_pretrained does
            continue
        tensors[disk_name(canonical_name(name, "hf"), "original")] = tensor.detach().to(dtype).clone()
    save_safetensors(dst, tensors)
    _write_json(dst / "config.json", original_config(model, ids, dtype_name))
    _write_json(dst / "generation_config.json", {
        "eos_token_id": [ids["<|endoftext|>"], ids["<|im_end|>"]], "pad_token_id": ids["<|endoftext|>"],
        "do_sample": False, "transformers_version": "4.57.6"})
    _write_json(dst / "preprocessor_config.json", PREPROCESSOR)
    _write_json(dst / "chat_template.json", {"chat_template": ASR_CHAT_TEMPLATE})
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(tokenizer_dir) / name, dst / name)
    write_model_card(dst, model, dtype_name)
    return dst


def write_model_card(dst: Path, model: Qwen3ASRForConditionalGeneration, dtype: str) -> None:
    a, t = model.config.audio_config, model.config.text_config
    parameters = sum(p.numel() for p in model.parameters())
    (dst / "README.md").write_text(f"""\
# qasr demo model

A small speech recognition model in the Qwen3-ASR format (the original `Qwen/Qwen3-ASR-*` layout:
audio encoder, projector and Qwen3 decoder), trained from scratch by `python -m training.train` on English
speech synthesized by espeak-ng. It knows only the domain in `training/DOMAIN.md` (voice-assistant requests:
smart home, timers, alarms, weather, music, shopping lists, reminders, calendar, calls, numbers, everyday
sentences). It is a demo of the qasr pipeline, not a general speech recognizer: for real speech use
`Qwen/Qwen3-ASR-1.7B` or `Qwen/Qwen3-ASR-0.6B` (`qasr transcribe --model Qwen/Qwen3-ASR-1.7B audio.wav`).

- {parameters / 1e6:.2f} M parameters, stored as {dtype}
- encoder: d_model {a.d_model}, {a.encoder_layers} layers, {a.encoder_attention_heads} heads, ffn \
{a.encoder_ffn_dim}, convolution channels {a.downsample_hidden_size}
- decoder: hidden {t.hidden_size}, {t.num_hidden_layers} layers, {t.num_attention_heads} heads \
({t.num_key_value_heads} KV heads, head_dim {t.head_dim}), ffn {t.intermediate_size}, tied embeddings
- tokenizer: byte-level BPE, {t.vocab_size} rows (Qwen's special tokens and `<asr_text>` included)
""")


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def export_aligner(model: Qwen3ASRForTokenClassification, ids: dict[str, int], tokenizer_dir: Path, dst: Path,
                   segment_ms: float, dtype: torch.dtype = torch.float32) -> Path:
    """A forced aligner in the original Qwen/Qwen3-ForcedAligner-0.6B layout: the classifier as
    `thinker.lm_head.weight`, `classify_num`, `timestamp_token_id` and `timestamp_segment_time` in
    `thinker_config`. Writes `dst` (replacing what is there); returns it."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    dtype_name = str(dtype).removeprefix("torch.")
    tensors = {disk_name(canonical_name(name, "hf", aligner=True), "original", aligner=True):
               tensor.detach().to(dtype).clone() for name, tensor in model.state_dict().items()}
    save_safetensors(dst, tensors)
    config = original_config(model, ids, dtype_name)
    config["architectures"] = ["Qwen3ForcedAlignerForConditionalGeneration"]
    thinker = config["thinker_config"]
    thinker["text_config"]["tie_word_embeddings"] = False
    thinker.update({"model_type": "qwen3_forced_aligner", "classify_num": model.config.num_labels,
                    "timestamp_token_id": model.config.timestamp_token_id, "timestamp_segment_time": segment_ms})
    _write_json(dst / "config.json", config)
    _write_json(dst / "preprocessor_config.json", PREPROCESSOR)
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(tokenizer_dir) / name, dst / name)
    parameters = sum(p.numel() for p in model.parameters())
    (dst / "README.md").write_text(f"""\
# qasr demo aligner

A small forced aligner in the Qwen3-ForcedAligner format (the original `Qwen/Qwen3-ForcedAligner-0.6B` layout:
audio encoder, projector, Qwen3 decoder and a classifier of {model.config.num_labels} time slots of \
{segment_ms:g} ms), trained by `python -m training.train_aligner` on English speech synthesized by espeak-ng, whose
word times are exact. It starts from the demo model's encoder and decoder and knows only its domain: it times the
words of the demo model's transcripts. For real speech use `Qwen/Qwen3-ForcedAligner-0.6B`.

- {parameters / 1e6:.2f} M parameters, stored as {dtype_name}
""")
    return dst
