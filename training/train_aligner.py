"""Train the bundled demo forced aligner: the demo model's encoder and decoder with a classifier of time slots,
fitted to espeak-ng speech whose word times are exact, exported in the original Qwen3-ForcedAligner layout.

    python -m training.train_aligner                                  # engine/assets/demo-aligner
    python -m training.train_aligner --steps 20 --clips 64 --out /tmp/aligner   # a quick look

The aligner's input is the one qasr builds at serving time (`qasr.engine.alignment.AlignmentProcessor`): the audio
placeholders, then each word of the transcript followed by two `<timestamp>` tokens; the loss is cross-entropy of
the time class (time / timestamp_segment_time, rounded) at each `<timestamp>` whose reference time is known.
Deterministic from `--seed` on a given machine and thread count; writes a JSON-lines log (`--log`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration, Qwen3ASRForTokenClassification

from qasr.engine.alignment import AlignmentProcessor
from qasr.engine.checkpoint import disk_name, read_tensors
from qasr.engine.demo import DEMO_ALIGNER_DIR, DEMO_MODEL_DIR
from qasr.engine.features import FeatureConfig, LogMelExtractor
from qasr.engine.hf_conversion import add_special_token, convert_to_hf
from qasr.engine.model_config import TIMESTAMP_TOKEN, load_model_config
from training.aligner_data import TimedClip, render_timed, training_utterances
from training.batches import bucketed_batches, padded_features
from training.evaluate_aligner import evaluate_aligner, load_aligner
from training.export import TOKENIZER_FILES, export_aligner
from training.tokenizer import token_ids
from training.train import Log, add_config_arguments, lr_factor

CACHE = Path.home() / ".cache" / "qasr"


@dataclass
class AlignerTrainConfig:
    out: Path = DEMO_ALIGNER_DIR
    base: Path = DEMO_MODEL_DIR  # the model whose encoder and decoder the aligner starts from
    resume: Path | None = None  # an aligner (this script's export) to go on training instead
    work: Path = CACHE / "aligner-work"
    log: Path | None = Path(__file__).parent / "logs" / "demo-aligner.jsonl"
    clips: int = 6000
    steps: int = 1500
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    classes: int = 400  # 32 s of 80 ms slots: a piece is at most 30 s
    segment_ms: float = 80.0
    seed: int = 0
    threads: int = 2
    log_every: int = 50
    eval_every: int = 250
    eval_clips: int = 100  # held-out clips per evaluation (all at the end)
    minutes: float | None = None  # stop early (and export) after this much training time
    export_dtype: str = "float16"


@dataclass(frozen=True)
class Example:
    mel: np.ndarray  # float16 [frames, mel_bins]
    input_ids: list[int]
    labels: list[int]  # the time class at each <timestamp>, -100 elsewhere and where the time is unknown


def prepare_tokenizer(config: AlignerTrainConfig) -> tuple[Path, int]:
    """The base model's tokenizer with <timestamp> added; returns its folder and the token's id."""
    folder = config.work / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        (folder / name).write_bytes((config.base / name).read_bytes())
    return folder, add_special_token(folder, TIMESTAMP_TOKEN)


def build_aligner(config: AlignerTrainConfig, timestamp_id: int) -> Qwen3ASRForTokenClassification:
    """The base model's encoder, projector and decoder under a new classifier (transformers' classes)."""
    hf = config.work / "base-hf"
    if not (hf / "config.json").exists():
        convert_to_hf(config.base, hf)
    base = Qwen3ASRForConditionalGeneration.from_pretrained(hf, dtype=torch.float32)
    settings = base.config.to_dict()
    settings["text_config"]["tie_word_embeddings"] = False
    aligner_config = Qwen3ASRConfig(audio_config=settings["audio_config"], text_config=settings["text_config"],
                                    audio_token_id=base.config.audio_token_id, timestamp_token_id=timestamp_id,
                                    num_labels=config.classes, tie_word_embeddings=False, dtype="float32")
    torch.manual_seed(config.seed)
    model = Qwen3ASRForTokenClassification(aligner_config)
    state = {name: tensor for name, tensor in base.state_dict().items() if not name.startswith("lm_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"score.weight"} or unexpected:
        raise RuntimeError(f"the base model does not fit the aligner: missing {missing}, unexpected {unexpected}")
    if config.resume is not None:
        resumed = read_tensors(config.resume, load_model_config(config.resume, aligner=True))
        model.load_state_dict({disk_name(name, "hf", aligner=True): tensor.float()
                               for name, tensor in resumed.items()}, strict=True)
    return model


def make_examples(clips: list[TimedClip], processor: AlignmentProcessor, extractor: LogMelExtractor,
                  config: AlignerTrainConfig) -> list[Example]:
    timestamp_id = processor.tokenizer.convert_tokens_to_ids(processor.timestamp)
    examples = []
    for clip in tqdm(clips, desc="features", unit="clip", mininterval=10):
        piece = processor.job(clip.text, clip.samples, offset=0.0)
        ids = piece.job.prompt_token_ids
        times = [t for word in clip.words for t in (word.start, word.end)]
        classes = iter([-100 if t is None else min(config.classes - 1, round(t * 1000 / config.segment_ms))
                        for t in times])
        labels = [next(classes) if token == timestamp_id else -100 for token in ids]
        [mel] = extractor([clip.samples])
        examples.append(Example(mel.T.numpy().astype(np.float16), ids, labels))
    return examples


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    features, features_mask = padded_features([torch.from_numpy(e.mel.T.astype(np.float32)) for e in batch])
    length = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), length), pad_id)
    labels = torch.full((len(batch), length), -100)
    attention_mask = torch.zeros(len(batch), length, dtype=torch.long)
    for row, example in enumerate(batch):
        input_ids[row, :len(example.input_ids)] = torch.tensor(example.input_ids)
        labels[row, :len(example.labels)] = torch.tensor(example.labels)
        attention_mask[row, :len(example.input_ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": features,
            "input_features_mask": features_mask, "labels": labels}


def loss_of(model: Qwen3ASRForTokenClassification, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the time classes, and the share of slots classified exactly."""
    labels = batch.pop("labels")
    logits = model(**batch).logits
    mask = labels != -100
    loss = F.cross_entropy(logits[mask].float(), labels[mask])
    exact = logits[mask].argmax(-1) == labels[mask]
    return loss, float(exact.float().mean())


