"""Tokens from a step's logits: argmax for greedy rows; for the others temperature, top-k and top-p over all of them
at once, then one draw per row from that row's own generator (so a row's token depends on its logits and its
sequence's seed alone, whatever else is in the batch)."""

import numpy as np
import torch

from qasr.engine.device_copy import to_device
from qasr.scheduler import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row of logits [num_rows, vocab]: argmax for greedy rows, seeded sampling otherwise."""
    drawn = [row for row, p in enumerate(params) if not p.greedy]
    if len(drawn) == len(params):
        return draw(logits, params, generators)
    tokens = logits.argmax(dim=-1)
    if not drawn:
        return tokens
    rows = on_device(drawn, np.int64, logits.device)
    tokens[rows] = draw(logits[rows], [params[row] for row in drawn], [generators[row] for row in drawn])
    return tokens


def draw(logits: torch.Tensor, params: list[SamplingParams],
         generators: list[torch.Generator | None]) -> torch.Tensor:
    """A token drawn from each row's tempered, top-k and top-p filtered distribution by inverse transform: the first
    token whose cumulative probability exceeds a uniform number, which is all a row takes from its generator (one
    call a row, where multinomial is a chain of launches a row). In float64: float32's 24-bit steps would leave the
    least likely tokens no uniform number that picks them."""
    cumulative = filtered_logits(logits, params).softmax(dim=-1).double().cumsum(dim=-1)
    total = cumulative[:, -1:]
    uniform = torch.empty_like(total)
    for row, generator in enumerate(generators):
        uniform[row].uniform_(generator=generator)
    # below the total, so some token's cumulative probability exceeds it: the first such token has a probability
    # above 0 (a filtered token adds nothing to the sum before it)
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    # a row that is not a distribution (NaN logits: a broken model) would find no token; it gets the last id, as
    # greedy argmax gives some id for such a row, rather than one outside the vocabulary
    return torch.searchsorted(cumulative, target, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def on_device(values: list, dtype: type, device: torch.device) -> torch.Tensor:
    """A short list of per-row values on the logits' device, without waiting for the step's forward to finish."""
    return to_device(np.asarray(values, dtype=dtype), device)


def filtered_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """float32 logits / temperature, with the tokens outside each row's top_k (the k largest, ties with the k-th
    kept) and then outside its top_p (the fewest most likely tokens whose probability reaches top_p) at -inf."""
    device = logits.device
    logits = logits.float() / on_device([p.temperature for p in params], np.float32, device)[:, None]
    top_k = [p.top_k for p in params]
    top_p = [p.top_p for p in params]
    uses_top_p = any(p < 1.0 for p in top_p)
    if not uses_top_p and not any(top_k):
        return logits
    vocab = logits.shape[-1]
    if uses_top_p:
        ordered, order = logits.sort(dim=-1, descending=True)
    else:
        ordered = logits.topk(min(max(top_k), vocab), dim=-1).values
    if any(top_k):
        k = on_device([min(k, vocab) if k else 1 for k in top_k], np.int64, device)
        kth = ordered.gather(1, (k - 1)[:, None])
        kth.masked_fill_(on_device([not k for k in top_k], np.bool_, device)[:, None], float("-inf"))
        logits = logits.masked_fill(logits < kth, float("-inf"))
        if uses_top_p:
            ordered = ordered.masked_fill(ordered < kth, float("-inf"))  # masking keeps the order
    if uses_top_p:
        probs = ordered.softmax(dim=-1)
        # a token goes once the more likely ones already reach top_p; rows without top_p keep every token
        limit = on_device(top_p, np.float32, device)[:, None]
        drop = (probs.cumsum(dim=-1) - probs >= limit) & (limit < 1.0)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter_(1, order, drop), float("-inf"))
    return logits
