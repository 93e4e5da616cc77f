"""Random-weight Qwen3-ASR checkpoints at the real 0.6B / 1.7B shapes (and a tiny one for CPU), for speed, and
forced aligners at Qwen3-ForcedAligner-0.6B's shape (or the tiny one).

The tokenizer, chat template and feature-extractor files come from the bundled demo model (an aligner's tokenizer
gains `<timestamp>`); only the weights are random, written in the original layout and loaded by the same code as a
real checkpoint.
"""

import json
import shutil
from pathlib import Path

import torch

from qasr.engine.checkpoint import disk_name, expected_shapes, save_safetensors
from qasr.engine.demo import demo_model_path
from qasr.engine.hf_conversion import add_special_token
from qasr.engine.model_config import TIMESTAMP_TOKEN, parse_config

PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "audio": {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128,
                  "downsample_hidden_size": 16, "output_dim": 64},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 16},
    },
    "0.6b": {
        "audio": {"d_model": 896, "encoder_layers": 18, "encoder_attention_heads": 14, "encoder_ffn_dim": 3584,
                  "downsample_hidden_size": 480, "output_dim": 1024},
        "text": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
                 "num_key_value_heads": 8, "head_dim": 128},
    },
    "1.7b": {
        "audio": {"d_model": 1024, "encoder_layers": 24, "encoder_attention_heads": 16, "encoder_ffn_dim": 4096,
                  "downsample_hidden_size": 480, "output_dim": 2048},
        "text": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                 "num_key_value_heads": 8, "head_dim": 128},
    },
}
# Qwen3-ForcedAligner-0.6B: the 1.7B model's encoder width and depth projecting to the 0.6B decoder; 5000 slots
ALIGNER_PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "tiny": PRESETS["tiny"],
    "0.6b": {"audio": {**PRESETS["1.7b"]["audio"], "output_dim": 1024}, "text": PRESETS["0.6b"]["text"]},
}
ALIGNER_CLASSES = 5000
REAL_VOCAB_SIZE = 151936
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json",
                   "generation_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def write_random_checkpoint(dst: Path, preset: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                            device: str = "cpu", aligner: bool = False) -> Path:
    """Writes (once) an original-layout checkpoint with random weights (`aligner`: a forced aligner's, from
    ALIGNER_PRESETS); returns its folder."""
    if (dst / "config.json").exists():
        return dst
    demo = demo_model_path()
    demo_config = json.loads((demo / "config.json").read_text())
    thinker = demo_config["thinker_config"]
    shapes = (ALIGNER_PRESETS if aligner else PRESETS)[preset]
    audio = {**thinker["audio_config"], **shapes["audio"]}
    text = {**thinker["text_config"], **shapes["text"], "max_position_embeddings": 65536}
    if preset != "tiny":
        text["vocab_size"] = REAL_VOCAB_SIZE
    raw = {**demo_config, "thinker_config": {**thinker, "audio_config": audio, "text_config": text,
                                             "dtype": str(dtype).removeprefix("torch.")}}
    dst.mkdir(parents=True, exist_ok=True)
    if aligner:
        text["tie_word_embeddings"] = False
        raw["thinker_config"].update(model_type="qwen3_forced_aligner", classify_num=ALIGNER_CLASSES,
                                     timestamp_token_id=_timestamp_token(demo, dst), timestamp_segment_time=80)
    config = parse_config(raw, demo)
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if name == "lm_head.weight" and config.text.tie_word_embeddings:
            continue
        if len(shape) == 1:
            value = torch.ones(shape, device=device) if "norm" in name else torch.zeros(shape, device=device)
        else:
            value = torch.randn(shape, generator=generator, device=device) * 0.02
        tensors[disk_name(name, "original")] = value.to(dtype).cpu()
    save_safetensors(dst, tensors)
    for file in TOKENIZER_FILES:
        if (demo / file).exists() and not (dst / file).exists():
            shutil.copy(demo / file, dst / file)
    (dst / "config.json").write_text(json.dumps(raw, indent=2))
    return dst


def _timestamp_token(demo: Path, dst: Path) -> int:
    """The demo tokenizer with `<timestamp>` added, written to `dst`; returns its id."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / name, dst / name)
    return add_special_token(dst, TIMESTAMP_TOKEN)
