"""Each row's next token: greedy at temperature 0, else softmax(logits / T) cut to the top-p nucleus.

Greedy rows take one argmax over the whole batch; sampling rows are drawn one by one, each with
its request's own generator when it sent a `seed` (so a seeded request gives the same answer
whoever shares its batch). torch is imported in the functions, which run on the engine thread:
the HTTP app imports this module for SamplingParams and should start listening before torch loads.
"""
from __future__ import annotations

from dataclasses import dataclass

GREEDY_BELOW = 1e-5  # as vLLM: a temperature this small is greedy (dividing by it would overflow)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def generator(self):
        import torch

        return torch.Generator().manual_seed(self.seed) if self.seed is not None and not self.greedy else None


def next_tokens(logits, params: list[SamplingParams], generators: list) -> list[int]:
    """One token per row of `logits` ([rows, vocab])."""
    chosen = logits.argmax(-1).tolist()
    for row, p in enumerate(params):
        if not p.greedy:
            chosen[row] = sample(logits[row], p.temperature, p.top_p, generators[row])
    return chosen


def sample(logits, temperature: float, top_p: float, generator=None) -> int:
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    ordered, order = probs.sort(descending=True)
    # Keep the smallest prefix whose mass reaches top_p: a token stays while the mass before it is short
    # of top_p, so the most likely token always stays.
    ordered[(ordered.cumsum(0) - ordered) >= top_p] = 0.0
    return int(order[torch.multinomial(ordered, 1, generator=generator)])
