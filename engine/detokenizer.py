"""Generated ids in, text deltas out, one id at a time, for each piece being decoded.

Qwen's tokenizer is byte-level BPE: every token stands for a fixed run of bytes, and a decode is those bytes read as
UTF-8 (a broken sequence becoming U+FFFD). So a piece's detokenizer is a table lookup feeding Python's incremental
UTF-8 decoder, which holds back the bytes of an unfinished character (and a token that is whole characters, as
nearly every one is, skips even that while nothing is held back): a fraction of the cost of the tokenizers library's
DecodeStream, which re-decodes a window of ids per step. Other tokenizers take the DecodeStream path.
"""

import codecs
from collections.abc import Callable
from typing import Protocol

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str: ...

    def push_many(self, token_ids: list[int]) -> str:
        """What pushing each id in turn would give, at once."""
        ...

    def finish(self) -> str:
        """The rest of the text, an unfinished character included, once no more ids will come."""
        ...


class ByteLevelDetokenizer:
    def __init__(self, token_bytes: list[bytes], token_texts: list[str | None] | None = None):
        """`token_texts`: each id's text where its bytes are whole UTF-8 characters, else None (whole_texts)."""
        self.token_bytes = token_bytes
        self.token_texts = token_texts if token_texts is not None else whole_texts(token_bytes)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.holding = False  # the decoder holds the first bytes of a character

    def push(self, token_id: int) -> str:
        if not self.holding and token_id < len(self.token_texts):
            text = self.token_texts[token_id]
            if text is not None:
                return text
        token_bytes = self.token_bytes
        return self._decode(token_bytes[token_id] if token_id < len(token_bytes) else b"")

    def push_many(self, token_ids: list[int]) -> str:
        if not self.holding:  # tokens of whole characters each, as a rule: their texts joined
            try:
                return "".join(map(self.token_texts.__getitem__, token_ids))  # type: ignore[arg-type]
            except (TypeError, IndexError):  # a token of part of a character (None), or an id past the table
                pass
        token_bytes, size = self.token_bytes, len(self.token_bytes)
        return self._decode(b"".join([token_bytes[i] if i < size else b"" for i in token_ids]))

    def finish(self) -> str:
        return self._decode(b"", final=True)

    def _decode(self, data: bytes, final: bool = False) -> str:
        text = self.decoder.decode(data, final)
        self.holding = bool(self.decoder.getstate()[0])
        return text


class StreamDetokenizer:
    """Any tokenizer, through the tokenizers library's streaming decoder."""

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

    def push_many(self, token_ids: list[int]) -> str:
        return "".join(map(self.push, token_ids))

    def finish(self) -> str:
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        rest = full[self.emitted:]
        self.emitted = len(full)
        return rest


def detokenizer_factory(tokenizer: PreTrainedTokenizerBase) -> Callable[[], Detokenizer]:
    """What makes each piece's detokenizer: the byte table for a byte-level BPE tokenizer (built once, here),
    the streaming decoder for any other."""
    token_bytes = byte_level_token_bytes(tokenizer)
    if token_bytes is None:
        return lambda: StreamDetokenizer(tokenizer)
    token_texts = whole_texts(token_bytes)
    return lambda: ByteLevelDetokenizer(token_bytes, token_texts)


def whole_texts(token_bytes: list[bytes]) -> list[str | None]:
    """Each token's text where its bytes are whole UTF-8 characters (what the decoder gives for them when it holds
    nothing back), else None."""
    texts: list[str | None] = []
    for data in token_bytes:
        try:
            texts.append(data.decode())
        except UnicodeDecodeError:
            texts.append(None)
    return texts


def byte_level_token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes] | None:
    """Each id's bytes in a decode that skips special tokens, as the tokenizers library's ByteLevel decoder gives
    them (a token with a character outside the byte alphabet, such as an added token's, stands for its own UTF-8);
    None unless the tokenizer is byte-level BPE with nothing else in its decoder."""
    backend = tokenizer.backend_tokenizer
    decoder = backend.decoder
    if type(decoder).__name__ != "ByteLevel" or type(backend.model).__name__ != "BPE":
        return None
    byte_of_char = {char: byte for byte, char in bytes_to_unicode().items()}
    special = {token.content for token in backend.get_added_tokens_decoder().values() if token.special}
    vocab = backend.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values()) + 1)
    for token, token_id in vocab.items():
        if token in special:
            continue
        if all(char in byte_of_char for char in token):
            table[token_id] = bytes(byte_of_char[char] for char in token)
        else:
            table[token_id] = token.encode()
    return table
