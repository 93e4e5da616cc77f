"""The synthetic speech corpus: domain sentences rendered by espeak-ng, split so that the test set is unseen.

Deterministic from a seed. Sentences of the validation and test splits never occur in the training split;
the test split has utterances in the training voices ("seen") and in a voice variant never trained on
("unseen"). Each split is a folder of 16 kHz audio files plus a JSON-lines manifest:
`{"file", "text", "voice", "speed", "pitch", "seen_voice", "seconds", "kind"}`.

Two corpora: `v1` (the first demo model: one sentence per clip, held-out sentences drawn like any other) and `v2`
(the second training phase: also clips of 2-6 sentences up to 30 s, and clips of silence or noise whose
transcript is empty; held-out sentences are rare derivations of the grammar, never in either phase's training).
A split's kind follows its name: `*_multi` clips hold several sentences, `*_noise` clips none.

    python -m training.corpus --spec v2 --out ~/.cache/qasr/demo-corpus-v2   # train and val splits (flac)
    python -m training.corpus --spec v2 --heldout benchmarks/data/heldout     # the test splits, small opus files
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from training.domain import sentence, sentence_with_probability
from training.grammar import WORD
from training.noise import HELDOUT_NOISE, KINDS, TRAIN_NOISE, random_noise_clip
from training.speech import (
    MAX_CLIP_SECONDS,
    SAMPLE_RATE,
    TRAIN_VARIANTS,
    UNSEEN_VARIANTS,
    Voice,
    random_voice,
    render,
    render_sentences,
)

CANDIDATES = 6  # sentences drawn per pick; the one with the rarest word so far wins (flattens word counts)
HELDOUT_OPUS_LEVEL = 0.85  # libsndfile Opus compression level of the committed held-out files (~46 kbit/s)
MULTI_SENTENCES = (2, 6)  # sentences per training clip of several
HELDOUT_MULTI_SECONDS = (15.0, 28.0)  # a held-out clip of several sentences is read until it is this long
HELDOUT_MULTI_CANDIDATES = 12  # held-out sentences set aside per such clip (the ones not read stay unused)


@dataclass(frozen=True)
class CorpusSpec:
    seed: int = 0
    train: int = 40000
    val_seen: int = 200
    val_unseen: int = 100
    test_seen: int = 150
    test_unseen: int = 100
    train_multi: int = 0
    val_multi: int = 0
    test_multi: int = 0
    train_noise: int = 0
    val_noise: int = 0
    test_noise: int = 0
    heldout_max_probability: float | None = None  # held-out sentences only from rarer derivations than this
    after: str | None = None  # a corpus (in SPECS) trained on before: its training sentences are never held out

    @property
    def splits(self) -> tuple[str, ...]:
        named = ("train", "train_multi", "train_noise", "val_seen", "val_unseen", "val_multi", "val_noise",
                 "test_seen", "test_unseen", "test_multi", "test_noise")
        return tuple(name for name in named if getattr(self, name))


@dataclass(frozen=True)
class Utterance:
    file: str
    text: str
    voice: str
    speed: int
    pitch: int
    seen_voice: bool
    seconds: float = 0.0
    kind: str = "sentence"  # "sentence" | "multi" (several sentences) | "noise" (no speech: voice is the noise kind)


@dataclass(frozen=True)
class Job:
    path: str
    texts: list[str]  # one sentence; a multi clip's candidates in order; none for noise
    voice: Voice | None  # None for noise
    seed: int
    audio_format: str  # "flac" | "opus"
    kind: str
    noise_kind: str = ""
    heldout: bool = False


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def sample_sentences(count: int, rng: random.Random, exclude: set[str] = frozenset(),
                     unique: bool = False) -> list[str]:
    """`count` domain sentences, each the one of a few candidates whose rarest word is rarest so far."""
    counts: Counter[str] = Counter()
    chosen: list[str] = []
    taken: set[str] = set()
    while len(chosen) < count:
        candidates = [s for s in (sentence(rng) for _ in range(CANDIDATES))
                      if s not in exclude and not (unique and s in taken)]
        if not candidates:
            continue
        best = min(candidates, key=lambda s: min(counts[w] for w in _words(s)))
        chosen.append(best)
        taken.add(best)
        counts.update(_words(best))
    return chosen


@functools.cache
def split_sentences(spec: CorpusSpec) -> dict[str, list]:
    """Sentences per split (a multi split: a list of sentences per clip); held-out sentences are drawn first and
    are unique, training avoids them all."""
    if spec.heldout_max_probability is None:
        return _split_sentences_v1(spec)
    rng = random.Random(spec.seed)
    trained_before = set(split_sentences(SPECS[spec.after])["train"]) if spec.after else set()
    single = {name: getattr(spec, name) for name in ("test_seen", "test_unseen", "val_seen", "val_unseen")}
    multi = {name: getattr(spec, name) for name in ("test_multi", "val_multi")}
    heldout = rare_sentences(sum(single.values()) + HELDOUT_MULTI_CANDIDATES * sum(multi.values()),
                             spec.heldout_max_probability, rng, exclude=trained_before)
    splits: dict[str, list] = {}
    start = 0
    for name, size in single.items():
        splits[name], start = heldout[start:start + size], start + size
    for name, size in multi.items():
        splits[name] = [heldout[start + i * HELDOUT_MULTI_CANDIDATES:start + (i + 1) * HELDOUT_MULTI_CANDIDATES]
                        for i in range(size)]
        start += size * HELDOUT_MULTI_CANDIDATES
    excluded = set(heldout)
    splits["train"] = sample_sentences(spec.train, random.Random(spec.seed + 1), exclude=excluded)
    pool = sample_sentences(spec.train_multi * MULTI_SENTENCES[1], random.Random(spec.seed + 2), exclude=excluded)
    lengths = random.Random(spec.seed + 3)
    splits["train_multi"] = [pool[i * MULTI_SENTENCES[1]:][:lengths.randint(*MULTI_SENTENCES)]
                             for i in range(spec.train_multi)]
    for name in ("train_noise", "val_noise", "test_noise"):
        splits[name] = [[] for _ in range(getattr(spec, name))]
    return {name: sentences for name, sentences in splits.items() if name in spec.splits}


def rare_sentences(count: int, max_probability: float, rng: random.Random, exclude: set[str]) -> list[str]:
    """`count` unique sentences each drawn by a derivation of probability at most `max_probability` (and never
    drawn before by a likelier one)."""
    chosen: list[str] = []
    taken = set(exclude)
    while len(chosen) < count:
        text, probability = sentence_with_probability(rng)
        if probability <= max_probability and text not in taken:
            chosen.append(text)
        taken.add(text)
    return chosen


def _split_sentences_v1(spec: CorpusSpec) -> dict[str, list[str]]:
    rng = random.Random(spec.seed)
    heldout = sample_sentences(spec.test_seen + spec.test_unseen + spec.val_seen + spec.val_unseen, rng,
                               unique=True)
    sizes = {"test_seen": spec.test_seen, "test_unseen": spec.test_unseen, "val_seen": spec.val_seen,
             "val_unseen": spec.val_unseen}
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = heldout[start:start + size]
        start += size
    splits["train"] = sample_sentences(spec.train, random.Random(spec.seed + 1), exclude=set(heldout))
    return splits


def training_sentences(spec: CorpusSpec) -> set[str]:
    """Every sentence a model trained on `spec` (and the corpora before it) has heard."""
    splits = split_sentences(spec)
    heard = set(splits.get("train", ()))
    heard.update(s for clip in splits.get("train_multi", ()) for s in clip)
    return heard | (training_sentences(SPECS[spec.after]) if spec.after else set())


def heldout_sentences(spec: CorpusSpec) -> set[str]:
    """Every sentence the validation and test splits of `spec` hold (a multi clip's unread candidates too)."""
    splits = split_sentences(spec)
    return {s for name, items in splits.items() if not name.startswith("train")
            for item in items for s in ([item] if isinstance(item, str) else item)}


SPECS: dict[str, CorpusSpec] = {
    "v1": CorpusSpec(),
    "v2": CorpusSpec(seed=2, train=24000, val_seen=100, val_unseen=50, test_seen=150, test_unseen=100,
                     train_multi=3500, val_multi=10, test_multi=30, train_noise=2500, val_noise=30, test_noise=100,
                     heldout_max_probability=1e-6, after="v1"),
}
HELDOUT_SPEC = "v2"  # the corpus whose test splits are committed in benchmarks/data/heldout


def _utterance_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index + 1]).generate_state(1)[0])


