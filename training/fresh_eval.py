"""WER of a model on freshly generated in-domain sentences that no training phase used nor the held-out set holds.

    python -m training.fresh_eval --count 300 --seed 1000            # the demo model, through `qasr transcribe`

Sentences are drawn from the grammar as any corpus draws them (so common phrases come up as often as they do in
use), dropping those heard in training; two thirds are read by the training voices, one third by the unseen one.
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
    HELDOUT_SPEC,
    SPECS,
    PlannedClip,
    Utterance,
    _utterance_seed,
    heldout_sentences,
    synthesize_split,
    training_sentences,
    write_manifest,
)
from training.domain import sentence
from training.long_multi import PHASE4_COUNT, long_multi_candidates, plain_sentences
from training.speech import TRAIN_VARIANTS, UNSEEN_VARIANTS, random_voice

SPLIT = "fresh"


def fresh_sentences(count: int, seed: int) -> list[str]:
    """`count` unique domain sentences never trained on and not in the held-out or validation splits."""
    spec = SPECS[HELDOUT_SPEC]
    known = training_sentences(spec) | heldout_sentences(spec)
    # the third and fourth phases' (all they could read; the fourth's first clips are the third's), and the plain
    # single sentences training.recipe adds to them
    known.update(text for clip in long_multi_candidates(PHASE4_COUNT) for text in clip)
    known.update(plain_sentences())
    rng, chosen = random.Random(seed), []
    while len(chosen) < count:
        text = sentence(rng)
        if text not in known:
            chosen.append(text)
            known.add(text)
    return chosen


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
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the demo model)")
    parser.add_argument("--errors", action="store_true", help="also print every sentence with an error")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clips = plan(fresh_sentences(args.count, args.seed), args.seed)
        write_manifest(root / "manifest.jsonl", synthesize_split(clips, root, "flac", os.cpu_count() or 1, SPLIT))
        scores, rows = heldout_scores(args.model, root / "manifest.jsonl")
    if args.errors:
        for row in rows:
            if row["text"] != row["hypothesis"]:
                print(f"{row['voice']}: {row['text']}\n    -> {row['hypothesis']}")
    print(f"{args.count} fresh sentences (seed {args.seed}):\n{table(scores)}")


if __name__ == "__main__":
    main()
