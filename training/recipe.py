"""The demo model's whole recipe in one command: the corpora rendered, then one run of training.train in two stages
under one learning-rate schedule (cosine from 1.5e-3 over 7,500 steps), exported in the original layout:

    python -m training.recipe --out engine/assets/demo-model

1. from scratch, 2,500 steps of 24 single sentences (the v2 corpus's 24,000: two and a half epochs), no SpecAugment;
2. 5,000 steps of 9,600 padded frames on a mix of every kind of clip the held-out set has: 1,800 clips of several
   training sentences read as long as the held-out ones (15-28 s), 3,600 such clips of rare derivations never held
   out (long_multi.RARE), the v2 corpus's 3,500 clips of 2-6 sentences, 5,000 of its single sentences, 4,000 drawn
   as the grammar draws them (long_multi.PLAIN) and its 2,500 clips without speech; SpecAugment, and a context in
   the system turn for 30% of the examples (training.contexts).

The five phases this replaces (five warm-ups and cosine decays, 17,600 steps, about 3.5 h on 2 AVX2 cores) are in git
history (commit 23c90da); the stages here read the same corpora, so the held-out set and training.fresh_eval's
sentences are still never trained on. float32 where the CPU has no bfloat16 arithmetic (AVX2), bfloat16 autocast
where it has (AVX512-BF16 or AMX: a step in half the time). Its log: training/logs/demo-model-{fp32,bf16}.jsonl.
Deterministic from the seeds on a given machine and thread count.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from qasr.engine.demo import DEMO_MODEL_DIR
from training import long_multi
from training.corpus import SPECS, build_corpus
from training.train import TrainConfig, cpu_computes_bfloat16, train

LOGS = Path(__file__).parent / "logs"
LOG_TAG = {"bfloat16": "bf16", "float32": "fp32"}
CONTEXT_RATE = 0.3
MIX = "recipe"  # the second stage's manifest: long_multi.CORPUS / f"{MIX}.jsonl"
TRAIN_SPLITS = ("train", "train_multi", "train_noise")


def stages(work: Path, out: Path) -> tuple[TrainConfig, TrainConfig]:
    precision = "bfloat16" if cpu_computes_bfloat16() else "float32"
    singles = TrainConfig(out=out, precision=precision, log=LOGS / f"demo-model-{LOG_TAG[precision]}.jsonl",
                          train_manifest=long_multi.CORPUS / "train.jsonl", work=work / "features-singles",
                          steps=2500, lr=1.5e-3, warmup=300, batch_frames=0, spec_augment=0, eval_every=0)
    mix = replace(singles, train_manifest=long_multi.CORPUS / f"{MIX}.jsonl", work=work / "features-mix",
                  steps=5000, batch_frames=9600, spec_augment=1, context_rate=CONTEXT_RATE)
    return singles, mix


def render() -> None:
    """The v2 corpus's training splits, the long clips and the second stage's mix."""
    build_corpus(long_multi.CORPUS, SPECS["v2"], workers=2, splits=TRAIN_SPLITS)
    long_multi.build(long_multi.CORPUS, long_multi.COUNT, long_multi.SEED, workers=2, mix_name=MIX,
                     plain=long_multi.PLAIN, rare=long_multi.RARE, noise=SPECS["v2"].train_noise)


def run(work: Path, out: Path, log: Callable[[str], None] = print) -> Path:
    started = time.monotonic()
    render()
    log(f"renders: {(time.monotonic() - started) / 60:.1f} min")
    first, second = stages(work, out)
    train(first, then=(second,))
    log(f"recipe: {(time.monotonic() - started) / 60:.1f} min; the model: {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qasr-demo-recipe"), help="the stages' features")
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="the trained checkpoint")
    args = parser.parse_args()
    run(args.work, args.out, log=lambda line: print(line, file=sys.stderr, flush=True))


if __name__ == "__main__":
    main()
