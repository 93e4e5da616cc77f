"""Train the bundled demo model: synthesize the corpus, fit a small Qwen3-ASR, export it in the original layout.

The demo model's recipe is training.recipe (its docstring): two stages of this module's `train` under one
optimizer and one learning-rate schedule (`train(first, then=(second,))`: each stage its own data, steps and
batching). The command line runs one stage, from scratch or from a checkpoint (`--init`), on a synthesized corpus
(`--corpus-spec`, rendered on first use) or on a manifest (`--train-manifest`, e.g. training.long_multi's mixes):

    python -m training.recipe --out engine/assets/demo-model                       # the demo model, from nothing
    python -m training.train --corpus-spec v1 --steps 5000 --lr 1.5e-3 --warmup 300 --batch-frames 0 \
        --spec-augment 0 --eval-every 1000 --out /tmp/demo-v1 --log /tmp/demo-v1.jsonl   # single sentences
    python -m training.train --init /tmp/demo-v1 --out /tmp/demo-v2 --log /tmp/demo-v2.jsonl   # then corpus v2
    python -m training.train --steps 50 --model tiny --out /tmp/demo                # a quick look

Deterministic from `--seed` on a given machine and thread count. Writes a JSON-lines log of loss and
validation WER (`--log`) and shows a progress bar.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm
from transformers import AutoTokenizer, Qwen3ASRForConditionalGeneration

from qasr.engine.demo import DEMO_MODEL_DIR
from qasr.engine.hf_conversion import convert_to_hf
from training.batches import ExampleBuilder, SpecAugment, bucketed_batches, collate, frame_budget_batches
from training.contexts import ContextSampler
from training.corpus import SPECS, Utterance, build_corpus, read_manifest, split_kind
from training.domain import word_list
from training.evaluate import evaluate, transcribe
from training.export import TOKENIZER_FILES, export_checkpoint
from training.features import FeatureStore
from training.model import DIMS, CTCTrainer, build_model, grow_decoder
from training.tokenizer import build_tokenizer, padded_vocab_size, token_ids

CACHE = Path.home() / ".cache" / "qasr"


@dataclass
class TrainConfig:
    out: Path = DEMO_MODEL_DIR
    corpus_spec: str = "v2"  # training.corpus.SPECS
    corpus: Path | None = None  # default: ~/.cache/qasr/demo-corpus-{corpus_spec}
    work: Path | None = None  # tokenizer and feature caches; default ~/.cache/qasr/demo-work-{corpus_spec}
    log: Path | None = Path(__file__).parent / "logs" / "demo-model-v2.jsonl"
    train_manifest: Path | None = None  # train on this manifest instead of the synthesized corpus
    init: Path | None = None  # start from this checkpoint (its weights and tokenizer) instead of from scratch
    model: str = "S"  # size from scratch (training.model.DIMS)
    decoder_layers: int = 0  # with init: grow its decoder to this many layers, the new ones starting as the identity
    steps: int = 4500
    batch_size: int = 24  # clips per step, unless batch_frames is set
    batch_frames: int = 9600  # padded feature frames per step (0: batch_size clips)
    spec_augment: int = 1  # SpecAugment-style masks on the training features (0: off)
    lr: float = 5e-4
    warmup: int = 200
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    ctc_weight: float = 1.0
    clip_norm: float = 1.0
    bpe_vocab: int = 1500
    seed: int = 0
    threads: int = 2
    log_every: int = 50
    eval_every: int = 1500
    eval_clips: int = 100  # per validation split
    minutes: float | None = None  # stop early (and export) after this much training time
    export_dtype: str = "float32"
    # "bfloat16": forward and backward under CPU autocast (weights, optimizer state and losses stay float32); a model
    # step takes half the time where the CPU has bfloat16 arithmetic (cpu_computes_bfloat16), ten times as long
    # where it has not. Validation stays float32
    precision: str = "float32"
    context_rate: float = 0.0  # the share of examples whose system turn holds a context (training.contexts)
    # the exported weights: an exponential moving average of the model's with this decay per step (0: the last step's)
    ema_decay: float = 0.0


@dataclass
class TrainResult:
    out: Path
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


def _texts_for_tokenizer(utterances: list[Utterance]) -> list[str]:
    # the target's fixed prefix too, so "language English" gets merged tokens of its own
    return [u.text for u in utterances] + ["language English"] * 100 + word_list()


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio at `steps` (any config with those four fields)."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cpu_computes_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX). Where it has not, oneDNN emulates it: on a
    2-core AVX2 EPYC a bfloat16 matmul took 70 times a float32 one, a training step 10.8 s instead of 0.6 s."""
    try:
        words = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in words or "amx_bf16" in words


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The training forward's precision: plain float32, or bfloat16 autocast."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"precision {precision!r}: choose float32 or bfloat16")


