"""The demo model's training pipeline: domain grammar, corpus splits, synthesis, and a few training steps."""

import json
import random
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from qasr.benchmarks.heldout import MANIFEST
from qasr.engine.audio import load_audio
from qasr.engine.checkpoint import load_weights
from qasr.engine.demo import DEMO_MODEL_DIR
from qasr.engine.features import FeatureConfig, LogMelExtractor
from qasr.engine.model_config import load_model_config
from training import domain, grammar, noise, speech
from training.batches import ExampleBuilder, SpecAugment, collate, frame_budget_batches, padded_features
from training.contexts import ContextSampler
from training.corpus import (
    HELDOUT_MULTI_CANDIDATES,
    HELDOUT_SPEC,
    SPECS,
    CorpusSpec,
    plan_split,
    rare_sentences,
    read_manifest,
    split_sentences,
    training_sentences,
)
from training.evaluate import transcribe
from training.model import grow_decoder
from training.noise import KINDS
from training.train import TrainConfig, initial_model, lr_factor, prepare_tokenizer, train, validate

DOMAIN_MD = Path(__file__).resolve().parents[2] / "training" / "DOMAIN.md"


def test_the_domain_has_at_least_500_words_and_its_documentation_is_current() -> None:
    words = domain.word_list()
    assert len(words) >= 500
    assert {"timer", "alarm", "weather", "playlist", "reminder", "thermostat", "twenty", "thirty"} <= set(words)
    assert DOMAIN_MD.read_text() == domain.markdown(), "regenerate with python -m training.domain --write ..."


def test_sentences_use_only_documented_words_and_numbers_in_words() -> None:
    rng = random.Random(1)
    words = set(domain.word_list())
    for _ in range(2000):
        text = domain.sentence(rng)
        assert text[0].isupper() and text[-1] in ".?" and not any(c.isdigit() for c in text)
        for word in (w.lower() for w in grammar.WORD.findall(text)):
            assert word in words or word.removesuffix("'s") in words, (word, text)  # "{name}'s birthday"


def test_grammar_rejects_unknown_and_recursive_rules() -> None:
    with pytest.raises(ValueError, match="unknown"):
        grammar.check({"start": ("{missing}",)}, "start")
    with pytest.raises(ValueError, match="recursive"):
        grammar.check({"start": ("{a}",), "a": ("x {start}",)}, "start")
    with pytest.raises(ValueError, match="not reachable"):
        grammar.check({"start": ("x",), "orphan": ("y",)}, "start")
    assert grammar.finish("  hey , turn on the lights ") == "Hey, turn on the lights."


def test_splits_are_deterministic_and_heldout_sentences_never_occur_in_training() -> None:
    spec = CorpusSpec(seed=3, train=3000, val_seen=30, val_unseen=20, test_seen=40, test_unseen=30)
    splits = split_sentences(spec)
    assert splits == split_sentences(spec)
    assert {name: len(s) for name, s in splits.items()} == {
        "train": 3000, "val_seen": 30, "val_unseen": 20, "test_seen": 40, "test_unseen": 30}
    heldout = [s for name, sentences in splits.items() if name != "train" for s in sentences]
    assert len(set(heldout)) == len(heldout) and not set(heldout) & set(splits["train"])
    seen_voices = {p.utterance.voice for p in plan_split(spec, "test_seen", splits["test_seen"])}
    unseen_voices = {p.utterance.voice for p in plan_split(spec, "test_unseen", splits["test_unseen"])}
    train_voices = {p.utterance.voice for p in plan_split(spec, "train", splits["train"])}
    assert unseen_voices == set(speech.UNSEEN_VARIANTS) and not unseen_voices & train_voices
    assert seen_voices <= train_voices == set(speech.TRAIN_VARIANTS)