@dataclass(frozen=True)
class PlannedClip:
    utterance: Utterance  # text and seconds final once rendered (a multi clip holds the sentences that fit)
    seed: int
    texts: list[str]


def split_kind(split: str) -> str:
    return "multi" if split.endswith("_multi") else "noise" if split.endswith("_noise") else "sentence"


def plan_split(spec: CorpusSpec, split: str, items: list) -> list[PlannedClip]:
    """Voices (or noise kinds) and per-clip seeds for one split (`train`, `val_seen`, ..., `test_noise`); `items`
    is the split's entry of `split_sentences`."""
    kind = split_kind(split)
    seen = not split.endswith("unseen")
    rng = np.random.default_rng(_utterance_seed(spec.seed, split, -1))
    planned = []
    for i, item in enumerate(items):
        file, seed = f"{split}/{i:06d}", _utterance_seed(spec.seed, split, i)
        if kind == "noise":  # held-out splits cycle through the kinds, training draws them
            noise = KINDS[i % len(KINDS)] if not split.startswith("train") else str(rng.choice(KINDS))
            utterance = Utterance(file=file, text="", voice=noise, speed=0, pitch=0, seen_voice=False, kind=kind)
            planned.append(PlannedClip(utterance, seed, []))
            continue
        voice = random_voice(rng, TRAIN_VARIANTS if seen else UNSEEN_VARIANTS)
        texts = [item] if kind == "sentence" else list(item)
        utterance = Utterance(file=file, text=" ".join(texts), voice=voice.variant, speed=voice.speed,
                              pitch=voice.pitch, seen_voice=seen, kind=kind)
        planned.append(PlannedClip(utterance, seed, texts))
    return planned