# the attention kernel for each training precision, measured on a third-phase batch on this AVX512-BF16 CPU: sdpa's
# flash kernel is twice as slow in bfloat16 as in float32 (its backward most), and matmul-softmax-matmul ("eager")
# in bfloat16 three times faster than it; in float32 sdpa is the faster. A step of long clips: 620 -> 490 ms
ATTENTION = {"float32": "sdpa", "bfloat16": "eager"}


def channels_last_conv_stem(model: Qwen3ASRForConditionalGeneration) -> None:
    """The audio encoder's three convolutions with channels-last weights, so that oneDNN runs them (and their
    one-channel input) in its faster layout: a bfloat16 training step of the S model 12-17% faster on this CPU (phases
    1 and 3). The same weights; the export writes them contiguous."""
    tower = model.model.audio_tower
    for conv in (tower.conv2d1, tower.conv2d2, tower.conv2d3):
        conv.to(memory_format=torch.channels_last)


class Log:
    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def load_splits(config: TrainConfig) -> dict[str, tuple[Path, list[Utterance]]]:
    """Split -> (audio root, utterances): the synthesized corpus's training splits joined as `train`, and its
    validation splits; or just `train_manifest` as training data."""
    if config.train_manifest is not None:
        return {"train": (config.train_manifest.parent, read_manifest(config.train_manifest))}
    spec = SPECS[config.corpus_spec]
    corpus = config.corpus or CACHE / f"demo-corpus-{config.corpus_spec}"
    names = [name for name in spec.splits if not name.startswith("test")]
    build_corpus(corpus, spec, splits=tuple(names))
    training = [u for name in names if name.startswith("train") for u in read_manifest(corpus / f"{name}.jsonl")]
    return {"train": (corpus, training)} | {name: (corpus, read_manifest(corpus / f"{name}.jsonl"))
                                            for name in names if name.startswith("val")}


def prepare_tokenizer(config: TrainConfig, work: Path, utterances: list[Utterance]) -> tuple[Path, dict[str, int]]:
    """The tokenizer's folder and its special ids: the `init` checkpoint's, or a new BPE fit to the texts."""
    folder = work / "tokenizer"
    if config.init is None:
        raw = build_tokenizer(folder, _texts_for_tokenizer(utterances), config.bpe_vocab, vocab_files=True)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            (folder / name).write_bytes((config.init / name).read_bytes())
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return folder, token_ids(raw)


def initial_model(config: TrainConfig, work: Path, ids: dict[str, int]) -> Qwen3ASRForConditionalGeneration:
    if config.init is None:
        if config.decoder_layers:
            raise ValueError("decoder_layers grows the init checkpoint's decoder; from scratch the size is `model`")
        return build_model(DIMS[config.model], padded_vocab_size(ids["vocab_size"]), ids, config.seed)
    hf = work / "init-hf"
    convert_to_hf(config.init, hf)
    model = Qwen3ASRForConditionalGeneration.from_pretrained(hf, dtype=torch.float32)
    if config.decoder_layers:
        model = grow_decoder(model, config.decoder_layers)
    model.generation_config.eos_token_id = [ids["<|endoftext|>"], ids["<|im_end|>"]]
    model.generation_config.pad_token_id = ids["<|im_end|>"]
    return model


