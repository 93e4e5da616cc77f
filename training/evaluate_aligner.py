"""How close a forced aligner's word times come to the reference times of the committed held-out clips
(`word_times.jsonl`, from the synthesizer): the reference transcripts aligned through qasr's own aligner path
(AlignmentProcessor + AlignerRunner, all clips batched), |start - reference| and |end - reference| in ms.

    python -m training.evaluate_aligner                       # the bundled demo aligner
    python -m training.evaluate_aligner --aligner DIR --clips 100
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qasr.benchmarks.heldout import HELDOUT
from qasr.engine.aligner_runner import load_aligner
from qasr.engine.audio import load_audio
from qasr.engine.demo import DEMO_ALIGNER_DIR
from training.aligner_data import read_word_times, sentence_rows

BATCH = 32  # clips per aligner pass


@dataclass(frozen=True)
class AlignmentErrors:
    clips: int
    words: int
    start_mean_ms: float
    start_p90_ms: float
    end_mean_ms: float
    end_p90_ms: float

    def table(self) -> str:
        return ("| held-out clips | words | start mean | start p90 | end mean | end p90 |\n"
                "| --- | --- | --- | --- | --- | --- |\n"
                f"| {self.clips} | {self.words} | {self.start_mean_ms:.0f} ms | {self.start_p90_ms:.0f} ms | "
                f"{self.end_mean_ms:.0f} ms | {self.end_p90_ms:.0f} ms |")


def evaluate_aligner(path: Path, heldout: Path = HELDOUT, clips: int | None = None) -> AlignmentErrors:
    processor, runner = load_aligner(path)
    references = read_word_times(heldout)
    rows = sentence_rows(heldout)[:clips]
    starts, ends = [], []
    for first in range(0, len(rows), BATCH):
        batch = rows[first:first + BATCH]
        samples = [load_audio(heldout / row["file"]) for row in batch]
        pieces = [processor.job(row["text"], clip, offset=0.0) for row, clip in zip(batch, samples)]
        classes = runner.align([p.job for p in pieces], {p.job.job_id: clip for p, clip in zip(pieces, samples)})
        for row, piece in zip(batch, pieces):
            words = processor.words(piece, classes[piece.job.job_id])
            reference = references[row["file"]]
            if [w.word for w in words] != [word for word, _, _ in reference]:
                raise ValueError(f"{row['file']}: the reference words are not the aligner's split of the text")
            starts += [abs(w.start - start) for w, (_, start, _) in zip(words, reference) if start is not None]
            ends += [abs(w.end - end) for w, (_, _, end) in zip(words, reference) if end is not None]
    starts_ms, ends_ms = np.asarray(starts) * 1000, np.asarray(ends) * 1000
    return AlignmentErrors(len(rows), sum(len(references[row["file"]]) for row in rows),
                           float(starts_ms.mean()), float(np.percentile(starts_ms, 90)),
                           float(ends_ms.mean()), float(np.percentile(ends_ms, 90)))


def main() -> None:
    parser = argparse.ArgumentParser(description="word-time errors of a forced aligner on the held-out clips")
    parser.add_argument("--aligner", type=Path, default=DEMO_ALIGNER_DIR)
    parser.add_argument("--clips", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(evaluate_aligner(args.aligner, clips=args.clips).table())


if __name__ == "__main__":
    main()
