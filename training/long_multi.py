"""Clips of several sentences as long as the held-out ones, and the mixes that train on them.

The second phase's clips of several sentences hold 2-6 sentences (median 13.6 s, a tenth past 21 s), while the
held-out ones are read until 15-28 s (median 24 s): the model had barely heard its place kept that far into a clip.
This phase adds clips read the held-out way (up to 12 candidates, until 15-28 s), from training sentences only,
and trains on them with the second phase's clips of several sentences, a sample of its single sentences and of its
clips without speech, so that neither is forgotten:

    python -m training.long_multi                  # into the v2 corpus: train_long/ and phase3.jsonl (2 min)
    python -m training.train --init DIR_OF_PHASE_2 --train-manifest ~/.cache/qasr/demo-corpus-v2/phase3.jsonl \\
        --work /tmp/demo-work-v3 --steps 2700 --lr 3e-4 --warmup 100 --eval-every 100000 \\
        --log training/logs/demo-model-v3.jsonl --out /tmp/demo-v3                 # 25 min
    python -m training.long_multi --count 3600 --mix-name phase4   # phase 4: the same 1800 clips and 1800 more
    python -m training.train --init /tmp/demo-v3 --train-manifest ~/.cache/qasr/demo-corpus-v2/phase4.jsonl \
        --work /tmp/demo-work-v4 --steps 2700 --lr 2e-4 --warmup 50 --eval-every 100000 \
        --log training/logs/demo-model-v4.jsonl --out engine/assets/demo-model     # 21 min
    python -m training.long_multi --count 3600 --plain 4000 --rare 3600 --mix-name phase5   # the old recipe's fifth

training.recipe's second stage trains on one such mix (training.recipe.render builds it); the commands above are the
phases that made the models before it.

The fifth phase's clips of rare derivations (train_rare/) are read as the held-out ones are made: sentences drawn by
derivations of probability at most 1e-6, each once, so the model has to read them rather than recall them.

Deterministic from the seed (and the v2 corpus, which it reads).
"""

from __future__ import annotations

import argparse
import functools
import random
from pathlib import Path

import numpy as np

from training.corpus import (
    SPECS,
    PlannedClip,
    Utterance,
    _utterance_seed,
    heldout_sentences,
    rare_sentences,
    read_manifest,
    sample_sentences,
    synthesize_split,
    write_manifest,
)
from training.domain import sentence
from training.speech import TRAIN_VARIANTS, random_voice

CORPUS = Path.home() / ".cache" / "qasr" / "demo-corpus-v2"
SPLIT = "train_long"
CANDIDATES = 12  # sentences a clip may read, in order, until it is long enough (as a held-out clip's)
SEED = 77
COUNT = 1800
PHASE4_COUNT = 3600  # the fourth phase: the same first 1800 clips, then as many more
SINGLES, NOISE = 5000, 800  # sampled from the v2 corpus's training splits; its clips of several sentences all go in
# single sentences drawn as the grammar draws them (training.recipe's phases; 0 in the float32 model's): the corpora
# keep the candidate with the rarest words, so the commonest short phrases were the ones least trained on
PLAIN_SPLIT, PLAIN = "train_plain", 4000
RARE_SPLIT, RARE = "train_rare", 3600  # clips of rare derivations (training.recipe's fifth phase)


@functools.cache  # seconds of sampling, asked for again by fresh_eval and the tests: callers only read it
def long_multi_candidates(count: int = COUNT, seed: int = SEED) -> list[list[str]]:
    """Each clip's candidate sentences: training sentences (never a held-out one), drawn as the corpus draws."""
    pool = sample_sentences(count * CANDIDATES, random.Random(seed), exclude=heldout_sentences(SPECS["v2"]))
    return [pool[i * CANDIDATES:(i + 1) * CANDIDATES] for i in range(count)]


@functools.cache
def rare_multi_candidates(count: int = RARE, seed: int = SEED) -> list[list[str]]:
    """Each clip's candidates as a held-out clip's are drawn (rare derivations, each sentence once), never a
    held-out one: sentences the model has not heard elsewhere, which it can only read, not recall."""
    pool = rare_sentences(count * CANDIDATES, SPECS["v2"].heldout_max_probability, random.Random(seed + 5),
                          exclude=heldout_sentences(SPECS["v2"]))
    return [pool[i * CANDIDATES:(i + 1) * CANDIDATES] for i in range(count)]


def plain_sentences(count: int = PLAIN, seed: int = SEED) -> list[str]:
    """Sentences as the grammar draws them (a common one may come twice), never a held-out one."""
    rng, heldout, chosen = random.Random(seed + 3), heldout_sentences(SPECS["v2"]), []
    while len(chosen) < count:
        text = sentence(rng)
        if text not in heldout:
            chosen.append(text)
    return chosen


