"""Speech with exact word times, for the demo forced aligner: its training clips, and the reference times of the
committed held-out clips of one sentence.

Every clip is spoken by libespeak-ng (`training.espeak`: the command line's audio, with each word's start and end)
and then goes through the same augmentation as the demo model's corpus (`training.speech.augment`), whose leading
silence shifts the times. A held-out clip is re-spoken from its manifest row and seed: the same audio as its
committed file (before Opus), so the times fit the file.

    python -m training.aligner_data --heldout benchmarks/data/heldout     # writes word_times.jsonl there
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.corpus import HELDOUT_SPEC, SPECS, CorpusSpec, _utterance_seed, split_sentences
from training.espeak import Utterance, WordTime, speak_with_words
from training.speech import SAMPLE_RATE, TRAIN_VARIANTS, augment_with_offset, random_voice, to_model_rate

WORD_TIMES_FILE = "word_times.jsonl"
MAX_SENTENCES = 3  # training clips hold 1 to 3 sentences, so that words are timed across sentence pauses


@dataclass(frozen=True, slots=True)
class TimedClip:
    samples: np.ndarray  # float32 at 16 kHz, augmented
    text: str
    words: list[WordTime]  # shifted to the clip's times


def render_timed(utterances: list[Utterance], seeds: list[int], workers: int = 2,
                 desc: str = "speech") -> list[TimedClip | None]:
    """Each utterance spoken, augmented from its seed, with its word times in the clip; None where the
    synthesizer's words could not be matched."""
    clips: list[TimedClip | None] = []
    for utterance, seed, spoken in tqdm(zip(utterances, seeds, speak_with_words(utterances, workers)),
                                        total=len(utterances), desc=desc, unit="clip", mininterval=10):
        if spoken.words is None:
            clips.append(None)
            continue
        samples, before = augment_with_offset(to_model_rate(spoken.samples, spoken.sample_rate),
                                              np.random.default_rng(seed))
        shift = before / SAMPLE_RATE
        words = [WordTime(w.word, None if w.start is None else w.start + shift, None if w.end is None else
                          w.end + shift) for w in spoken.words]
        clips.append(TimedClip(samples, utterance.text, words))
    return clips


def training_utterances(count: int, seed: int) -> tuple[list[Utterance], list[int]]:
    """`count` clips of 1 to MAX_SENTENCES domain sentences (never a held-out one) in the training voices."""
    sentences = split_sentences(CorpusSpec(seed=0, train=count * 2))
    pool = sentences["train"]
    rng, voices = random.Random(seed), np.random.default_rng(seed)
    utterances, seeds = [], []
    for i in range(count):
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(1, MAX_SENTENCES)))
        voice = random_voice(voices, TRAIN_VARIANTS)
        utterances.append(Utterance(text, voice.name, voice.speed, voice.pitch))
        seeds.append(_utterance_seed(seed, "aligner", i))
    return utterances, seeds


def heldout_word_times(heldout: Path, workers: int = 2) -> list[dict]:
    """The committed held-out clips' word times (those of one sentence), re-spoken from their manifest rows and
    seeds."""
    rows = sentence_rows(heldout)
    utterances, seeds = [], []
    for row in rows:
        split, index = row["file"].rsplit(".", 1)[0].rsplit("-", 1)
        utterances.append(Utterance(row["text"], f"en-us+{row['voice']}", row["speed"], row["pitch"]))
        seeds.append(_utterance_seed(SPECS[HELDOUT_SPEC].seed, split, int(index)))
    clips = render_timed(utterances, seeds, workers, desc="held-out word times")
    records = []
    for row, clip in zip(rows, clips):
        if clip is None or abs(len(clip.samples) / SAMPLE_RATE - row["seconds"]) > 0.01:
            raise RuntimeError(f"{row['file']}: re-spoken audio does not match the committed clip")
        records.append({"file": row["file"], "words": [[w.word, _ms(w.start), _ms(w.end)] for w in clip.words]})
    return records


def sentence_rows(heldout: Path) -> list[dict]:
    """The manifest rows of the held-out clips that hold one sentence."""
    rows = [json.loads(line) for line in (heldout / "manifest.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("kind", "sentence") == "sentence"]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def read_word_times(heldout: Path) -> dict[str, list[tuple[str, float | None, float | None]]]:
    """file -> [(word, start s, end s)], None where the synthesizer ran words together."""
    return {record["file"]: [(word, None if start is None else start / 1000, None if end is None else end / 1000)
                             for word, start, end in record["words"]]
            for record in map(json.loads, (heldout / WORD_TIMES_FILE).read_text().splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description="reference word times of the committed held-out clips")
    parser.add_argument("--heldout", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    records = heldout_word_times(args.heldout, args.workers)
    (args.heldout / WORD_TIMES_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    known = sum(start is not None for r in records for _, start, _ in r["words"])
    total = sum(len(r["words"]) for r in records)
    print(f"{len(records)} clips, {total} words, {known} starts known ({known / total:.1%})")


if __name__ == "__main__":
    main()
