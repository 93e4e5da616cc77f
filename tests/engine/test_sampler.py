"""The sampler takes logits in the model's dtype: its tokens are those of the float32 upcast, ties included."""

import pytest
import torch

from qasr.engine.sampler import filtered_logits, sample
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


def filtered_row(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """One row's top-k and top-p filter, written plainly: what the batched filter must give for every row."""
    logits = logits.float() / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        probs = logits.softmax(-1)
        kept = []
        for token in probs.argsort(descending=True, stable=True).tolist():
            if sum(probs[kept].tolist()) >= p.top_p:
                break
            kept.append(token)
        logits = torch.full_like(logits, float("-inf")).index_copy_(0, torch.tensor(kept), logits[kept])
    return logits


def test_the_batched_filter_keeps_each_rows_tokens() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(7, 40, generator=generator)
    logits[2, [4, 9, 30]] = logits[2].max() + 0.5  # a tie at the top-k boundary: all three kept
    params = [SamplingParams(temperature=0.7, top_k=5), SamplingParams(temperature=1.3, top_p=0.6),
              SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=0.5, top_k=10, top_p=0.8),
              SamplingParams(temperature=2.0), SamplingParams(temperature=1.0, top_k=100, top_p=0.999),
              SamplingParams(temperature=0.9, top_p=0.05)]  # top_p below the likeliest token: it alone stays
    batched = filtered_logits(logits, params)
    for row, p in enumerate(params):
        expected = filtered_row(logits[row], p)
        kept = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(batched[row]), kept), row
        torch.testing.assert_close(batched[row][kept], expected[kept])
    assert torch.isfinite(batched[2]).sum() == 3 and torch.isfinite(batched[6]).sum() == 1


def test_draws_follow_each_rows_filtered_distribution() -> None:
    """4,000 draws of 8 rows: each token's frequency within 5 standard errors of its filtered probability, and no
    filtered-out token ever drawn."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(8, 12, generator=generator)
    params = [SamplingParams(temperature=t, top_k=k, top_p=p)
              for t, k, p in [(1.0, 0, 1.0), (0.5, 4, 1.0), (1.5, 0, 0.7), (1.0, 6, 0.9)] * 2]
    expected = filtered_logits(logits, params).softmax(-1)
    generators = [torch.Generator().manual_seed(100 + row) for row in range(8)]
    counts = torch.zeros(8, 12)
    draws = 4000
    for _ in range(draws):
        counts[torch.arange(8), sample(logits, params, generators)] += 1
    frequency = counts / draws
    assert torch.all(frequency[expected == 0] == 0)
    standard_error = (expected * (1 - expected) / draws).sqrt()
    assert torch.all((frequency - expected).abs() <= 5 * standard_error + 1e-9)


def test_a_rows_draw_depends_on_its_generator_alone() -> None:
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(5, 300, generator=generator)
    drawn = SamplingParams(temperature=1.0, top_p=0.95)
    params = [drawn, SamplingParams(), drawn, SamplingParams(temperature=0.6, top_k=20), drawn]

    def tokens(rows: list[int]) -> list[int]:
        return sample(logits[rows], [params[r] for r in rows],
                      [None if params[r].greedy else torch.Generator().manual_seed(r) for r in rows]).tolist()

    whole = tokens([0, 1, 2, 3, 4])
    assert [tokens([row])[0] for row in range(5)] == whole
    assert tokens([4, 2]) == [whole[4], whole[2]]


def test_a_temperature_too_small_to_divide_by_is_greedy_and_a_broken_row_stays_in_the_vocabulary() -> None:
    generator = torch.Generator().manual_seed(9)
    logits = 30 * torch.randn(3, 50, generator=generator)
    tiny = SamplingParams(temperature=1e-38)  # logits / 1e-38 overflow to inf: NaN probabilities if it were drawn
    assert tiny.greedy and not SamplingParams(temperature=1e-5).greedy
    assert sample(logits, [tiny] * 3, [None] * 3).tolist() == logits.argmax(-1).tolist()
    logits[1, 7] = float("nan")  # a model that broke: no distribution to draw from, but never an id past the end
    drawn = SamplingParams(temperature=0.8)
    tokens = sample(logits, [drawn] * 3, [torch.Generator().manual_seed(row) for row in range(3)])
    assert all(0 <= token < 50 for token in tokens.tolist())


@pytest.mark.gpu
def test_sampling_on_the_gpu_keeps_each_rows_filter_and_seed() -> None:
    """On CUDA at the real vocabulary, generators there too: the kept tokens are the CPU filter's (top-p may differ by a
    token at an ulp), every draw is a kept token, and a row draws the same alone as in the batch."""
    generator = torch.Generator().manual_seed(12)
    logits = 4 * torch.randn(64, 151936, generator=generator)
    settings = [(0.7, 0, 1.0), (0.7, 50, 1.0), (1.0, 0, 0.9), (0.5, 40, 0.95)]
    params = [SamplingParams(temperature=t, top_k=k, top_p=p) for t, k, p in settings] * 16
    kept_cpu = torch.isfinite(filtered_logits(logits, params))
    kept_gpu = torch.isfinite(filtered_logits(logits.cuda(), params)).cpu()
    assert ((kept_cpu != kept_gpu).sum(dim=-1) <= 1).all()

    def draws(rows: list[int]) -> torch.Tensor:
        generators = [torch.Generator(device="cuda").manual_seed(row) for row in rows]
        return sample(logits[rows].cuda(), [params[row] for row in rows], generators).cpu()

    tokens = draws(list(range(64)))
    assert kept_gpu[torch.arange(64), tokens].all()
    assert [draws([row]).item() for row in (0, 17, 63)] == tokens[[0, 17, 63]].tolist()
