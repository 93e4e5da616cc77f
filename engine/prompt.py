from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from engine.tokenizer import SpecialTokens

PROMPT_TEMPLATE = (
    "<|im_start|>system\n{context}<|im_end|>\n"
    "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
    "<|im_start|>assistant\n{prefill}"
)

MAX_CACHED_CONTEXT_CHARS = 2048


class PromptBuilder:
    """Token ids of the Qwen3-ASR transcription prompt: system context, the audio placeholders, and an
    optional forced-language prefill `language X<asr_text>`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, special: SpecialTokens):
        self.tokenizer = tokenizer
        self.special = special
        self.special_strings = [t for t in {*tokenizer.all_special_tokens, *tokenizer.added_tokens_encoder} if t]
        self.cached_template_ids = lru_cache(maxsize=1024)(self._template_ids)

    def build(self, num_audio_tokens: int, context: str = "", language: str | None = None) -> tuple[list[int], int]:
        """Returns (prompt ids, index of the first audio placeholder)."""
        # a long context (a document pasted as hotwords) is tokenized each time rather than held in the cache
        template_ids = self.cached_template_ids if len(context) <= MAX_CACHED_CONTEXT_CHARS else self._template_ids
        before, after = template_ids(context, language)
        return before + [self.special.audio_pad] * num_audio_tokens + after, len(before)

    def _template_ids(self, context: str, language: str | None) -> tuple[list[int], list[int]]:
        for token in self.special_strings:
            if token in context:
                raise ValueError(f"context may not contain the special token {token}")
        prefill = f"language {language}<asr_text>" if language else ""
        ids = self.tokenizer.encode(PROMPT_TEMPLATE.format(context=context, prefill=prefill),
                                    add_special_tokens=False)
        audio_at = ids.index(self.special.audio_pad)
        return ids[:audio_at], ids[audio_at + 1:]
