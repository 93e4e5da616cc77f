from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from qasr.engine.model_config import ModelConfig


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    audio_pad: int
    audio_start: int
    audio_end: int
    asr_text: int | None
    eos: tuple[int, ...]


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))


def special_tokens(tokenizer: PreTrainedTokenizerBase, config: ModelConfig) -> SpecialTokens:
    vocab = tokenizer.get_vocab()

    def token_id(token: str) -> int:
        if token not in vocab:
            raise ValueError(f"the checkpoint's tokenizer has no {token} token")
        return vocab[token]

    audio_pad = token_id(getattr(tokenizer, "audio_token", None) or "<|audio_pad|>")
    if audio_pad != config.audio_token_id:
        raise ValueError(f"config audio_token_id {config.audio_token_id} is not the tokenizer's "
                         f"<|audio_pad|> id {audio_pad}")
    return SpecialTokens(
        audio_pad=audio_pad,
        audio_start=token_id(getattr(tokenizer, "audio_bos_token", None) or "<|audio_start|>"),
        audio_end=token_id(getattr(tokenizer, "audio_eos_token", None) or "<|audio_end|>"),
        asr_text=vocab.get("<asr_text>"),
        eos=config.eos_token_ids,
    )