def train(config: AlignerTrainConfig) -> dict:
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    log = Log(config.log)
    log.write({"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}})
    started_all = time.monotonic()

    tokenizer_dir, timestamp_id = prepare_tokenizer(config)
    model = build_aligner(config, timestamp_id)
    ids = token_ids(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")))
    init = export_aligner(model, ids, tokenizer_dir, config.work / "init", config.segment_ms)
    processor, _ = load_aligner(init)  # the serving path's prompt builder

    utterances, seeds = training_utterances(config.clips, config.seed)
    clips = [clip for clip in render_timed(utterances, seeds, desc="speech") if clip is not None]
    extractor = LogMelExtractor(FeatureConfig.from_checkpoint(init))
    examples = make_examples(clips, processor, extractor, config)
    frames = np.array([e.mel.shape[0] for e in examples])
    parameters = sum(p.numel() for p in model.parameters())
    log.write({"parameters": parameters, "train_clips": len(examples),
               "train_hours": round(float(frames.sum()) / 100 / 3600, 2),
               "prepare_minutes": round((time.monotonic() - started_all) / 60, 2)})
    print(f"aligner: {parameters / 1e6:.2f} M parameters; {len(examples)} clips ({frames.sum() / 100 / 3600:.1f} h)",
          file=sys.stderr)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    rng = np.random.default_rng(config.seed)
    batches: list[np.ndarray] = []
    window: list[tuple[float, float]] = []
    started, eval_seconds = time.monotonic(), 0.0
    evaluation = None
    bar = tqdm(total=config.steps, desc="training", unit="step", mininterval=1 if sys.stderr.isatty() else 30)
    for step in range(config.steps):
        if not batches:
            batches = bucketed_batches(frames, config.batch_size, rng)
        loss, exact = loss_of(model, collate([examples[int(i)] for i in batches.pop()], ids["<|endoftext|>"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        optimizer.step()
        scheduler.step()
        window.append((float(loss.detach()), exact))
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1][0]:.3f}", exact=f"{exact:.2f}", refresh=False)
        elapsed = time.monotonic() - started - eval_seconds
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mean = np.mean(window, axis=0)
            log.write({"step": step + 1, "minutes": round(elapsed / 60, 2), "lr": scheduler.get_last_lr()[0],
                       "loss": round(float(mean[0]), 4), "exact_slot": round(float(mean[1]), 3),
                       "steps_per_s": round((step + 1) / elapsed, 3)})
            window = []
        out_of_time = config.minutes is not None and elapsed > config.minutes * 60
        last = step + 1 == config.steps or out_of_time
        if last or (config.eval_every and (step + 1) % config.eval_every == 0):
            eval_started = time.monotonic()
            model.eval()
            checkpoint = export_aligner(model, ids, tokenizer_dir, config.work / "eval", config.segment_ms)
            evaluation = evaluate_aligner(checkpoint, clips=None if last else config.eval_clips)
            model.train()
            record = {"step": step + 1, "minutes": round(elapsed / 60, 2)} | {
                k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(evaluation).items()}
            log.write(record)
            tqdm.write(json.dumps(record))
            eval_seconds += time.monotonic() - eval_started
        if out_of_time:
            tqdm.write(f"stopping after {elapsed / 60:.1f} minutes of training (--minutes)")
            break
    bar.close()
    train_minutes = (time.monotonic() - started - eval_seconds) / 60

    model.eval()
    export_aligner(model, ids, tokenizer_dir, config.out, config.segment_ms, getattr(torch, config.export_dtype))
    size = sum(f.stat().st_size for f in config.out.iterdir())
    total_minutes = (time.monotonic() - started_all) / 60
    log.write({"exported": str(config.out), "bytes": size, "train_minutes": round(train_minutes, 2),
               "total_minutes": round(total_minutes, 2)})
    print(f"exported {config.out} ({size / 1e6:.1f} MB) after {train_minutes:.1f} min of training "
          f"({total_minutes:.1f} min in all)", file=sys.stderr)
    return asdict(evaluation) if evaluation else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train qasr's demo forced aligner on espeak-ng speech")
    add_config_arguments(parser, AlignerTrainConfig)
    train(AlignerTrainConfig(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