def validate(model: Qwen3ASRForConditionalGeneration, builder: ExampleBuilder,
             validation: dict[str, tuple[list[torch.Tensor], list[str]]]) -> dict:
    """WER per validation split with speech, the share of empty transcripts on a split without."""
    record: dict = {}
    for split, (mels, references) in validation.items():
        if split_kind(split) == "noise":
            hypotheses = transcribe(model, builder, mels)
            record[f"empty_{split}"] = round(sum(not h for h in hypotheses) / len(hypotheses), 4)
            record[f"example_{split}"] = next((h for h in hypotheses if h), "")
        else:
            wer, hypotheses = evaluate(model, builder, mels, references)
            record[f"wer_{split}"] = round(wer, 4)
            record[f"example_{split}"] = {"reference": references[0], "hypothesis": hypotheses[0]}
    return record


# the fields a later stage of a run sets for itself (train's `then`); the rest are the run's, from its first stage
STAGE_FIELDS = ("corpus_spec", "corpus", "work", "train_manifest", "steps", "batch_size", "batch_frames",
                "spec_augment", "context_rate", "eval_every", "eval_clips")


@dataclass
class StageData:
    """A stage's training examples with their features, and its validation clips."""
    store: FeatureStore
    examples: list
    frames: np.ndarray
    texts: list[str]
    validation: dict[str, tuple[list[torch.Tensor], list[str]]]


def load_stage(stage: TrainConfig, splits: dict[str, tuple[Path, list[Utterance]]], builder: ExampleBuilder
               ) -> StageData:
    work = stage.work or CACHE / f"demo-work-{stage.corpus_spec}"
    stores = {split: FeatureStore.build([root / u.file for u in utterances], work / "features" / split,
                                        desc=f"features {split}")
              for split, (root, utterances) in splits.items()}
    stores["train"].read_ahead()
    utterances = splits["train"][1]
    examples = [builder.example(u.text) for u in utterances]
    validation = {split: ([stores[split][i] for i in range(min(stage.eval_clips, len(stores[split])))],
                          [u.text for u in splits[split][1][:stage.eval_clips]])
                  for split in splits if split != "train"}
    return StageData(stores["train"], examples, np.array([stores["train"].frames(i) for i in range(len(examples))]),
                     [u.text for u in utterances], validation)