def plan_plain(count: int, seed: int) -> list[PlannedClip]:
    rng = np.random.default_rng(seed + 3)
    planned = []
    for i, text in enumerate(plain_sentences(count, seed)):
        voice = random_voice(rng, TRAIN_VARIANTS)
        utterance = Utterance(file=f"{PLAIN_SPLIT}/{i:06d}", text=text, voice=voice.variant, speed=voice.speed,
                              pitch=voice.pitch, seen_voice=True)
        planned.append(PlannedClip(utterance, _utterance_seed(seed, PLAIN_SPLIT, i), [text]))
    return planned


def plan(count: int, seed: int, split: str = SPLIT) -> list[PlannedClip]:
    """The clips of training sentences (SPLIT), or of rare derivations never held out (RARE_SPLIT)."""
    if split == SPLIT:
        candidates, rng = long_multi_candidates(count, seed), np.random.default_rng(seed)
    else:
        candidates, rng = rare_multi_candidates(count, seed), np.random.default_rng(seed + 5)
    planned = []
    for i, texts in enumerate(candidates):
        voice = random_voice(rng, TRAIN_VARIANTS)
        utterance = Utterance(file=f"{split}/{i:06d}", text=" ".join(texts), voice=voice.variant, speed=voice.speed,
                              pitch=voice.pitch, seen_voice=True, kind="multi")
        planned.append(PlannedClip(utterance, _utterance_seed(seed, split, i), texts))
    return planned


def render_missing(planned: list[PlannedClip], corpus: Path, split: str, workers: int, heldout: bool = False
                   ) -> list[Utterance]:
    """The planned clips of corpus/{split}/, with their manifest corpus/{split}.jsonl: a clip that manifest already
    holds as planned (same file, voice and sentences; an earlier build of the same seed) is kept, not rendered again,
    so phase 4 renders only the clips phase 3 did not."""
    manifest = corpus / f"{split}.jsonl"
    done = {u.file: u for u in read_manifest(manifest)} if manifest.exists() else {}

    def rendered(clip: PlannedClip) -> Utterance | None:
        u, old = clip.utterance, done.get(clip.utterance.file + ".flac")
        if old is None or (old.voice, old.speed, old.pitch) != (u.voice, u.speed, u.pitch):
            return None
        return old if " ".join(clip.texts).startswith(old.text) and (corpus / old.file).exists() else None

    kept = [rendered(clip) for clip in planned]
    missing = [clip for clip, old in zip(planned, kept) if old is None]
    fresh = iter(synthesize_split(missing, corpus, "flac", workers, split, heldout) if missing else [])
    utterances = [old or next(fresh) for old in kept]
    write_manifest(manifest, utterances)
    return utterances


def build(corpus: Path, count: int, seed: int, workers: int, mix_name: str = "phase3",
          plain: int = 0, rare: int = 0, noise: int = NOISE) -> list[Utterance]:
    """Renders the clips into corpus/train_long/ and writes corpus/{mix_name}.jsonl, the phase's shuffled mix (a
    larger count renders the same first clips, then more); `plain` single sentences drawn as the grammar draws
    them (corpus/train_plain/) join the mix, and `noise` of the corpus's clips without speech."""
    # heldout=True: a clip is read until 15-28 s (corpus.HELDOUT_MULTI_SECONDS), as a held-out clip is
    long = render_missing(plan(count, seed), corpus, SPLIT, workers, heldout=True)
    rng = random.Random(seed + 1)
    mix = (long + read_manifest(corpus / "train_multi.jsonl")
           + rng.sample(read_manifest(corpus / "train.jsonl"), SINGLES)
           + rng.sample(read_manifest(corpus / "train_noise.jsonl"), noise))
    if plain:
        mix += render_missing(plan_plain(plain, seed), corpus, PLAIN_SPLIT, workers)
    if rare:
        mix += render_missing(plan(rare, seed, RARE_SPLIT), corpus, RARE_SPLIT, workers, heldout=True)
    rng.shuffle(mix)
    write_manifest(corpus / f"{mix_name}.jsonl", mix)
    return long


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the v2 corpus (python -m training.corpus "
                                                                    "--spec v2 --out ...)")
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mix-name", default="phase3", help="the mix's manifest: corpus/NAME.jsonl")
    parser.add_argument("--plain", type=int, default=0, help="single sentences drawn as the grammar draws them")
    parser.add_argument("--rare", type=int, default=0, help="clips of several rare derivations (train_rare/)")
    args = parser.parse_args()
    long = build(args.corpus, args.count, args.seed, args.workers, args.mix_name, args.plain, args.rare)
    seconds = np.array([u.seconds for u in long])
    print(f"{len(long)} clips, seconds at 10/50/90%: {np.percentile(seconds, [10, 50, 90]).round(1)}")


if __name__ == "__main__":
    main()