def test_the_committed_heldout_set_is_the_corpus_test_split() -> None:
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    spec = SPECS[HELDOUT_SPEC]
    splits = split_sentences(spec)
    planned = [asdict(p.utterance) for split in ("test_seen", "test_unseen", "test_multi", "test_noise")
               for p in plan_split(spec, split, splits[split])]
    keys = ("voice", "speed", "pitch", "seen_voice", "kind")
    assert [{k: r[k] for k in keys} for r in rows] == [{k: p[k] for k in keys} for p in planned]
    for row, plan in zip(rows, planned):
        if row["kind"] == "multi":  # the sentences that fit, in order, 15 to 30 seconds of them
            assert plan["text"].startswith(row["text"]) and row["text"].count(".") + row["text"].count("?") >= 2
            assert 15.0 <= row["seconds"] <= 30.0
        else:
            assert row["text"] == plan["text"]
    heard = training_sentences(spec)
    assert not any(s in heard for split in ("test_seen", "test_unseen") for s in splits[split])
    assert not any(s in heard for clip in splits["test_multi"] for s in clip)


def test_v2_splits_hold_out_rare_sentences_and_add_multi_sentence_and_noise_clips() -> None:
    spec = CorpusSpec(seed=5, train=2000, val_seen=10, val_unseen=10, test_seen=40, test_unseen=20, train_multi=50,
                      val_multi=2, test_multi=3, train_noise=30, val_noise=6, test_noise=12,
                      heldout_max_probability=1e-6)
    splits = split_sentences(spec)
    assert {name: len(items) for name, items in splits.items()} == {name: getattr(spec, name) for name in spec.splits}
    heldout = [s for name in ("test_seen", "test_unseen", "val_seen", "val_unseen") for s in splits[name]]
    heldout += [s for name in ("test_multi", "val_multi") for clip in splits[name] for s in clip]
    assert len(set(heldout)) == len(heldout) and not set(heldout) & training_sentences(spec)
    # the phrases a draw gives most often are trained on and never held out
    rng = random.Random(11)
    draws = Counter(domain.sentence(rng) for _ in range(20000))
    common = [text for text, count in draws.most_common(20)]
    assert not set(common) & set(heldout)
    assert any(text in training_sentences(spec) for text in common)
    assert all(2 <= len(clip) <= 6 for clip in splits["train_multi"])
    assert all(len(clip) == HELDOUT_MULTI_CANDIDATES for clip in splits["test_multi"])
    noise = plan_split(spec, "test_noise", splits["test_noise"])
    assert [p.utterance.voice for p in noise] == [*KINDS, *KINDS] and all(p.utterance.text == "" for p in noise)
    assert {p.utterance.kind for p in plan_split(spec, "train_multi", splits["train_multi"])} == {"multi"}


def test_rare_sentences_are_drawn_with_probability_at_most_the_limit() -> None:
    sentences = rare_sentences(200, 1e-6, random.Random(3), exclude=set())
    rng, probabilities = random.Random(3), {}
    while len(probabilities) < 20000:
        text, probability = domain.sentence_with_probability(rng)
        probabilities.setdefault(text, probability)
    assert all(probabilities[text] <= 1e-6 for text in sentences if text in probabilities)
    assert len(set(sentences)) == 200


def test_noise_clips_have_their_kind_length_and_level() -> None:
    for kind in KINDS:
        clip = noise.noise_clip(kind, 2.0, -40.0, np.random.default_rng(1))
        assert clip.dtype == np.float32 and len(clip) == 2 * speech.SAMPLE_RATE
        assert np.array_equal(clip, noise.noise_clip(kind, 2.0, -40.0, np.random.default_rng(1)))
        level = 20 * np.log10(np.sqrt(np.mean(clip.astype(np.float64) ** 2)) + 1e-12)
        if kind == "silence":
            assert level < -79
        else:
            assert abs(level - -40.0) < 0.01, kind
    hum = noise.noise_clip("hum", 1.0, -30.0, np.random.default_rng(2))
    spectrum = np.abs(np.fft.rfft(hum))
    assert np.argmax(spectrum) in {50, 60, 100, 120, 150, 180, 200, 240, 250, 300, 350, 360, 400, 420, 480}
    with pytest.raises(ValueError, match="unknown noise kind"):
        noise.noise_clip("traffic", 1.0, -40.0, np.random.default_rng(0))


