"""The synthetic speech corpus: domain sentences rendered by espeak-ng, split so that the test set is unseen.

Deterministic from a seed. Sentences of the validation and test splits never occur in the training split;
the test split has utterances in the training voices ("seen") and in a voice variant never trained on
("unseen"). Each split is a folder of 16 kHz audio files plus a JSON-lines manifest:
`{"file", "text", "voice", "speed", "pitch", "seen_voice", "seconds"}`.

    python -m training.corpus --out ~/.cache/qasr/corpus            # train, val and test splits (flac)
    python -m training.corpus --heldout benchmarks/data/heldout      # only the test split, small opus files
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from training.domain import sentence
from training.speech import SAMPLE_RATE, TRAIN_VARIANTS, UNSEEN_VARIANTS, Voice, random_voice, render

WORD = re.compile(r"[A-Za-z']+")
CANDIDATES = 6  # sentences drawn per pick; the one with the rarest word so far wins (flattens word counts)
HELDOUT_OPUS_LEVEL = 0.85  # libsndfile Opus compression level of the committed held-out files (~46 kbit/s)


@dataclass(frozen=True)
class CorpusSpec:
    seed: int = 0
    train: int = 40000
    val_seen: int = 200
    val_unseen: int = 100
    test_seen: int = 150
    test_unseen: int = 100


@dataclass(frozen=True)
class Utterance:
    file: str
    text: str
    voice: str
    speed: int
    pitch: int
    seen_voice: bool
    seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    path: str
    text: str
    voice: Voice
    seed: int
    audio_format: str  # "flac" | "opus"


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


def split_sentences(spec: CorpusSpec) -> dict[str, list[str]]:
    """Sentences per split; held-out sentences are drawn first and are unique, training avoids them all."""
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


def _utterance_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index + 1]).generate_state(1)[0])


def plan_split(spec: CorpusSpec, split: str, sentences: list[str]) -> list[tuple[Utterance, int]]:
    """Voices and per-utterance seeds for one split (`train`, `val_seen`, ..., `test_unseen`)."""
    seen = not split.endswith("unseen")
    rng = np.random.default_rng(_utterance_seed(spec.seed, split, -1))
    planned = []
    for i, text in enumerate(sentences):
        voice = random_voice(rng, TRAIN_VARIANTS if seen else UNSEEN_VARIANTS)
        utterance = Utterance(file=f"{split}/{i:06d}", text=text, voice=voice.variant, speed=voice.speed,
                              pitch=voice.pitch, seen_voice=seen)
        planned.append((utterance, _utterance_seed(spec.seed, split, i)))
    return planned


def _render_job(job: Job) -> float:
    samples = render(job.text, job.voice, job.seed)
    if job.audio_format == "opus":
        sf.write(job.path, samples, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=HELDOUT_OPUS_LEVEL)
    else:
        sf.write(job.path, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(samples) / SAMPLE_RATE


def synthesize_split(planned: list[tuple[Utterance, int]], root: Path, audio_format: str, workers: int,
                     desc: str) -> list[Utterance]:
    suffix = ".opus" if audio_format == "opus" else ".flac"
    jobs = []
    for utterance, seed in planned:
        path = root / (utterance.file + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append(Job(str(path), utterance.text, Voice(utterance.voice, utterance.speed, utterance.pitch), seed,
                        audio_format))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        seconds = list(tqdm(pool.imap(_render_job, jobs, chunksize=16), total=len(jobs), desc=desc, unit="utt"))
    return [Utterance(**(asdict(u) | {"file": u.file + suffix, "seconds": round(s, 3)}))
            for (u, _), s in zip(planned, seconds)]


def write_manifest(path: Path, utterances: Iterable[Utterance]) -> None:
    path.write_text("".join(json.dumps(asdict(u), ensure_ascii=False) + "\n" for u in utterances))


def read_manifest(path: Path) -> list[Utterance]:
    return [Utterance(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]


def build_corpus(out: Path, spec: CorpusSpec, workers: int | None = None,
                 splits: tuple[str, ...] = ("train", "val_seen", "val_unseen", "test_seen", "test_unseen")) -> None:
    """Writes `out/{split}/*.flac` and `out/{split}.jsonl`; a split whose manifest exists is kept."""
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    sentences = split_sentences(spec)
    for split in splits:
        manifest = out / f"{split}.jsonl"
        if manifest.exists():
            continue
        utterances = synthesize_split(plan_split(spec, split, sentences[split]), out, "flac", workers, split)
        write_manifest(manifest, utterances)


def build_heldout(out: Path, spec: CorpusSpec, workers: int | None = None) -> None:
    """The test split alone, as small Opus files in one folder with manifest.jsonl (the committed set)."""
    out.mkdir(parents=True, exist_ok=True)
    sentences = split_sentences(spec)
    utterances = []
    for split in ("test_seen", "test_unseen"):
        planned = [(Utterance(**(asdict(u) | {"file": u.file.replace("/", "-")})), seed)
                   for u, seed in plan_split(spec, split, sentences[split])]
        utterances += synthesize_split(planned, out, "opus", workers or os.cpu_count() or 1, split)
    write_manifest(out / "manifest.jsonl", utterances)


def main() -> None:
    parser = argparse.ArgumentParser(description="synthesize the demo model's speech corpus with espeak-ng")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write every split here (flac + one manifest per split)")
    target.add_argument("--heldout", type=Path, help="write only the test split here (opus + manifest.jsonl)")
    defaults = CorpusSpec()
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value, dest=name)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    spec = CorpusSpec(**{name: getattr(args, name) for name in asdict(defaults)})
    start = time.monotonic()
    if args.heldout:
        build_heldout(args.heldout, spec, args.workers)
    else:
        build_corpus(args.out, spec, args.workers)
    print(f"corpus written in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
