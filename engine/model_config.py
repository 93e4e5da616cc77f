"""Model dimensions and token ids, read from a checkpoint folder's config files.

Two layouts exist: the original one (`Qwen/Qwen3-ASR-*`, everything under `thinker_config`, written by
transformers 4.57) and the transformers one (`Qwen/Qwen3-ASR-*-hf`, `audio_config`/`text_config` at the top).
Field names differ between the transformers versions that wrote them, so every field is read under each of
its spellings. The forced aligner (`Qwen/Qwen3-ForcedAligner-0.6B`, also `-hf`) is the same model with a
classifier over time slots in place of the vocabulary head: `classify_num` in its original config,
`num_labels` (and `Qwen3ASRForTokenClassification`) in the -hf one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class AudioEncoderConfig:
    num_mel_bins: int
    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    conv_channels: int  # downsample_hidden_size
    output_dim: int
    n_window: int
    n_window_infer: int
    activation: str


@dataclass(frozen=True, slots=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool


@dataclass(frozen=True, slots=True)
class AlignerHead:
    """The forced aligner's classifier: class k at a `<timestamp>` token means k x segment_ms milliseconds."""

    num_classes: int
    timestamp_token_id: int
    segment_ms: float


@dataclass(frozen=True, slots=True)
class ModelConfig:
    layout: str  # "original" | "hf"
    audio: AudioEncoderConfig
    text: TextConfig
    audio_token_id: int
    eos_token_ids: tuple[int, ...]
    dtype: str  # checkpoint dtype, e.g. "bfloat16"
    aligner: AlignerHead | None = None  # set for a forced aligner, whose head classifies time slots

    @property
    def head_size(self) -> int:
        """Rows of the output head: the vocabulary, or the aligner's time classes."""
        return self.aligner.num_classes if self.aligner else self.text.vocab_size

    @property
    def kind(self) -> str:
        return "forced aligner" if self.aligner else "speech recognition model"


_MISSING = object()


def _field(section: dict[str, Any], where: str, *names: str, default: Any = _MISSING) -> Any:
    for name in names:
        if section.get(name) is not None:
            return section[name]
    if default is _MISSING:
        spellings = " or ".join(repr(n) for n in names)
        raise ValueError(f"config.json: {where} has no {spellings}")
    return default


def _first_set(*values: Any, default: Any) -> Any:
    return next((v for v in values if v is not None), default)


def _section(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"config.json: {where} has no {key!r} object")
    return value


def parse_audio_config(audio: dict[str, Any], where: str = "audio_config") -> AudioEncoderConfig:
    d_model = int(_field(audio, where, "d_model", "hidden_size"))
    return AudioEncoderConfig(
        num_mel_bins=int(_field(audio, where, "num_mel_bins", default=128)),
        d_model=d_model,
        num_layers=int(_field(audio, where, "encoder_layers", "num_hidden_layers")),
        num_heads=int(_field(audio, where, "encoder_attention_heads", "num_attention_heads")),
        ffn_dim=int(_field(audio, where, "encoder_ffn_dim", "intermediate_size")),
        conv_channels=int(_field(audio, where, "downsample_hidden_size")),
        output_dim=int(_field(audio, where, "output_dim")),
        n_window=int(_field(audio, where, "n_window")),
        n_window_infer=int(_field(audio, where, "n_window_infer")),
        activation=str(_field(audio, where, "activation_function", "hidden_act", default="gelu")),
    )


def _rope_theta(text: dict[str, Any], where: str) -> float:
    rope_parameters = text.get("rope_parameters")
    if isinstance(rope_parameters, dict) and rope_parameters.get("rope_theta") is not None:
        return float(rope_parameters["rope_theta"])
    return float(_field(text, where, "rope_theta"))