def test_several_sentences_are_read_by_one_voice_within_the_length_limits() -> None:
    voice = speech.Voice("f2", 170, 50)
    texts = ["Set a timer for ten minutes.", "What is the weather like today?", "Turn off the kitchen lights.",
             "Call my mother.", "Remind me to buy milk tomorrow morning."]
    clip, used = speech.render_sentences(texts, voice, seed=4, max_seconds=30.0)
    assert used == texts and clip.dtype == np.float32
    again, _ = speech.render_sentences(texts, voice, seed=4, max_seconds=30.0)
    assert np.array_equal(clip, again)
    singles = sum(len(speech.synthesize(t, voice)) for t in texts) / speech.SAMPLE_RATE
    pauses = (len(texts) - 1) * speech.PAUSE_RANGE[0]
    assert singles + pauses <= len(clip) / speech.SAMPLE_RATE <= singles + (len(texts) + 1) * speech.PAUSE_RANGE[1]
    short, used = speech.render_sentences(texts, voice, seed=4, max_seconds=6.0)
    assert 1 <= len(used) < len(texts) and used == texts[:len(used)] and len(short) <= 6.0 * speech.SAMPLE_RATE
    enough, used = speech.render_sentences(texts, voice, seed=4, min_seconds=3.0)
    assert len(used) < len(texts) and len(enough) >= 3.0 * speech.SAMPLE_RATE


def test_synthesis_is_deterministic_16khz_speech() -> None:
    voice = speech.Voice("m3", 160, 50)
    first = speech.render("Set a timer for ten minutes.", voice, seed=7)
    assert np.array_equal(first, speech.render("Set a timer for ten minutes.", voice, seed=7))
    assert not np.array_equal(first, speech.render("Set a timer for ten minutes.", voice, seed=8))
    assert 0.8 < len(first) / speech.SAMPLE_RATE < 4.0 and first.dtype == np.float32
    assert 0.01 < np.abs(first).max() <= 0.99


def tiny_manifest(tmp_path: Path, count: int) -> Path:
    """The first `count` committed held-out clips as a tiny training corpus: no espeak-ng needed."""
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()][:count]
    manifest = tmp_path / "tiny.jsonl"
    manifest.write_text("".join(json.dumps(r | {"file": str(MANIFEST.parent / r["file"])}) + "\n" for r in rows))
    return manifest


def test_a_few_training_steps_on_a_tiny_corpus_lower_the_loss(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, 24)
    out = tmp_path / "model"
    result = train(TrainConfig(out=out, work=tmp_path / "work", log=tmp_path / "log.jsonl", train_manifest=manifest,
                               model="tiny", steps=60, batch_size=8, batch_frames=0, lr=3e-3, warmup=5,
                               bpe_vocab=400, eval_every=0, log_every=10))
    first, last = np.mean(result.losses[:6]), np.mean(result.losses[-6:])
    print(f"loss {first:.2f} -> {last:.2f}")
    assert last < 0.7 * first
    config = load_model_config(out)
    weights = load_weights(out, config, torch.float32)
    assert config.layout == "original" and not any("ctc" in name for name in weights)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(10, 61, 10))


