"""The demo model's whole recipe in one command: the five phases of training.train and training.long_multi, in
bfloat16 autocast where the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX: a model step in half float32's time),
else in float32 (a bfloat16 step there takes ten times a float32 one). Meant to fit 2 hours on 2 cores, it does not:
the first four phases took 2 h 34 min with 22 min of renders on AVX512-BF16 (see README "Demo model"), and a 2-core
AVX2 CPU trains them in float32 at the same pace (phase 1 at 1.55-1.65 steps/s); the fifth took another 52 min on the
AVX2 CPU (47 min of features and training, 5.5 min of renders), so about 3.5 hours:

    python -m training.recipe --out engine/assets/demo-model           # renders the corpora, trains, exports
    python -m training.recipe --work /tmp/recipe --from-phase 3 ...     # again from a phase (earlier ones kept)
    python -m training.recipe --last-phase 4                           # the sixth demo model

1. from scratch on corpus v1 (single sentences): 5000 steps, lr 1.5e-3;
2. from 1 on corpus v2 (clips of several sentences, clips without speech): 4500 steps, lr 5e-4 (the defaults);
3. from 2 on 1,800 clips of several training sentences read as long as the held-out ones, mixed with v2's: 2700
   steps, lr 3e-4;
4. from 3 on the same mix with 3,600 such clips: 2700 steps, lr 2e-4;
5. from 4 on phase 4's mix with 3,600 clips of rare derivations never held out (long_multi.RARE): 2700 steps, lr 3e-4
   (phases 1-4 only ever read the commonest sentences in long clips; these teach it to read what it cannot recall).

Phases 1-4's steps and learning rates are those the float32 model was trained with (training.train's and
training.long_multi's docstrings), with two additions to phases 3-5 that no float32 phase had: 4,000 single
sentences drawn as the grammar draws them (long_multi.PLAIN), and a context in the system turn for 30% of the
examples (training.contexts). Each phase's log is training/logs/demo-model-{bf16,fp32}-phase{N}.jsonl.
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
from training.train import TrainConfig, cpu_computes_bfloat16, train

LOGS = Path(__file__).parent / "logs"
LOG_TAG = {"bfloat16": "bf16", "float32": "fp32"}
CONTEXT_RATE = 0.3
PHASES = 5


def phase_config(number: int, work: Path, previous: Path | None) -> TrainConfig:
    """Phase `number`'s training, its checkpoint in work/phase{number}."""
    precision = "bfloat16" if cpu_computes_bfloat16() else "float32"
    common = TrainConfig(out=work / f"phase{number}", init=previous, precision=precision,
                         log=LOGS / f"demo-model-{LOG_TAG[precision]}-phase{number}.jsonl")
    if number == 1:
        return replace(common, corpus_spec="v1", steps=5000, lr=1.5e-3, warmup=300, batch_frames=0, spec_augment=0,
                       eval_every=2500)  # two validation passes, not five
    if number == 2:
        return replace(common, eval_every=common.steps)  # validated once, at its end: each pass takes minutes
    # the long clips' phases also give a share of their examples a context, as the OpenAI `prompt` does
    long_clips = replace(common, train_manifest=long_multi.CORPUS / f"phase{number}.jsonl",
                         work=work / f"features-phase{number}", eval_every=100000, context_rate=CONTEXT_RATE)
    if number == 3:
        return replace(long_clips, steps=2700, lr=3e-4, warmup=100)
    if number == 4:
        return replace(long_clips, steps=2700, lr=2e-4, warmup=50)
    return replace(long_clips, steps=2700, lr=3e-4, warmup=100)


def render(number: int) -> None:
    """The long clips and the mix phases 3-5 train on (phase 4: the same first 1,800 clips and 1,800 more; phase 5:
    phase 4's and the clips of rare derivations)."""
    count = long_multi.COUNT if number == 3 else long_multi.PHASE4_COUNT
    long_multi.build(long_multi.CORPUS, count, long_multi.SEED, workers=2, mix_name=f"phase{number}",
                     plain=long_multi.PLAIN, rare=long_multi.RARE if number == 5 else 0)


def run(work: Path, out: Path, from_phase: int = 1, last_phase: int = PHASES,
        log: Callable[[str], None] = print) -> Path:
    """Phases from_phase..last_phase; the last one's checkpoint goes to `out`."""
    started = time.monotonic()
    previous = work / f"phase{from_phase - 1}" if from_phase > 1 else None
    for number in range(from_phase, last_phase + 1):
        phase_started = time.monotonic()
        if number >= 3:
            render(number)
        config = phase_config(number, work, previous)
        if number == last_phase:
            config = replace(config, out=out)
        train(config)
        previous = config.out
        log(f"phase {number}: {(time.monotonic() - phase_started) / 60:.1f} min")
    log(f"recipe from phase {from_phase}: {(time.monotonic() - started) / 60:.1f} min; the model: {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qasr-demo-recipe"),
                        help="each phase's checkpoint and the long clips' features")
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="the last phase's checkpoint")
    phases = list(range(1, PHASES + 1))
    parser.add_argument("--from-phase", type=int, choices=phases, default=1)
    parser.add_argument("--last-phase", type=int, choices=phases, default=PHASES)
    args = parser.parse_args()
    run(args.work, args.out, args.from_phase, args.last_phase,
        log=lambda line: print(line, file=sys.stderr, flush=True))


if __name__ == "__main__":
    main()
