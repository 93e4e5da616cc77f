"""WER of a model on freshly generated in-domain sentences that no training phase used nor the held-out set holds.

    python -m training.fresh_eval --count 300 --seed 1000            # the demo model, through `qasr transcribe`
    python -m training.fresh_eval --count 0 --multi 100 --seed 2000  # 100 clips of several sentences, 15-28 s
    python -m training.fresh_eval --model A --model B ...            # two models on the same clips

Sentences are drawn from the grammar as any corpus draws them (so common phrases come up as often as they do in
use), dropping those heard in training; two thirds are read by the training voices, one third by the unseen one.
Clips of several sentences are made as the held-out ones are (rare derivations, read by a training voice until
15-28 s, Opus): thirty held-out clips move by a point or two when one clip repeats or drops a sentence, so a
hundred fresh ones tell two models apart where those cannot.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

import numpy as np

from qasr.benchmarks.heldout import heldout_scores, table
from training.corpus import (
    HELDOUT_MULTI_CANDIDATES,
    HELDOUT_SPEC,
    SPECS,
    PlannedClip,
    Utterance,
    _utterance_seed,
    heldout_sentences,
    rare_sentences,
    synthesize_split,
    training_sentences,
    write_manifest,
)
from training.domain import sentence
from training.long_multi import PHASE4_COUNT, long_multi_candidates, plain_sentences, rare_multi_candidates
from training.speech import TRAIN_VARIANTS, UNSEEN_VARIANTS, random_voice

SPLIT = "fresh"


def known_sentences() -> set[str]:
    """Every sentence a training phase used, and those of the held-out and validation splits."""
    spec = SPECS[HELDOUT_SPEC]
    known = training_sentences(spec) | heldout_sentences(spec)
    # the third and fourth phases' (all they could read; the fourth's first clips are the third's), and the plain
    # single sentences training.recipe adds to them
    known.update(text for clip in long_multi_candidates(PHASE4_COUNT) for text in clip)
    known.update(plain_sentences())
    known.update(text for clip in rare_multi_candidates() for text in clip)
    return known


def fresh_sentences(count: int, seed: int) -> list[str]:
    """`count` unique domain sentences never trained on and not in the held-out or validation splits."""
    known = known_sentences()
    rng, chosen = random.Random(seed), []
    while len(chosen) < count:
        text = sentence(rng)
        if text not in known:
            chosen.append(text)
            known.add(text)
    return chosen


def fresh_multi_candidates(count: int, seed: int) -> list[list[str]]:
    """Each of `count` clips' candidate sentences, as a held-out clip's: rare derivations, unique, never trained on
    nor held out."""
    pool = rare_sentences(count * HELDOUT_MULTI_CANDIDATES, SPECS[HELDOUT_SPEC].heldout_max_probability,
                          random.Random(seed + 1), known_sentences())
    return [pool[i * HELDOUT_MULTI_CANDIDATES:(i + 1) * HELDOUT_MULTI_CANDIDATES] for i in range(count)]


def plan_multi(candidates: list[list[str]], seed: int) -> list[PlannedClip]:
    rng = np.random.default_rng(seed + 1)
    planned = []
    for i, texts in enumerate(candidates):
        voice = random_voice(rng, TRAIN_VARIANTS)  # as the held-out clips of several sentences
        utterance = Utterance(file=f"{SPLIT}-multi-{i:06d}", text=" ".join(texts), voice=voice.variant,
                              speed=voice.speed, pitch=voice.pitch, seen_voice=True, kind="multi")
        planned.append(PlannedClip(utterance, _utterance_seed(seed, SPLIT + "_multi", i), texts))
    return planned


def plan(sentences: list[str], seed: int) -> list[PlannedClip]:
    rng = np.random.default_rng(seed)
    planned = []
    for i, text in enumerate(sentences):
        seen = i % 3 != 2
        voice = random_voice(rng, TRAIN_VARIANTS if seen else UNSEEN_VARIANTS)
        utterance = Utterance(file=f"{SPLIT}-{i:06d}", text=text, voice=voice.variant, speed=voice.speed,
                              pitch=voice.pitch, seen_voice=seen)
        planned.append(PlannedClip(utterance, _utterance_seed(seed, SPLIT, i), [text]))
    return planned


def main() -> None:
    parser = argparse.ArgumentParser(description="WER on freshly generated sentences never trained on")
    parser.add_argument("--count", type=int, default=300, help="single sentences")
    parser.add_argument("--multi", type=int, default=0, help="clips of several sentences (15-28 s)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--model", action="append", help="checkpoint folder (default: the demo model); given "
                                                         "more than once, each model reads the same clips")
    parser.add_argument("--errors", action="store_true", help="also print every sentence with an error")
    args = parser.parse_args()
    if args.count < 0 or args.multi < 0 or not args.count + args.multi:
        parser.error("give --count or --multi a positive number of clips (and neither a negative one)")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        workers = os.cpu_count() or 1
        utterances = synthesize_split(plan(fresh_sentences(args.count, args.seed), args.seed), root, "flac",
                                      workers, SPLIT) if args.count else []
        if args.multi:  # heldout=True: read until 15-28 s, Opus, as the held-out clips
            utterances += synthesize_split(plan_multi(fresh_multi_candidates(args.multi, args.seed), args.seed),
                                           root, "opus", workers, SPLIT + " multi", heldout=True)
        write_manifest(root / "manifest.jsonl", utterances)
        results = [(model, *heldout_scores(model, root / "manifest.jsonl")) for model in args.model or [None]]
    for model, scores, rows in results:
        if args.errors:
            for row in rows:
                if row["text"] != row["hypothesis"]:
                    print(f"{row['voice']}: {row['text']}\n    -> {row['hypothesis']}")
        print(f"{model or 'the demo model'} on {args.count} fresh sentences and {args.multi} clips of several "
              f"(seed {args.seed}):\n{table(scores)}")


if __name__ == "__main__":
    main()
