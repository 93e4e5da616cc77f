"""Fixtures for the engine tests: the transformers reference (`transformers_reference`), the oracle that greedy
outputs are compared with."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch


@dataclass
class ReferenceOutput:
    prompt_ids: list[int]
    token_ids: list[int]
    last_logits: torch.Tensor


class Reference:
    """Qwen3ASRForConditionalGeneration on one clip at a time, float32, CPU."""

    def __init__(self, hf_checkpoint: Path):
        from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

        self.processor = Qwen3ASRProcessor.from_pretrained(hf_checkpoint)
        self.model = Qwen3ASRForConditionalGeneration.from_pretrained(hf_checkpoint, dtype=torch.float32).eval()

    def inputs(self, clip: np.ndarray, language: str | None = None, context: str | None = None):
        return self.processor.apply_transcription_request(clip, language=language, prompt=context or None)

    @torch.inference_mode()
    def generate(self, clip: np.ndarray, max_new_tokens: int, language: str | None = None,
                 context: str | None = None) -> ReferenceOutput:
        inputs = self.inputs(clip, language, context)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                  output_logits=True, return_dict_in_generate=True)
        prompt = inputs["input_ids"][0].tolist()
        return ReferenceOutput(prompt, out.sequences[0, len(prompt):].tolist(), out.logits[-1][0].float())


@pytest.fixture(scope="session")
def transformers_reference():
    """The class `Reference(hf_checkpoint)`: `.inputs(clip, language, context)` is the processor's prompt,
    `.generate(clip, max_new_tokens, language, context)` gives prompt_ids, token_ids and the last logits."""
    return Reference
