"""The demo model's training pipeline: domain grammar, corpus splits, synthesis, and a few training steps."""

import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.benchmarks.heldout import MANIFEST
from qasr.engine.checkpoint import load_weights
from qasr.engine.model_config import load_model_config
from training import domain, grammar, speech
from training.corpus import CorpusSpec, plan_split, split_sentences
from training.train import TrainConfig, train

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
    seen_voices = {u.voice for u, _ in plan_split(spec, "test_seen", splits["test_seen"])}
    unseen_voices = {u.voice for u, _ in plan_split(spec, "test_unseen", splits["test_unseen"])}
    train_voices = {u.voice for u, _ in plan_split(spec, "train", splits["train"])}
    assert unseen_voices == set(speech.UNSEEN_VARIANTS) and not unseen_voices & train_voices
    assert seen_voices <= train_voices == set(speech.TRAIN_VARIANTS)


def test_the_committed_heldout_set_is_the_corpus_test_split() -> None:
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    spec = CorpusSpec()
    splits = split_sentences(spec)
    planned = [asdict(u) for split in ("test_seen", "test_unseen") for u, _ in plan_split(spec, split, splits[split])]
    keys = ("text", "voice", "speed", "pitch", "seen_voice")
    assert [{k: r[k] for k in keys} for r in rows] == [{k: p[k] for k in keys} for p in planned]


def test_synthesis_is_deterministic_16khz_speech() -> None:
    voice = speech.Voice("m3", 160, 50)
    first = speech.render("Set a timer for ten minutes.", voice, seed=7)
    assert np.array_equal(first, speech.render("Set a timer for ten minutes.", voice, seed=7))
    assert not np.array_equal(first, speech.render("Set a timer for ten minutes.", voice, seed=8))
    assert 0.8 < len(first) / speech.SAMPLE_RATE < 4.0 and first.dtype == np.float32
    assert 0.01 < np.abs(first).max() <= 0.99


def test_a_few_training_steps_on_a_tiny_corpus_lower_the_loss(tmp_path: Path) -> None:
    # the committed held-out clips as the tiny corpus: no espeak-ng needed
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()][:24]
    manifest = tmp_path / "tiny.jsonl"
    manifest.write_text("".join(json.dumps(r | {"file": str(MANIFEST.parent / r["file"])}) + "\n" for r in rows))
    out = tmp_path / "model"
    result = train(TrainConfig(out=out, work=tmp_path / "work", log=tmp_path / "log.jsonl", train_manifest=manifest,
                               model="tiny", steps=60, batch_size=8, lr=3e-3, warmup=5, bpe_vocab=400,
                               eval_every=0, log_every=10))
    first, last = np.mean(result.losses[:6]), np.mean(result.losses[-6:])
    print(f"loss {first:.2f} -> {last:.2f}")
    assert last < 0.7 * first
    config = load_model_config(out)
    weights = load_weights(out, config, torch.float32)
    assert config.layout == "original" and not any("ctc" in name for name in weights)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(10, 61, 10))