def test_bfloat16_training_runs_the_forward_in_bfloat16_and_keeps_float32_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import training.train

    monkeypatch.setattr(training.train, "cpu_computes_bfloat16", lambda: False)
    manifest = tiny_manifest(tmp_path, 16)
    seen: dict[str, set] = {"outputs": set(), "weights": set(), "sdpa": set()}
    forward, sdpa = torch.nn.Linear.forward, torch.nn.functional.scaled_dot_product_attention

    def spy(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        out = forward(self, x)
        if torch.is_grad_enabled():  # training steps, not the export's
            seen["outputs"].add(out.dtype)
            seen["weights"].add(self.weight.dtype)
        return out
    def sdpa_spy(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen["sdpa"].add(args[0].dtype)
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_spy)
    out = tmp_path / "model"
    result = train(TrainConfig(out=out, work=tmp_path / "work", log=None, train_manifest=manifest, model="tiny",
                               steps=40, batch_size=8, batch_frames=0, lr=3e-3, warmup=5, bpe_vocab=400,
                               eval_every=0, precision="bfloat16"))
    # attention as matmuls (training.train.ATTENTION): CPU sdpa is slower in bfloat16 than in float32
    assert seen == {"outputs": {torch.bfloat16}, "weights": {torch.float32}, "sdpa": set()}
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5])
    stored = {tensor.dtype for file in out.glob("*.safetensors") for tensor in load_file(file).values()}
    assert stored == {torch.float32}  # the export's dtype (export_dtype), whatever the training precision
    assert "this CPU has no bfloat16 arithmetic" in capsys.readouterr().err

    with pytest.raises(ValueError, match="precision 'float16'"):
        train(TrainConfig(out=tmp_path / "never", work=tmp_path / "never-work", log=None,
                          train_manifest=tmp_path / "missing.jsonl", precision="float16"))


def test_the_export_can_be_a_moving_average_of_the_weights(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, 8)

    def exported(steps: int, ema_decay: float) -> dict[str, torch.Tensor]:
        out = tmp_path / f"model-{steps}-{ema_decay}"
        train(TrainConfig(out=out, work=tmp_path / "work", log=None, train_manifest=manifest, model="tiny",
                          steps=steps, batch_size=4, batch_frames=0, lr=3e-3, warmup=10, bpe_vocab=400,
                          eval_every=0, ema_decay=ema_decay))
        return load_file(out / "model.safetensors")

    first, last = exported(1, 0.0), exported(4, 0.0)
    # an average that barely moves keeps the first step's weights (the average starts from them), not the last's
    slow = exported(4, 1 - 1e-9)
    name = "thinker.model.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(last[name], first[name], atol=1e-4)
    assert all(torch.allclose(slow[key], first[key], atol=1e-6) for key in first)


def test_a_channels_last_conv_stem_computes_the_same_and_exports_the_same_weights(tmp_path: Path) -> None:
    from training.export import export_checkpoint
    from training.model import DIMS, build_model
    from training.tokenizer import token_ids
    from training.train import channels_last_conv_stem

    ids = token_ids(Tokenizer.from_file(str(DEMO_MODEL_DIR / "tokenizer.json")))
    model = build_model(DIMS["tiny"], 1536, ids, seed=0).eval()
    features, mask = torch.randn(2, 128, 300), torch.ones(2, 300, dtype=torch.long)
    mask[1, 170:] = 0
    with torch.inference_mode():
        before = model.model.audio_tower(features, mask).last_hidden_state
        channels_last_conv_stem(model)
        after = model.model.audio_tower(features, mask).last_hidden_state
    assert model.model.audio_tower.conv2d2.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    out = export_checkpoint(model, ids, DEMO_MODEL_DIR, tmp_path / "model")
    stored = load_file(out / "model.safetensors")
    assert torch.equal(stored["thinker.audio_tower.conv2d2.weight"], model.model.audio_tower.conv2d2.weight)


