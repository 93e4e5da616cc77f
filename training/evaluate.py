"""Greedy transcription with the model being trained (transformers `generate`, one clip at a time), and WER."""

from __future__ import annotations

import torch
from transformers import Qwen3ASRForConditionalGeneration

from qasr.benchmarks.wer import corpus_wer
from qasr.engine.prompt import parse_transcript
from training.batches import ExampleBuilder, padded_features

MAX_NEW_TOKENS = 256  # a 30 s clip of several sentences is about 110 tokens


@torch.inference_mode()
def transcribe(model: Qwen3ASRForConditionalGeneration, builder: ExampleBuilder, mels: list[torch.Tensor]
               ) -> list[str]:
    was_training = model.training
    model.eval()
    texts = []
    for mel in mels:
        prompt = torch.tensor([builder.prompt(mel.shape[1])])
        features, mask = padded_features([mel])
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), input_features=features,
                             input_features_mask=mask, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        raw = builder.tokenizer.decode(out[0, prompt.shape[1]:].tolist(), skip_special_tokens=True)
        texts.append(parse_transcript(raw)[1])
    model.train(was_training)
    return texts


def evaluate(model: Qwen3ASRForConditionalGeneration, builder: ExampleBuilder, mels: list[torch.Tensor],
             references: list[str]) -> tuple[float, list[str]]:
    hypotheses = transcribe(model, builder, mels)
    return corpus_wer(references, hypotheses), hypotheses
