"""Writing an original-layout checkpoint (Qwen/Qwen3-ASR-*) in the transformers `-hf` layout, as transformers'
converter does: what the reference implementation loads. Also the two layouts' chat templates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qasr.engine.checkpoint import CheckpointError, disk_name, read_tensors, safetensors_files, save_safetensors
from qasr.engine.model_config import load_model_config

# The chat template of the original checkpoints (Qwen/Qwen3-ASR-*): a system turn, a user turn of audio, the
# generation prompt.
_SYSTEM_AND_AUDIO_TURNS = """\
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
{{- '<|im_start|>system\\n' + ns.system_text + '<|im_end|>\\n' -}}
{{- '<|im_start|>user\\n' + ns2.audio_tokens + '<|im_end|>\\n' -}}
"""
_ASSISTANT_TURNS = """\
{%- for m in messages -%}
  {%- if m.role == 'assistant' -%}
    {%- set ns3 = namespace(assistant_text='') -%}
    {%- if m.content is string -%}
      {%- set ns3.assistant_text = m.content -%}
    {%- else -%}
      {%- for c in m.content -%}
        {%- if c.type == 'text' and (c.text is defined) -%}
          {%- set ns3.assistant_text = ns3.assistant_text + c.text -%}
        {%- endif -%}
      {%- endfor -%}
    {%- endif -%}
    {{- '<|im_start|>assistant\\n' -}}
    {% generation %}
    {{- ns3.assistant_text + '<|im_end|>\\n' -}}
    {% endgeneration %}
  {%- endif -%}
{%- endfor -%}
"""
_GENERATION_PROMPT = """\
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""
ORIGINAL_CHAT_TEMPLATE = _SYSTEM_AND_AUDIO_TURNS + _GENERATION_PROMPT
# The `-hf` checkpoints' template: the original one plus assistant turns, so that a forced language can be
# prefilled with `continue_final_message=True` ("language English<asr_text>").
ASR_CHAT_TEMPLATE = _SYSTEM_AND_AUDIO_TURNS + _ASSISTANT_TURNS + _GENERATION_PROMPT


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json")
# Keys the transformers converter drops from the sub-configs (serialisation leftovers of 4.57).
_CONFIG_LEFTOVERS = (
    "_name_or_path", "architectures", "dtype", "torch_dtype", "model_type", "use_bfloat16",
    "add_cross_attention", "chunk_size_feed_forward", "cross_attention_hidden_size", "decoder_start_token_id",
    "finetuning_task", "id2label", "label2id", "is_decoder", "is_encoder_decoder", "output_attentions",
    "output_hidden_states", "prefix", "problem_type", "pruned_heads", "return_dict", "sep_token_id",
    "task_specific_params", "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class", "torchscript",
)
_AUDIO_LEFTOVERS = ("max_source_positions", "pad_token_id", "bos_token_id", "eos_token_id",
                    "tie_word_embeddings")
_TEXT_MOE_KEYS = ("decoder_sparse_step", "moe_intermediate_size", "num_experts_per_tok", "num_experts",
                  "norm_topk_prob", "output_router_logits", "router_aux_loss_coef", "mlp_only_layers")
_MROPE_KEYS = ("mrope_interleaved", "interleaved", "mrope_section", "type")


def _special_token_ids(path: Path) -> dict[str, int]:
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        return {}
    added = json.loads(tokenizer_file.read_text()).get("added_tokens", [])
    return {token["content"]: int(token["id"]) for token in added}