def test_a_second_phase_starts_from_a_checkpoint_and_learns_empty_transcripts(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()][:16]
    rng = np.random.default_rng(0)
    for i, kind in enumerate(KINDS):  # clips without speech, transcribed as nothing
        path = tmp_path / f"noise-{i}.wav"
        sf.write(path, noise.noise_clip(kind, 2.0, -45.0, rng), speech.SAMPLE_RATE)
        rows.append({"file": str(path), "text": "", "voice": kind, "speed": 0, "pitch": 0, "seen_voice": False,
                     "kind": "noise"})
    manifest = tmp_path / "tiny.jsonl"
    manifest.write_text("".join(json.dumps(r | {"file": str(MANIFEST.parent / r["file"])}) + "\n" for r in rows))
    first, second = tmp_path / "first", tmp_path / "second"
    common = dict(train_manifest=manifest, eval_every=0, log_every=5, lr=3e-3, warmup=2)
    train(TrainConfig(out=first, work=tmp_path / "work1", log=None, model="tiny", steps=40, bpe_vocab=400,
                      batch_frames=0, batch_size=8, **common))
    result = train(TrainConfig(out=second, work=tmp_path / "work2", log=tmp_path / "log.jsonl", init=first, steps=10,
                               batch_frames=3000, **common))
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    before, after = (load_weights(path, load_model_config(path), torch.float32) for path in (first, second))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert next(r for r in records if "parameters" in r)["model"] == str(first)
    assert len(result.losses) == 10

    builder = ExampleBuilder(AutoTokenizer.from_pretrained(str(second)))
    silent = builder.example("")
    assert builder.tokenizer.decode(silent.target) == "language None<asr_text><|im_end|>" and silent.ctc == []

    # validation: WER where there is speech, the share of empty transcripts where there is none
    phase = TrainConfig(init=second)
    model = initial_model(phase, tmp_path / "work3", prepare_tokenizer(phase, tmp_path / "work3", [])[1])
    extractor = LogMelExtractor(FeatureConfig())
    quiet = extractor([noise.noise_clip(kind, 1.5, -45.0, rng) for kind in ("pink", "hum")])
    spoken = extractor([load_audio(MANIFEST.parent / rows[0]["file"])])
    record = validate(model, builder, {"val_noise": (quiet, ["", ""]), "val_seen": (spoken, [rows[0]["text"]])})
    assert record["empty_val_noise"] in (0.0, 0.5, 1.0) and record["wer_val_seen"] >= 0.0
    assert set(record) == {"empty_val_noise", "example_val_noise", "wer_val_seen", "example_val_seen"}


