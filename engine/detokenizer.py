from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase


class IncrementalDetokenizer:
    """Generated ids in, text deltas out, through the tokenizers library's streaming decoder (which holds back
    the bytes of an unfinished character)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer  # looked up once rather than per token
        self.stream = DecodeStream(skip_special_tokens=True)
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        chunk = self.stream.step(self.backend, token_id) or ""
        self.emitted += len(chunk)
        return chunk

    def finish(self) -> str:
        """The rest of the text, an unfinished character included, once no more ids will come."""
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        rest = full[self.emitted:]
        self.emitted = len(full)
        return rest
