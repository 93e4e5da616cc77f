"""The sampler takes logits in the model's dtype: its tokens are those of the float32 upcast, ties included."""

import torch

from qasr.engine.sampler import sample
from qasr.scheduler import SamplingParams


def test_tokens_from_bfloat16_logits_are_those_of_their_float32_upcast() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(6, 1000, generator=generator)).to(torch.bfloat16)
    logits[1, [7, 500, 999]] = logits[1].max() + 1  # a three-way tie: the first index wins either way
    greedy, drawn = SamplingParams(), SamplingParams(temperature=0.7, top_k=50, top_p=0.9)
    params = [greedy, greedy, drawn, greedy, drawn, drawn]

    def tokens(rows: torch.Tensor) -> list[int]:
        generators = [None if p.greedy else torch.Generator().manual_seed(11 + row) for row, p in enumerate(params)]
        return sample(rows, params, generators).tolist()

    assert tokens(logits) == tokens(logits.float())
    assert tokens(logits)[1] == 7