def test_a_run_of_stages_keeps_one_schedule_and_trains_each_stage_on_its_own_data(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    manifests = []
    for name, chosen in (("singles", rows[:12]), ("multi", [r for r in rows if r["kind"] == "multi"][:3])):
        manifests.append(tmp_path / f"{name}.jsonl")
        manifests[-1].write_text("".join(json.dumps(r | {"file": str(MANIFEST.parent / r["file"])}) + "\n"
                                         for r in chosen))
    first = TrainConfig(out=tmp_path / "model", work=tmp_path / "work1", log=tmp_path / "log.jsonl",
                        train_manifest=manifests[0], model="tiny", steps=8, batch_size=4, batch_frames=0, lr=3e-3,
                        warmup=2, bpe_vocab=400, eval_every=0, log_every=1)
    # the second stage's data, steps and batching are its own; its model, rate and warm-up are the run's
    second = replace(first, train_manifest=manifests[1], work=tmp_path / "work2", steps=4, batch_frames=6000,
                     model="XS", lr=1.0, warmup=100)
    result = train(first, then=(second,))
    assert len(result.losses) == 12
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [(r["step"], r["stage"]) for r in steps] == [(n, 1 if n <= 8 else 2) for n in range(1, 13)]
    # one warm-up and one cosine decay over both stages' 12 steps, not a second warm-up at step 9
    schedule = replace(first, steps=12)
    assert [r["lr"] for r in steps] == pytest.approx([3e-3 * lr_factor(n, schedule) for n in range(1, 13)])
    stages = [r for r in records if "train_utterances" in r]
    assert [(r["stage"], r["train_utterances"], r["parameters"]) for r in stages] == [
        (1, 12, stages[0]["parameters"]), (2, 3, stages[0]["parameters"])]
    assert (tmp_path / "work2" / "features" / "train.f16").exists() and not (tmp_path / "work2" / "tokenizer").exists()
    assert load_model_config(tmp_path / "model").layout == "original"


def test_a_grown_decoder_starts_as_the_model_it_grew_from(tmp_path: Path) -> None:
    ids = prepare_tokenizer(TrainConfig(init=DEMO_MODEL_DIR), tmp_path, [])[1]
    model = initial_model(TrainConfig(init=DEMO_MODEL_DIR), tmp_path / "plain", ids).eval()
    layers = model.config.text_config.num_hidden_layers + 2
    grown = initial_model(TrainConfig(init=DEMO_MODEL_DIR, decoder_layers=layers), tmp_path / "grown", ids).eval()
    assert len(grown.model.language_model.layers) == grown.config.text_config.num_hidden_layers == layers
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in model.parameters())

    builder = ExampleBuilder(AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR)))
    mel = LogMelExtractor(FeatureConfig())([load_audio(MANIFEST.parent / read_manifest(MANIFEST)[0].file)])[0]
    prompt = torch.tensor([builder.prompt(mel.shape[1])])
    features, mask = padded_features([mel])
    inputs = dict(input_ids=prompt, attention_mask=torch.ones_like(prompt), input_features=features,
                  input_features_mask=mask)
    with torch.no_grad():
        torch.testing.assert_close(grown(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)
    assert transcribe(grown, builder, [mel]) == transcribe(model, builder, [mel]) != [""]
    with pytest.raises(ValueError, match="more than 3"):
        grow_decoder(model, 3)
    with pytest.raises(ValueError, match="init checkpoint"):
        initial_model(TrainConfig(decoder_layers=layers), tmp_path / "scratch", ids)


def test_a_share_of_examples_get_a_context_of_domain_words_or_a_sentence_in_the_system_turn() -> None:
    sentences = ["Set a timer for ten minutes.", "What is the weather like today?"]
    first, again = ContextSampler(0.3, sentences, seed=5), ContextSampler(0.3, sentences, seed=5)
    draws = [first() for _ in range(2000)]
    assert draws == [again() for _ in range(2000)]
    given = [d for d in draws if d]
    assert 0.25 < len(given) / len(draws) < 0.35
    words = set(domain.word_list())
    as_sentences = [d for d in given if d in sentences]
    as_words = [d for d in given if d not in sentences]
    assert as_sentences and all(set(d.replace(",", "").split()) <= words for d in as_words)
    assert any(", " in d for d in as_words) and any(" " in d and "," not in d for d in as_words)

    builder = ExampleBuilder(AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR)))
    example = builder.example(sentences[0])
    store = [torch.zeros(128, 300)]
    plain = collate(np.array([0]), store, [example], builder)
    hinted = collate(np.array([0]), store, [example], builder, context=lambda: "alarm, timer")
    text = builder.tokenizer.decode(hinted["input_ids"][0])
    assert "<|im_start|>system\nalarm, timer<|im_end|>" in text
    assert "<|im_start|>system\n<|im_end|>" in builder.tokenizer.decode(plain["input_ids"][0])
    targets = [ids[labels != -100].tolist() for ids, labels in ((b["input_ids"][0], b["labels"][0])
                                                                  for b in (plain, hinted))]
    assert targets[0] == targets[1] == example.target


def test_frame_budget_batches_cover_every_clip_once_within_the_budget() -> None:
    frames = np.random.default_rng(1).integers(50, 3000, size=500)
    batches = frame_budget_batches(frames, 6000, np.random.default_rng(2))
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    assert all(len(b) == 1 or len(b) * frames[b].max() <= 6000 for b in batches)
    assert max(len(b) for b in batches) > 5 and min(len(b) for b in batches) <= 2


def test_spec_augment_masks_bands_and_short_stretches() -> None:
    mel = torch.randn(128, 1000)
    original = mel.clone()
    masked = SpecAugment()(mel, np.random.default_rng(3))
    changed = masked != mel
    assert changed.any() and torch.equal(mel, original)  # the input is left as it was
    rows, columns = changed.all(dim=1), changed.all(dim=0)
    assert rows.sum() <= 2 * SpecAugment.max_freq_width and columns.sum() <= 5 * SpecAugment.max_time_width
    assert torch.equal(masked, SpecAugment()(mel, np.random.default_rng(3)))