def train(config: TrainConfig, then: tuple[TrainConfig, ...] = ()) -> TrainResult:
    """Trains `config`, then each stage of `then` on its own data (its STAGE_FIELDS) with the same model and
    optimizer: one learning-rate schedule (config's warm-up and rates) over all the stages' steps, one export."""
    autocast(config.precision)  # an unknown precision fails before the corpus is built
    if config.precision == "bfloat16" and not cpu_computes_bfloat16():
        print("warning: this CPU has no bfloat16 arithmetic (AVX512-BF16, AMX): a bfloat16 step takes some ten times "
              "a float32 one here; --precision float32 is the faster", file=sys.stderr)
    stages = [config] + [replace(config, **{name: getattr(stage, name) for name in STAGE_FIELDS}) for stage in then]
    schedule = replace(config, steps=sum(stage.steps for stage in stages))
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    log = Log(config.log)
    for stage in stages:
        log.write({"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(stage).items()}})
    splits = [load_splits(stage) for stage in stages]  # renders what is missing before the first step

    work = config.work or CACHE / f"demo-work-{config.corpus_spec}"
    tokenizer_dir, ids = prepare_tokenizer(config, work, splits[0]["train"][1])
    builder = ExampleBuilder(AutoTokenizer.from_pretrained(str(tokenizer_dir)))

    model = initial_model(config, work, ids)
    model.set_attn_implementation(ATTENTION[config.precision])
    channels_last_conv_stem(model)
    trainer = CTCTrainer(model, config.ctc_weight)
    trainer.train()
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, schedule))
    parameters = sum(p.numel() for p in model.parameters())
    name = str(config.init or config.model)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay)) if config.ema_decay else None

    result = TrainResult(out=config.out)
    rng = np.random.default_rng(config.seed)
    augment_rng = np.random.default_rng(config.seed + 1)
    step, started, paused_seconds = 0, time.monotonic(), 0.0  # paused: validation, a stage's features
    bar = tqdm(total=schedule.steps, desc="training", unit="step", mininterval=1 if sys.stderr.isatty() else 30)
    for number, (stage, stage_splits) in enumerate(zip(stages, splits), start=1):
        loading_started = time.monotonic()
        data = load_stage(stage, stage_splits, builder)
        paused_seconds += time.monotonic() - loading_started
        hours = float(data.frames.sum()) / 100 / 3600
        log.write({"stage": number, "model": name, "parameters": parameters,
                   "vocab_size": model.config.text_config.vocab_size, "train_utterances": len(data.examples),
                   "train_hours": round(hours, 2)})
        print(f"stage {number}, model {name}: {parameters / 1e6:.2f} M parameters; {len(data.examples)} training "
              f"utterances ({hours:.1f} h)", file=sys.stderr)
        augment = (SpecAugment(), augment_rng) if stage.spec_augment else None
        context = (ContextSampler(stage.context_rate, data.texts, config.seed + 2 + 100 * (number - 1))
                   if stage.context_rate else None)
        batches: list[np.ndarray] = []
        epoch, window, first_step, last_step = 0, [], step, step + stage.steps
        while step < last_step:
            if not batches:
                batches = (frame_budget_batches(data.frames, stage.batch_frames, rng) if stage.batch_frames
                           else bucketed_batches(data.frames, stage.batch_size, rng))
                epoch += 1
            batch = collate(batches.pop(), data.store, data.examples, builder, augment, context)
            with autocast(config.precision):
                losses = trainer(batch)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            torch.nn.utils.clip_grad_norm_(trainer.parameters(), config.clip_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            if ema is not None:
                ema.update_parameters(model)
            result.losses.append(float(losses.total.detach()))
            window.append((result.losses[-1], losses.ce, losses.ctc))
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", ce=f"{losses.ce:.3f}", ctc=f"{losses.ctc:.3f}",
                            refresh=False)
            elapsed = time.monotonic() - started - paused_seconds
            if step % config.log_every == 0 or step == last_step:
                mean = np.mean(window, axis=0)
                log.write({"step": step, "stage": number, "epoch": epoch, "minutes": round(elapsed / 60, 2),
                           "lr": scheduler.get_last_lr()[0], "loss": round(float(mean[0]), 4),
                           "ce": round(float(mean[1]), 4), "ctc": round(float(mean[2]), 4),
                           "steps_per_s": round(step / elapsed, 3)})
                window = []
            out_of_time = config.minutes is not None and elapsed > config.minutes * 60
            last = step == last_step or out_of_time
            if data.validation and stage.eval_every and ((step - first_step) % stage.eval_every == 0 or last):
                eval_started = time.monotonic()
                record = {"step": step, "minutes": round(elapsed / 60, 2)} | validate(model, builder, data.validation)
                result.evals.append(record)
                log.write(record)
                tqdm.write(json.dumps({k: v for k, v in record.items() if not k.startswith("example")}))
                paused_seconds += time.monotonic() - eval_started
            if out_of_time:
                tqdm.write(f"stopping after {elapsed / 60:.1f} minutes of training (--minutes)")
                break
        if config.minutes is not None and step < last_step:
            break
    bar.close()
    result.train_seconds = time.monotonic() - started - paused_seconds

    model.eval()
    if ema is not None:  # validation above read the last step's weights
        model.load_state_dict(ema.module.state_dict())
    export_checkpoint(model, ids, tokenizer_dir, config.out, getattr(torch, config.export_dtype))
    size = sum(f.stat().st_size for f in config.out.iterdir())
    log.write({"exported": str(config.out), "bytes": size, "train_minutes": round(result.train_seconds / 60, 2)})
    print(f"exported {config.out} ({size / 1e6:.1f} MB) after {result.train_seconds / 60:.1f} min of training",
          file=sys.stderr)
    return result


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """A --dashed-flag for each field of a training config dataclass, its default the field's."""
    defaults = config_class()
    for f in fields(config_class):
        value = getattr(defaults, f.name)
        kind = {"Path": Path, "Path | None": Path, "float | None": float}.get(str(f.type), type(value))
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=value, dest=f.name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train qasr's demo model on espeak-ng speech")
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)
    started = time.monotonic()
    train(TrainConfig(**vars(args)))
    print(f"total wall time {(time.monotonic() - started) / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
