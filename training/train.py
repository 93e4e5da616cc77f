"""Train the bundled demo model: synthesize the corpus, fit a small Qwen3-ASR, export it in the original layout.

    python -m training.train --out engine/assets/demo-model            # the shipped checkpoint
    python -m training.train --steps 50 --model tiny --out /tmp/demo    # a quick look

Deterministic from `--seed` on a given machine and thread count. Writes a JSON-lines log of loss and
validation WER (`--log`) and shows a progress bar.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from qasr.engine.demo import DEMO_MODEL_DIR
from training.batches import ExampleBuilder, bucketed_batches, collate
from training.corpus import CorpusSpec, Utterance, build_corpus, read_manifest
from training.domain import word_list
from training.evaluate import evaluate
from training.export import export_checkpoint
from training.features import FeatureStore
from training.model import DIMS, CTCTrainer, build_model
from training.tokenizer import build_tokenizer, padded_vocab_size, token_ids

CACHE = Path.home() / ".cache" / "qasr"
VAL_SPLITS = ("val_seen", "val_unseen")


@dataclass
class TrainConfig:
    out: Path = DEMO_MODEL_DIR
    corpus: Path = CACHE / "demo-corpus"
    work: Path = CACHE / "demo-work"  # tokenizer and feature caches
    log: Path | None = Path(__file__).parent / "logs" / "demo-model.jsonl"
    train_manifest: Path | None = None  # train on this manifest instead of the synthesized corpus
    model: str = "S"
    steps: int = 5000
    batch_size: int = 24
    lr: float = 1.5e-3
    warmup: int = 300
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    ctc_weight: float = 1.0
    clip_norm: float = 1.0
    bpe_vocab: int = 1500
    seed: int = 0
    threads: int = 2
    log_every: int = 50
    eval_every: int = 1000
    eval_clips: int = 100  # per validation split
    minutes: float | None = None  # stop early (and export) after this much training time
    export_dtype: str = "float32"


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
    """Split -> (audio root, utterances): the synthesized corpus, or just `train_manifest` as training data."""
    if config.train_manifest is not None:
        return {"train": (config.train_manifest.parent, read_manifest(config.train_manifest))}
    build_corpus(config.corpus, CorpusSpec(seed=config.seed), splits=("train", *VAL_SPLITS))
    return {split: (config.corpus, read_manifest(config.corpus / f"{split}.jsonl"))
            for split in ("train", *VAL_SPLITS)}


def train(config: TrainConfig) -> TrainResult:
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    log = Log(config.log)
    log.write({"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}})
    splits = load_splits(config)
    train_root, train_utterances = splits["train"]

    tokenizer_dir = config.work / "tokenizer"
    raw_tokenizer = build_tokenizer(tokenizer_dir, _texts_for_tokenizer(train_utterances), config.bpe_vocab,
                                    vocab_files=True)
    ids = token_ids(raw_tokenizer)
    builder = ExampleBuilder(AutoTokenizer.from_pretrained(str(tokenizer_dir)))

    stores = {split: FeatureStore.build([root / u.file for u in utterances], config.work / "features" / split,
                                        desc=f"features {split}")
              for split, (root, utterances) in splits.items()}
    examples = [builder.example(u.text) for u in train_utterances]
    frames = np.array([stores["train"].frames(i) for i in range(len(examples))])
    validation = {split: ([stores[split][i] for i in range(min(config.eval_clips, len(stores[split])))],
                          [u.text for u in splits[split][1][:config.eval_clips]])
                  for split in splits if split != "train"}

    model = build_model(DIMS[config.model], padded_vocab_size(ids["vocab_size"]), ids, config.seed)
    trainer = CTCTrainer(model, config.ctc_weight)
    trainer.train()
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    parameters = sum(p.numel() for p in model.parameters())
    log.write({"model": config.model, "parameters": parameters, "vocab_size": model.config.text_config.vocab_size,
               "train_utterances": len(examples), "train_hours": round(float(frames.sum()) / 100 / 3600, 2)})
    print(f"model {config.model}: {parameters / 1e6:.2f} M parameters; {len(examples)} training utterances "
          f"({frames.sum() / 100 / 3600:.1f} h)", file=sys.stderr)

    result = TrainResult(out=config.out)
    rng = np.random.default_rng(config.seed)
    batches: list[np.ndarray] = []
    epoch, window, started = 0, [], time.monotonic()
    eval_seconds = 0.0
    bar = tqdm(total=config.steps, desc="training", unit="step", mininterval=1 if sys.stderr.isatty() else 30)
    for step in range(config.steps):
        if not batches:
            batches, epoch = bucketed_batches(frames, config.batch_size, rng), epoch + 1
        losses = trainer(collate(batches.pop(), stores["train"], examples, builder))
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), config.clip_norm)
        optimizer.step()
        scheduler.step()
        result.losses.append(float(losses.total.detach()))
        window.append((result.losses[-1], losses.ce, losses.ctc))
        bar.update(1)
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}", ce=f"{losses.ce:.3f}", ctc=f"{losses.ctc:.3f}", refresh=False)
        elapsed = time.monotonic() - started - eval_seconds
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mean = np.mean(window, axis=0)
            log.write({"step": step + 1, "epoch": epoch, "minutes": round(elapsed / 60, 2),
                       "lr": scheduler.get_last_lr()[0], "loss": round(float(mean[0]), 4),
                       "ce": round(float(mean[1]), 4), "ctc": round(float(mean[2]), 4),
                       "steps_per_s": round((step + 1) / elapsed, 3)})
            window = []
        out_of_time = config.minutes is not None and elapsed > config.minutes * 60
        last = step + 1 == config.steps or out_of_time
        if validation and config.eval_every and ((step + 1) % config.eval_every == 0 or last):
            eval_started = time.monotonic()
            record = {"step": step + 1, "minutes": round(elapsed / 60, 2)}
            for split, (mels, references) in validation.items():
                wer, hypotheses = evaluate(model, builder, mels, references)
                record[f"wer_{split}"] = round(wer, 4)
                record[f"example_{split}"] = {"reference": references[0], "hypothesis": hypotheses[0]}
            result.evals.append(record)
            log.write(record)
            tqdm.write(json.dumps({k: v for k, v in record.items() if not k.startswith("example")}))
            eval_seconds += time.monotonic() - eval_started
        if out_of_time:
            tqdm.write(f"stopping after {elapsed / 60:.1f} minutes of training (--minutes)")
            break
    bar.close()
    result.train_seconds = time.monotonic() - started - eval_seconds

    model.eval()
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
