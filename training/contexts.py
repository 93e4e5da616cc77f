"""Contexts for training prompts: what users put in the system turn (the OpenAI `prompt`, DashScope's context), so
that the model learns to transcribe the audio whatever the system turn holds.

A phase with a context rate gives that share of its examples one: a few of the domain's words as hotwords (comma-
or space-separated), or a sentence of the domain (as a previous utterance's transcript). The rest keep the empty
system turn.
"""

from __future__ import annotations

import numpy as np

from training.domain import word_list


class ContextSampler:
    def __init__(self, rate: float, sentences: list[str], seed: int):
        self.rate = rate
        self.words = word_list()
        self.sentences = [s for s in sentences if s]
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> str:
        rng = self.rng
        if rng.random() >= self.rate:
            return ""
        kind = rng.integers(3)
        if kind == 2 and self.sentences:
            return self.sentences[rng.integers(len(self.sentences))]
        words = [self.words[i] for i in rng.integers(len(self.words), size=rng.integers(1, 11))]
        return (", " if kind == 0 else " ").join(words)