def test_fresh_sentences_were_never_trained_on_nor_held_out() -> None:
    from training.fresh_eval import fresh_sentences, plan

    sentences = fresh_sentences(40, seed=1000)
    assert sentences == fresh_sentences(40, seed=1000) and len(set(sentences)) == 40
    spec = SPECS[HELDOUT_SPEC]
    splits = split_sentences(spec)
    heldout = {s for name in ("test_seen", "test_unseen", "val_seen", "val_unseen") for s in splits[name]}
    assert not set(sentences) & (training_sentences(spec) | heldout)
    voices = [clip.utterance for clip in plan(sentences, seed=1000)]
    assert sum(u.seen_voice for u in voices) == 27 and {u.voice for u in voices if not u.seen_voice} == {"m4"}


def test_fresh_clips_of_several_sentences_are_made_as_the_heldout_ones_from_sentences_never_used() -> None:
    from training.corpus import heldout_sentences
    from training.fresh_eval import fresh_multi_candidates, plan_multi
    from training.long_multi import (
        PHASE4_COUNT,
        RARE_SPLIT,
        SEED,
        long_multi_candidates,
        plain_sentences,
        plan,
        rare_multi_candidates,
    )

    candidates = fresh_multi_candidates(3, seed=2000)
    read = [text for clip in candidates for text in clip]
    assert candidates == fresh_multi_candidates(3, seed=2000) and len(set(read)) == 3 * HELDOUT_MULTI_CANDIDATES
    spec = SPECS[HELDOUT_SPEC]
    used = training_sentences(spec) | heldout_sentences(spec) | set(plain_sentences())
    used.update(text for clip in long_multi_candidates(PHASE4_COUNT) for text in clip)
    # the training clips of rare derivations: each sentence once, none held out, and none a fresh clip reads
    rare = [text for clip in rare_multi_candidates() for text in clip]
    assert len(set(rare)) == len(rare) and not set(rare) & (heldout_sentences(spec) | set(read))
    assert [clip.texts for clip in plan(2, SEED, RARE_SPLIT)] == rare_multi_candidates()[:2]
    assert not set(read) & used
    clips = plan_multi(candidates, seed=2000)
    assert [clip.texts for clip in clips] == candidates
    assert all(clip.utterance.kind == "multi" and clip.utterance.seen_voice for clip in clips)


def test_the_third_phase_reads_training_sentences_in_long_clips_and_fresh_sentences_avoid_them(tmp_path: Path) -> None:
    from training import long_multi
    from training.corpus import heldout_sentences, synthesize_split
    from training.fresh_eval import fresh_sentences

    candidates = long_multi.long_multi_candidates(count=20)
    assert candidates == long_multi.long_multi_candidates(count=20)  # deterministic from the seed
    assert all(len(clip) == long_multi.CANDIDATES for clip in candidates)
    read = {text for clip in candidates for text in clip}
    assert not read & heldout_sentences(SPECS["v2"])
    assert not read & set(fresh_sentences(200, seed=1000))
    fourth = {text for clip in long_multi.long_multi_candidates(long_multi.PHASE4_COUNT) for text in clip}
    assert not fourth & set(fresh_sentences(200, seed=1000))
    # training.recipe's plain sentences: drawn as the grammar draws them, common ones more than once
    plain = long_multi.plain_sentences()
    assert plain == long_multi.plain_sentences() and len(plain) == long_multi.PLAIN > len(set(plain))
    assert not set(plain) & (heldout_sentences(SPECS["v2"]) | set(fresh_sentences(200, seed=1000)))
    singles = long_multi.plan_plain(30, long_multi.SEED)
    assert [c.texts for c in singles] == [[text] for text in plain[:30]]
    assert {c.utterance.voice for c in singles} <= set(speech.TRAIN_VARIANTS)
    # read until the held-out length (15-28 s), by one training voice
    [clip] = long_multi.plan(1, long_multi.SEED)
    assert clip.utterance.kind == "multi" and clip.utterance.voice in speech.TRAIN_VARIANTS
    long = synthesize_split([clip], tmp_path, "flac", 1, "train_long", heldout=True)
    assert 15 <= long[0].seconds <= 30 and long[0].text.startswith(clip.texts[0])


