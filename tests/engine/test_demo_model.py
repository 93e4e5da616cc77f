"""The bundled demo model: qasr's default model, in the original Qwen3-ASR layout, transcribing held-out speech
within the WER targets, and giving the same tokens as transformers on its `-hf` conversion."""

import json

import pytest

from qasr.benchmarks.heldout import MANIFEST, heldout_scores, read_manifest
from qasr.benchmarks.wer import corpus_wer
from qasr.engine import ASR, SamplingParams
from qasr.engine.audio import load_audio
from qasr.engine.demo import demo_model_path
from qasr.engine.hf_conversion import convert_to_hf
from qasr.engine.model_config import load_model_config

MAX_CHECKPOINT_BYTES = 25_000_000
MAX_HELDOUT_BYTES = 5_000_000
SEEN_VOICE_MAX_WER = 0.03
UNSEEN_VOICE_MAX_WER = 0.06
CHECKPOINT_FILES = {"config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json",
                    "chat_template.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"}


def test_the_checkpoint_is_small_and_in_the_original_layout() -> None:
    path = demo_model_path()
    assert CHECKPOINT_FILES <= {f.name for f in path.iterdir()}
    assert sum(f.stat().st_size for f in path.iterdir()) <= MAX_CHECKPOINT_BYTES
    raw = json.loads((path / "config.json").read_text())
    assert raw["architectures"] == ["Qwen3ASRForConditionalGeneration"] and "thinker_config" in raw
    assert load_model_config(path).layout == "original"
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert (tokenizer_config["audio_token"], tokenizer_config["audio_bos_token"],
            tokenizer_config["audio_eos_token"]) == ("<|audio_pad|>", "<|audio_start|>", "<|audio_end|>")
    added = {t["content"] for t in json.loads((path / "tokenizer.json").read_text())["added_tokens"]}
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_pad|>", "<asr_text>"} <= added


def test_the_committed_heldout_set_is_small_and_has_both_voice_groups() -> None:
    rows = read_manifest()
    assert sum(f.stat().st_size for f in MANIFEST.parent.iterdir()) <= MAX_HELDOUT_BYTES
    assert all((MANIFEST.parent / row["file"]).is_file() for row in rows)
    seen = {row["voice"] for row in rows if row["seen_voice"]}
    unseen = {row["voice"] for row in rows if not row["seen_voice"]}
    assert len(seen) >= 5 and unseen and not seen & unseen
    assert sum(row["seen_voice"] for row in rows) >= 100 and sum(not row["seen_voice"] for row in rows) >= 80


def test_asr_without_a_model_loads_the_demo_model() -> None:
    asr = ASR(cpu_kv_cache_gib=0.1)
    assert asr.engine.model_path == demo_model_path()


def test_qasr_transcribe_with_the_default_model_meets_the_wer_targets() -> None:
    scores, rows = heldout_scores()  # `qasr transcribe --format json` with no --model
    by_group = {score.group.split(" (")[0]: score for score in scores}
    print("\n" + "\n".join(f"{s.group}: {s.utterances} utterances, {s.words} words, WER {100 * s.wer:.2f}%"
                            for s in scores))
    assert by_group["seen voices"].utterances >= 100 and by_group["unseen voice"].utterances >= 80
    assert by_group["seen voices"].wer <= SEEN_VOICE_MAX_WER
    assert by_group["unseen voice"].wer <= UNSEEN_VOICE_MAX_WER
    assert all(row["hypothesis"] for row in rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, transformers_reference):
    hf = tmp_path_factory.mktemp("demo-hf")
    convert_to_hf(demo_model_path(), hf)
    return transformers_reference(hf)


def test_transformers_gives_the_same_tokens_on_five_heldout_clips(reference) -> None:
    rows = read_manifest()
    picked = [row for row in rows if row["seen_voice"]][:3] + [row for row in rows if not row["seen_voice"]][:2]
    clips = [load_audio(MANIFEST.parent / row["file"]) for row in picked]
    asr = ASR(dtype="float32", cpu_kv_cache_gib=0.1)
    results = asr.transcribe([(clip, 16000) for clip in clips], sampling_params=SamplingParams(max_tokens=96))
    for row, clip, result in zip(picked, clips, results):
        expected = reference.generate(clip, max_new_tokens=96)
        assert result.token_ids == expected.token_ids, row["file"]
        assert result.language == "English"
    assert corpus_wer([row["text"] for row in picked], [r.text for r in results]) <= 0.1