def _render_job(job: Job) -> tuple[float, str]:
    if job.kind == "noise":
        noise_range = HELDOUT_NOISE if job.heldout else TRAIN_NOISE
        samples = random_noise_clip(np.random.default_rng(job.seed), noise_range, job.noise_kind)[1]
        text = ""
    elif job.kind == "multi":
        min_seconds = float(np.random.default_rng([job.seed, 1]).uniform(*HELDOUT_MULTI_SECONDS)) if job.heldout else 0
        samples, texts = render_sentences(job.texts, job.voice, job.seed, MAX_CLIP_SECONDS, min_seconds)
        text = " ".join(texts)
    else:
        samples, text = render(job.texts[0], job.voice, job.seed), job.texts[0]
    if job.audio_format == "opus":
        sf.write(job.path, samples, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=HELDOUT_OPUS_LEVEL)
    else:
        sf.write(job.path, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(samples) / SAMPLE_RATE, text


def synthesize_split(planned: list[PlannedClip], root: Path, audio_format: str, workers: int, desc: str,
                     heldout: bool = False) -> list[Utterance]:
    suffix = ".opus" if audio_format == "opus" else ".flac"
    jobs = []
    for clip in planned:
        u = clip.utterance
        path = root / (u.file + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        voice = None if u.kind == "noise" else Voice(u.voice, u.speed, u.pitch)
        jobs.append(Job(str(path), clip.texts, voice, clip.seed, audio_format, u.kind,
                        noise_kind=u.voice if u.kind == "noise" else "", heldout=heldout))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        rendered = list(tqdm(pool.imap(_render_job, jobs, chunksize=16), total=len(jobs), desc=desc, unit="clip"))
    return [Utterance(**(asdict(clip.utterance) | {"file": clip.utterance.file + suffix, "text": text,
                                                    "seconds": round(seconds, 3)}))
            for clip, (seconds, text) in zip(planned, rendered)]


def write_manifest(path: Path, utterances: Iterable[Utterance]) -> None:
    path.write_text("".join(json.dumps(asdict(u), ensure_ascii=False) + "\n" for u in utterances))


def read_manifest(path: Path) -> list[Utterance]:
    return [Utterance(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]


def build_corpus(out: Path, spec: CorpusSpec, workers: int | None = None,
                 splits: tuple[str, ...] | None = None) -> None:
    """Writes `out/{split}/*.flac` and `out/{split}.jsonl` (every split of `spec` unless named); a split whose
    manifest exists is kept."""
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    sentences = split_sentences(spec)
    for split in splits or spec.splits:
        manifest = out / f"{split}.jsonl"
        if manifest.exists():
            continue
        utterances = synthesize_split(plan_split(spec, split, sentences[split]), out, "flac", workers, split)
        write_manifest(manifest, utterances)


def build_heldout(out: Path, spec: CorpusSpec, workers: int | None = None) -> None:
    """The test splits alone, as small Opus files in one folder with manifest.jsonl (the committed set)."""
    out.mkdir(parents=True, exist_ok=True)
    sentences = split_sentences(spec)
    utterances = []
    for split in (name for name in spec.splits if name.startswith("test")):
        planned = [PlannedClip(Utterance(**(asdict(p.utterance) | {"file": p.utterance.file.replace("/", "-")})),
                               p.seed, p.texts)
                   for p in plan_split(spec, split, sentences[split])]
        utterances += synthesize_split(planned, out, "opus", workers or os.cpu_count() or 1, split, heldout=True)
    write_manifest(out / "manifest.jsonl", utterances)


def main() -> None:
    parser = argparse.ArgumentParser(description="synthesize the demo model's speech corpus with espeak-ng")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write the training and validation splits here (flac + manifests)")
    target.add_argument("--heldout", type=Path, help="write only the test splits here (opus + manifest.jsonl)")
    parser.add_argument("--spec", choices=sorted(SPECS), default=HELDOUT_SPEC)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    spec = SPECS[args.spec]
    start = time.monotonic()
    if args.heldout:
        build_heldout(args.heldout, spec, args.workers)
    else:
        build_corpus(args.out, spec, args.workers, tuple(s for s in spec.splits if not s.startswith("test")))
    print(f"corpus written in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