def hf_config_dict(raw: dict, tie_word_embeddings: bool, eos_token_ids: tuple[int, ...],
                   pad_token_id: int | None) -> dict:
    """Flatten an original-layout config.json the way transformers' converter does."""
    thinker = raw["thinker_config"]
    audio = {k: v for k, v in thinker["audio_config"].items()
             if k not in _CONFIG_LEFTOVERS and k not in _AUDIO_LEFTOVERS}
    if "encoder_attention_heads" in audio:
        audio["num_attention_heads"] = audio.pop("encoder_attention_heads")
    audio["num_key_value_heads"] = audio.get("num_key_value_heads", audio.get("num_attention_heads"))
    # Only 13 positions are used (one 100-frame chunk after the convolutions), not Whisper's 1500.
    audio["max_position_embeddings"] = 13
    audio["model_type"] = "qwen3_asr_encoder"

    text = {k: v for k, v in thinker["text_config"].items()
            if k not in _CONFIG_LEFTOVERS and k not in _TEXT_MOE_KEYS}
    # The declared MRoPE is 1-D RoPE for audio-only prompts; transformers 5 keeps theta in rope_parameters.
    rope = {k: v for k, v in (text.pop("rope_scaling", None) or {}).items() if k not in _MROPE_KEYS}
    rope.setdefault("rope_type", "default")
    theta = text.pop("rope_theta", None)
    rope["rope_theta"] = theta if theta is not None else (text.get("rope_parameters") or {}).get("rope_theta")
    text["rope_parameters"] = rope
    text["model_type"] = "qwen3"

    config = {k: v for k, v in raw.items()
              if k not in ("thinker_config", "support_languages", "transformers_version", "architectures")}
    config.update({
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "audio_config": audio,
        "text_config": text,
        "audio_token_id": thinker["audio_token_id"],
        "tie_word_embeddings": tie_word_embeddings,
        "eos_token_id": list(eos_token_ids),
    })
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    for key in ("initializer_range", "dtype"):
        if key in thinker:
            config[key] = thinker[key]
    return config


def _feature_extractor_config(src: Path, n_window: int) -> dict:
    """Qwen3ASRFeatureExtractor's settings; the source's WhisperFeatureExtractor values where it has them."""
    config = {
        "feature_size": 128, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400,
        "chunk_length": 30, "n_samples": 480000, "nb_max_frames": 3000,
        "padding_side": "right", "padding_value": 0.0, "dither": 0.0, "return_attention_mask": True,
        "min_length": 8000,
    }
    if (src / "preprocessor_config.json").is_file():
        original = json.loads((src / "preprocessor_config.json").read_text())
        config.update({k: v for k, v in original.items() if k in config})
    return config | {"n_window": n_window, "feature_extractor_type": "Qwen3ASRFeatureExtractor",
                     "processor_class": "Qwen3ASRProcessor"}


def convert_to_hf(src: Path, dst: Path) -> None:
    """Write a transformers `-hf` layout copy of an original-layout checkpoint."""
    src, dst = Path(src), Path(dst)
    config = load_model_config(src)
    if config.layout != "original":
        raise CheckpointError(f"{src}: already in the transformers -hf layout")
    # Tied: lm_head is left out, as save_pretrained does; transformers ties it to the embedding on load.
    tensors = read_tensors(src, config)
    ids = _special_token_ids(src)
    # transformers' converter stops on <|endoftext|> and <|im_end|> and pads with <|im_end|>.
    eos = tuple(ids[t] for t in ("<|endoftext|>", "<|im_end|>") if t in ids) or config.eos_token_ids
    pad = ids.get("<|im_end|>")

    dst.mkdir(parents=True, exist_ok=True)
    save_safetensors(dst, {disk_name(name, "hf"): t for name, t in tensors.items()},
                     shards=len(safetensors_files(src)))
    raw = json.loads((src / "config.json").read_text())
    _write_json(dst / "config.json", hf_config_dict(raw, config.text.tie_word_embeddings, eos, pad))
    generation = {"eos_token_id": list(eos), "do_sample": False, "max_new_tokens": 512}
    if pad is not None:
        generation["pad_token_id"] = pad
    _write_json(dst / "generation_config.json", generation)
    _write_json(dst / "preprocessor_config.json", _feature_extractor_config(src, config.audio.n_window))
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    (dst / "chat_template.jinja").write_text(ASR_CHAT_TEMPLATE)


def add_special_token(folder: Path, token: str) -> int:
    """Adds `token` as a special token to the tokenizer files in `folder` (tokenizer.json, tokenizer_config.json),
    as a forced aligner's tokenizer has `<timestamp>`; returns its id."""
    from tokenizers import AddedToken, Tokenizer

    folder = Path(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])
    tokenizer.save(str(folder / "tokenizer.json"))
    token_id = tokenizer.token_to_id(token)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config.setdefault("added_tokens_decoder", {})[str(token_id)] = {
        "content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": True}
    _write_json(config_file, config)
    return token_id


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
