"""The bundled demo model: qasr's default model, in the original Qwen3-ASR layout, transcribing held-out speech
within the WER targets (single sentences, several sentences in one clip, silence and noise left empty), and giving
the same tokens as transformers on its `-hf` conversion."""

import json
from pathlib import Path

import pytest

from qasr.benchmarks.heldout import MANIFEST, heldout_scores, read_manifest, table
from qasr.benchmarks.wer import corpus_wer
from qasr.engine import ASR, SamplingParams
from qasr.engine.audio import load_audio
from qasr.engine.demo import demo_model_path
from qasr.engine.hf_conversion import convert_to_hf
from qasr.engine.model_config import load_model_config

MAX_CHECKPOINT_BYTES = 25_000_000
MAX_HELDOUT_BYTES = 15_000_000
# issue 12's targets; the shipped model holds 0.14%, 0.00%, 1.79% and 100% (with the context, on every other clip:
# 0.80%, 0.57%, 0.47% and 100%).
# The committed clips of several sentences helped choose between runs; fresh ones measure it (training.fresh_eval)
SEEN_VOICE_MAX_WER = 0.015
UNSEEN_VOICE_MAX_WER = 0.03
SEVERAL_SENTENCES_MAX_WER = 0.03
CONTEXT = "timers, alarms and reminders"  # with it the fourth model read 24.5% / 24.2% / 17.6%
MIN_EMPTY_ON_NOISE = 0.98
README = Path(__file__).resolve().parents[2] / "README.md"
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


def test_the_committed_heldout_set_is_small_and_has_every_group() -> None:
    rows = read_manifest()
    assert sum(f.stat().st_size for f in MANIFEST.parent.iterdir()) <= MAX_HELDOUT_BYTES
    assert all((MANIFEST.parent / row["file"]).is_file() for row in rows)
    sentences = [row for row in rows if row["kind"] == "sentence"]
    seen = {row["voice"] for row in sentences if row["seen_voice"]}
    unseen = {row["voice"] for row in sentences if not row["seen_voice"]}
    assert len(seen) >= 5 and unseen and not seen & unseen
    assert sum(row["seen_voice"] for row in sentences) >= 100 and sum(not row["seen_voice"] for row in sentences) >= 80
    several = [row for row in rows if row["kind"] == "multi"]
    assert len(several) >= 20 and all(15 <= row["seconds"] <= 30 for row in several)
    quiet = [row for row in rows if row["kind"] == "noise"]
    assert len(quiet) >= 100 and all(row["text"] == "" for row in quiet)
    assert {row["voice"] for row in quiet} == {"silence", "room", "white", "pink", "brown", "hum"}


def test_asr_without_a_model_loads_the_demo_model() -> None:
    asr = ASR(cpu_kv_cache_gib=0.1)
    assert asr.engine.model_path == demo_model_path()


def test_qasr_transcribe_with_the_default_model_meets_the_targets_and_the_readme_shows_them() -> None:
    scores, rows = heldout_scores()  # `qasr transcribe --format json` with no --model
    print("\n" + table(scores))
    by_group = {score.group.split(" (")[0]: score for score in scores}
    assert by_group["seen voices"].utterances >= 100 and by_group["unseen voice"].utterances >= 80
    assert by_group["seen voices"].wer <= SEEN_VOICE_MAX_WER
    assert by_group["unseen voice"].wer <= UNSEEN_VOICE_MAX_WER
    assert by_group["several sentences"].wer <= SEVERAL_SENTENCES_MAX_WER
    assert by_group["silence and noise"].empty >= MIN_EMPTY_ON_NOISE
    assert all(row["hypothesis"] for row in rows if row["kind"] != "noise")
    assert table(scores) in README.read_text(), "update the README's demo model table to the one printed above"


def test_a_context_in_the_system_turn_leaves_the_transcripts_within_the_targets(tmp_path: Path) -> None:
    # every other clip of the set, in each group (the whole set runs without a context above): half the suite's time
    half = tmp_path / "manifest.jsonl"
    half.write_text("".join(json.dumps(row | {"file": str(MANIFEST.parent / row["file"])}) + "\n"
                            for row in read_manifest()[::2]))
    # `qasr transcribe --context`, as the OpenAI `prompt` reaches it
    scores, rows = heldout_scores(manifest=half, context=CONTEXT)
    print("\n" + table(scores))
    by_group = {score.group.split(" (")[0]: score for score in scores}
    assert by_group["seen voices"].wer <= SEEN_VOICE_MAX_WER
    assert by_group["unseen voice"].wer <= UNSEEN_VOICE_MAX_WER
    assert by_group["several sentences"].wer <= SEVERAL_SENTENCES_MAX_WER
    assert by_group["silence and noise"].empty >= MIN_EMPTY_ON_NOISE


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, transformers_reference):
    hf = tmp_path_factory.mktemp("demo-hf")
    convert_to_hf(demo_model_path(), hf)
    return transformers_reference(hf)


def test_transformers_gives_the_same_tokens_on_seven_heldout_clips(reference) -> None:
    rows = read_manifest()
    sentences = [row for row in rows if row["kind"] == "sentence"]
    first = {kind: next(row for row in rows if row["kind"] == kind) for kind in ("multi", "noise")}
    picked = ([row for row in sentences if row["seen_voice"]][:3]
              + [row for row in sentences if not row["seen_voice"]][:2] + [first["multi"], first["noise"]])
    clips = [load_audio(MANIFEST.parent / row["file"]) for row in picked]
    asr = ASR(dtype="float32", cpu_kv_cache_gib=0.1)
    results = asr.transcribe([(clip, 16000) for clip in clips], sampling_params=SamplingParams(max_tokens=200))
    for row, clip, result in zip(picked, clips, results):
        expected = reference.generate(clip, max_new_tokens=200)
        assert result.token_ids == expected.token_ids, row["file"]
        assert result.language == ("English" if row["text"] else None)
    assert corpus_wer([row["text"] for row in picked], [r.text for r in results]) <= 0.1
