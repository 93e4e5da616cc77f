"""WER of a model on the committed held-out set, transcribed by `qasr transcribe`.

    python -m benchmarks.heldout                  # the bundled demo model (qasr's default --model)
    python -m benchmarks.heldout --model DIR      # any checkpoint
    python -m benchmarks.heldout --context "timers, alarms and reminders"   # with a context in the system turn

The set (benchmarks/data/heldout) holds sentences never trained on, in voices seen in training and in
one voice variant never trained on, clips of several such sentences (15-30 s), and clips of silence or noise
that should give no text; the table gives corpus WER per group of speech clips, and how many clips without
speech came back empty.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

HELDOUT = Path(__file__).parent / "data" / "heldout"
MANIFEST = HELDOUT / "manifest.jsonl"


@dataclass(frozen=True)
class Score:
    group: str
    utterances: int
    words: int
    wer: float | None  # None for clips without speech
    empty: float | None = None  # the share of clips without speech that gave no text


def read_manifest(manifest: Path = MANIFEST) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def transcribe_files(files: list[Path], model: str | None = None, extra_args: tuple[str, ...] = ()) -> list[str]:
    """Texts of `files` from `qasr transcribe --format json --output-dir` (one JSON file per input)."""
    from qasr.cli import main

    with tempfile.TemporaryDirectory() as out:
        args = ["transcribe", *map(str, files), "--format", "json", "--quiet", "--output-dir", out, *extra_args]
        if model:
            args += ["--model", model]
        if main(args) != 0:
            raise RuntimeError("qasr transcribe failed")
        return [json.loads((Path(out) / f"{Path(f).stem}.json").read_text())["text"] for f in files]


def heldout_scores(model: str | None = None, manifest: Path = MANIFEST,
                   context: str = "") -> tuple[list[Score], list[dict]]:
    """Scores for single sentences in seen voices and in the unseen voice, clips of several sentences, all
    speech, and clips without speech; and the rows with their hypotheses. `context`: every clip's context (the
    OpenAI `prompt`)."""
    from qasr.benchmarks.wer import corpus_wer, normalize_english  # jiwer: only to score (bench step reads rows)

    rows = read_manifest(manifest)
    hypotheses = transcribe_files([manifest.parent / row["file"] for row in rows], model,
                                  ("--context", context) if context else ())
    # a manifest written before clips had kinds holds single sentences
    rows = [{"kind": "sentence"} | row | {"hypothesis": hypothesis} for row, hypothesis in zip(rows, hypotheses)]
    sentences = [r for r in rows if r["kind"] == "sentence"]
    unseen = sorted({row["voice"] for row in sentences if not row["seen_voice"]})
    speech = {"seen voices": [r for r in sentences if r["seen_voice"]],
              f"unseen voice ({', '.join(unseen)})": [r for r in sentences if not r["seen_voice"]],
              "several sentences (15-30 s)": [r for r in rows if r["kind"] == "multi"],
              "all speech": [r for r in rows if r["kind"] != "noise"]}
    scores = [Score(name, len(group), sum(len(normalize_english(r["text"]).split()) for r in group),
                    corpus_wer([r["text"] for r in group], [r["hypothesis"] for r in group]))
              for name, group in speech.items() if group]
    quiet = [r for r in rows if r["kind"] == "noise"]
    if quiet:
        scores.append(Score("silence and noise", len(quiet), 0, None,
                            sum(not r["hypothesis"] for r in quiet) / len(quiet)))
    return scores, rows


def table(scores: list[Score]) -> str:
    lines = ["| clips | count | words | WER | empty text |", "| --- | ---: | ---: | ---: | ---: |"]
    for s in scores:
        wer = "" if s.wer is None else f"{100 * s.wer:.2f}%"
        empty = "" if s.empty is None else f"{100 * s.empty:.1f}%"
        lines.append(f"| {s.group} | {s.utterances} | {s.words} | {wer} | {empty} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="WER on the committed held-out set via qasr transcribe")
    parser.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the demo model)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--errors", action="store_true", help="also print every utterance with an error")
    parser.add_argument("--context", default="", help="context text (hotwords, the OpenAI prompt) for every clip")
    args = parser.parse_args()
    from qasr.benchmarks.wer import normalize_english

    scores, rows = heldout_scores(args.model, args.manifest, args.context)
    if args.errors:
        for row in rows:
            if normalize_english(row["text"]) != normalize_english(row["hypothesis"]):
                print(f"{row['file']} ({row['voice']}):\n  ref: {row['text']}\n  hyp: {row['hypothesis']}")
    print(table(scores))


if __name__ == "__main__":
    main()