def test_a_larger_build_renders_only_the_clips_an_earlier_one_did_not(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from training import long_multi

    rendered: list[str] = []
    synthesize = long_multi.synthesize_split

    def spy(planned: list, *args: object, **kwargs: object) -> list:
        rendered.extend(clip.utterance.file for clip in planned)
        return synthesize(planned, *args, **kwargs)
    monkeypatch.setattr(long_multi, "synthesize_split", spy)
    first = long_multi.render_missing(long_multi.plan_plain(2, long_multi.SEED), tmp_path, "plain", workers=1)
    assert rendered == ["train_plain/000000", "train_plain/000001"]
    manifest = tmp_path / "plain.jsonl"
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0], rows[1].replace(f'"voice": "{first[1].voice}"', '"voice": "other"')]))
    rendered.clear()
    larger = long_multi.render_missing(long_multi.plan_plain(3, long_multi.SEED), tmp_path, "plain", workers=1)
    # the first kept; the second's manifest entry names another voice, so it is rendered again, as is the new third
    assert rendered == ["train_plain/000001", "train_plain/000002"]
    assert larger[:2] == first and read_manifest(manifest) == larger


@pytest.mark.parametrize("has_bfloat16", [True, False])
def test_the_recipe_renders_then_trains_two_stages_in_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              has_bfloat16: bool) -> None:
    from training import recipe

    runs, rendered = [], []
    monkeypatch.setattr(recipe, "train", lambda first, then: runs.append((first, *then)))
    monkeypatch.setattr(recipe, "render", lambda: rendered.append(len(runs)))
    monkeypatch.setattr(recipe, "cpu_computes_bfloat16", lambda: has_bfloat16)
    assert recipe.run(tmp_path, tmp_path / "model", log=lambda line: None) == tmp_path / "model"
    assert rendered == [0] and len(runs) == 1  # rendered before training
    singles, mix = runs[0]
    assert (singles.init, singles.out, singles.train_manifest.name) == (None, tmp_path / "model", "train.jsonl")
    assert (singles.steps, singles.batch_frames, singles.spec_augment, singles.context_rate) == (2500, 0, 0, 0.0)
    assert mix.train_manifest.name == f"{recipe.MIX}.jsonl" and mix.work != singles.work
    assert (mix.steps, mix.batch_frames, mix.spec_augment, mix.context_rate) == (5000, 9600, 1, recipe.CONTEXT_RATE)
    # bfloat16 only where the CPU computes it: elsewhere a bfloat16 step takes ten times a float32 one
    precision, tag = ("bfloat16", "bf16") if has_bfloat16 else ("float32", "fp32")
    assert singles.precision == precision and singles.log.name == f"demo-model-{tag}.jsonl"

    monkeypatch.undo()  # the real render, with the corpus builders spied on
    builds = []
    monkeypatch.setattr(recipe, "build_corpus", lambda corpus, spec, **kwargs: builds.append(kwargs["splits"]))
    monkeypatch.setattr(recipe.long_multi, "build", lambda corpus, count, *args, **kwargs: builds.append(kwargs))
    recipe.render()
    multi = recipe.long_multi
    assert builds == [("train", "train_multi", "train_noise"),
                      {"workers": 2, "mix_name": recipe.MIX, "plain": multi.PLAIN, "rare": multi.RARE, "noise": 2500}]


def test_bfloat16_arithmetic_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    from training.train import cpu_computes_bfloat16

    cpuinfo = tmp_path / "cpuinfo"
    flags = "flags\t\t: fpu sse avx avx2 avx512f avx512bw avx512_vnni"
    for extra, expected in [("", False), (" avx512_bf16", True), (" amx_bf16 amx_tile", True)]:
        cpuinfo.write_text(f"processor\t: 0\n{flags}{extra}\n")
        assert cpu_computes_bfloat16(cpuinfo) is expected
    assert cpu_computes_bfloat16(tmp_path / "missing") is False
