"""A small byte-level BPE tokenizer that carries Qwen3-ASR's special tokens, saved the way Qwen's are.

transformers loads it as a `Qwen2Tokenizer` (tokenizer.json plus tokenizer_config.json with the audio
token names), and a raw `tokenizers` load agrees with it because the pre-tokenizer is Qwen2's split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                  "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
ASR_TEXT_TOKEN = "<asr_text>"  # an added token that is NOT special: skip_special_tokens keeps it

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer(dst: Path, texts: Iterable[str], vocab_size: int, vocab_files: bool = False) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` symbols on `texts` and save it with the special tokens after it.

    Writes tokenizer.json and tokenizer_config.json (and vocab.json + merges.txt with `vocab_files`).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(ASR_TEXT_TOKEN, special=False, normalized=False)])

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tokenizer), indent=2))
    if vocab_files:
        tokenizer.model.save(str(dst))
    return tokenizer


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    added = {}
    for token in [*SPECIAL_TOKENS, ASR_TEXT_TOKEN]:
        added[str(tokenizer.token_to_id(token))] = {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": token != ASR_TEXT_TOKEN,
        }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": SPECIAL_TOKENS[1:],  # the 4.57-era key; transformers 5 reads it too
        "audio_token": "<|audio_pad|>",
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
    }


def token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The special tokens' ids, and the tokenizer's size."""
    return {t: tokenizer.token_to_id(t) for t in [*SPECIAL_TOKENS, ASR_TEXT_TOKEN]} | {
        "vocab_size": tokenizer.get_vocab_size()}


def padded_vocab_size(tokenizer_size: int) -> int:
    return (tokenizer_size + 63) // 64 * 64  # a few unused rows, as real checkpoints have