def parse_text_config(text: dict[str, Any], tie_word_embeddings: bool,
                      where: str = "text_config") -> TextConfig:
    hidden_size = int(_field(text, where, "hidden_size"))
    num_heads = int(_field(text, where, "num_attention_heads"))
    return TextConfig(
        vocab_size=int(_field(text, where, "vocab_size")),
        hidden_size=hidden_size,
        intermediate_size=int(_field(text, where, "intermediate_size")),
        num_layers=int(_field(text, where, "num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=int(_field(text, where, "num_key_value_heads", default=num_heads)),
        head_dim=int(_field(text, where, "head_dim", default=hidden_size // num_heads)),
        rms_norm_eps=float(_field(text, where, "rms_norm_eps")),
        rope_theta=_rope_theta(text, where),
        max_position_embeddings=int(_field(text, where, "max_position_embeddings")),
        tie_word_embeddings=tie_word_embeddings,
    )


MODEL_TYPES = ("qwen3_asr", "qwen3_forced_aligner")


def detect_layout(raw: dict[str, Any]) -> str:
    model_type = raw.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ValueError(f"config.json: model_type {model_type!r} is not a Qwen3-ASR model ('qwen3_asr')")
    if isinstance(raw.get("thinker_config"), dict):
        return "original"
    if isinstance(raw.get("audio_config"), dict) and isinstance(raw.get("text_config"), dict):
        return "hf"
    raise ValueError(
        "config.json is not a Qwen3-ASR config: expected a 'thinker_config' object (original layout) "
        "or 'audio_config' and 'text_config' objects (transformers -hf layout); "
        f"top-level keys: {sorted(raw)}"
    )


def _as_ids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    ids = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
    return ids or None


def _tokenizer_eos_ids(path: Path) -> tuple[int, ...] | None:
    tokenizer_config_file, tokenizer_file = path / "tokenizer_config.json", path / "tokenizer.json"
    if not tokenizer_config_file.is_file():
        return None
    eos = json.loads(tokenizer_config_file.read_text()).get("eos_token")
    if isinstance(eos, dict):  # an AddedToken written out as a dict
        eos = eos.get("content")
    if not isinstance(eos, str):
        return None
    if tokenizer_file.is_file():
        tokenizer = json.loads(tokenizer_file.read_text())
        for added in tokenizer.get("added_tokens", []):
            if added.get("content") == eos:
                return (int(added["id"]),)
        vocab = tokenizer.get("model", {}).get("vocab", {})
        if eos in vocab:
            return (int(vocab[eos]),)
    return None


def _eos_token_ids(path: Path, sections: list[dict[str, Any]]) -> tuple[int, ...]:
    generation_config_file = path / "generation_config.json"
    if generation_config_file.is_file():
        ids = _as_ids(json.loads(generation_config_file.read_text()).get("eos_token_id"))
        if ids:
            return ids
    for section in sections:
        ids = _as_ids(section.get("eos_token_id"))
        if ids:
            return ids
    ids = _tokenizer_eos_ids(path)
    if ids:
        return ids
    raise ValueError(
        f"{path}: no eos token id in generation_config.json, config.json or the tokenizer files"
    )


def _dtype(sections: list[dict[str, Any]]) -> str:
    for section in sections:
        for key in ("dtype", "torch_dtype"):
            if isinstance(section.get(key), str):
                return section[key]
    return "float32"


TIMESTAMP_TOKEN = "<timestamp>"  # the aligner's slot token, a special token of its tokenizer
# transformers' Qwen3ASRConfig default, which its -hf aligner config may leave unwritten
DEFAULT_TIMESTAMP_TOKEN_ID = 151705
DEFAULT_SEGMENT_MS = 80.0


def is_aligner_config(raw: dict[str, Any]) -> bool:
    thinker = raw.get("thinker_config")
    if isinstance(thinker, dict):
        return "classify_num" in thinker
    architectures = raw.get("architectures") or []
    return (any("TokenClassification" in a for a in architectures)
            or raw.get("num_labels") is not None or isinstance(raw.get("id2label"), dict))


def _aligner_head(raw: dict[str, Any], path: Path) -> AlignerHead:
    thinker = raw.get("thinker_config")
    if isinstance(thinker, dict):  # the original layout keeps everything in the thinker's config
        return AlignerHead(int(_field(thinker, "thinker_config", "classify_num")),
                           int(_field(thinker, "thinker_config", "timestamp_token_id")),
                           float(_field(thinker, "thinker_config", "timestamp_segment_time",
                                        default=DEFAULT_SEGMENT_MS)))
    labels = raw.get("id2label")
    num_classes = raw.get("num_labels") or (len(labels) if isinstance(labels, dict) else None)
    if not num_classes:
        raise ValueError("config.json: a token-classification config without num_labels or id2label")
    # the -hf layout keeps the slot length on the processor, as one of its init arguments
    segment_ms = DEFAULT_SEGMENT_MS
    processor_file = path / "processor_config.json"
    if processor_file.is_file():
        segment_ms = float(json.loads(processor_file.read_text()).get("timestamp_segment_time", segment_ms))
    return AlignerHead(int(num_classes), int(raw.get("timestamp_token_id", DEFAULT_TIMESTAMP_TOKEN_ID)),
                       segment_ms)


def parse_config(raw: dict[str, Any], path: Path) -> ModelConfig:
    layout = detect_layout(raw)
    if layout == "original":
        thinker = raw["thinker_config"]
        audio_raw = _section(thinker, "audio_config", "thinker_config")
        text_raw = _section(thinker, "text_config", "thinker_config")
        audio_token_id = _field(thinker, "thinker_config", "audio_token_id")
        sections = [raw, thinker, text_raw]
        prefix = "thinker_config."
        # vLLM, which Qwen's evaluations used, ties lm_head by text_config.tie_word_embeddings.
        tie = _first_set(text_raw.get("tie_word_embeddings"), thinker.get("tie_word_embeddings"),
                         raw.get("tie_word_embeddings"), default=True)
    else:
        audio_raw, text_raw = raw["audio_config"], raw["text_config"]
        audio_token_id = _field(raw, "config.json", "audio_token_id")
        sections = [raw, text_raw]
        prefix = ""
        # transformers ties by the top-level flag; text_config's may be a stale default.
        tie = _first_set(raw.get("tie_word_embeddings"), text_raw.get("tie_word_embeddings"), default=True)
    aligner = _aligner_head(raw, path) if is_aligner_config(raw) else None
    try:
        eos_token_ids = _eos_token_ids(path, sections)
    except ValueError:
        if aligner is None:
            raise
        eos_token_ids = ()  # the aligner generates nothing
    return ModelConfig(
        layout=layout,
        audio=parse_audio_config(audio_raw, prefix + "audio_config"),
        text=parse_text_config(text_raw, bool(tie), prefix + "text_config"),
        audio_token_id=int(audio_token_id),
        eos_token_ids=eos_token_ids,
        dtype=_dtype(sections),
        aligner=aligner,
    )


def load_model_config(path: Path, aligner: bool = False) -> ModelConfig:
    """The checkpoint's config; a ValueError if it is not the kind asked for (an ASR model, or with `aligner` a
    forced aligner)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file}: expected a JSON object")
    config = parse_config(raw, path)
    if (config.aligner is not None) != aligner:
        wanted = "a forced aligner" if aligner else "a speech recognition model"
        raise ValueError(f"{path}: a Qwen3 {config.kind} checkpoint, where {wanted} is expected")
    return config
