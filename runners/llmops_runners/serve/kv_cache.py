"""The KV cache of a left-padded batch whose rows join and leave between decode steps.

Every layer's keys and values are [rows, heads, T, head_dim] tensors and the attention mask is
[rows, T]: row i holds its tokens in the last columns of the mask, zeros (padding) before them.
Left padding keeps every row's newest token in the same (last) column, so one forward of shape
[rows, 1] decodes the whole batch; the mask hides the padding and each row's position ids count
its own tokens only, so a row's results do not depend on who else is in the batch.

Rows join (`concat`: the shorter side is padded on the left to the longer) and leave (`select`:
then the columns that are padding in every remaining row are cut, so T stays the longest row's
length). These are plain tensor functions: both backends hand their caches in as `Layers`.
"""
from __future__ import annotations

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]


def left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """`tensor` with zeros added before its entries along `dim`, up to `length`."""
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def concat(a: Layers, a_mask: torch.Tensor, b: Layers, b_mask: torch.Tensor) -> tuple[Layers, torch.Tensor]:
    """The rows of `a` then those of `b`, in one cache as long as the longer of the two."""
    length = max(a_mask.shape[1], b_mask.shape[1])
    layers = [(torch.cat([left_pad(ka, length, -2), left_pad(kb, length, -2)]),
               torch.cat([left_pad(va, length, -2), left_pad(vb, length, -2)]))
              for (ka, va), (kb, vb) in zip(a, b)]
    return layers, torch.cat([left_pad(a_mask, length, 1), left_pad(b_mask, length, 1)])


def select(layers: Layers, mask: torch.Tensor, rows: list[int]) -> tuple[Layers, torch.Tensor]:
    """Only `rows` (in that order), without the leading columns that are padding in all of them."""
    index = torch.tensor(rows, dtype=torch.long)
    mask = mask.index_select(0, index)
    start = int(leading_padding(mask).min()) if rows else 0
    mask = mask[:, start:]
    layers = [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:]) for k, v in layers]
    return layers, mask


def leading_padding(mask: torch.Tensor) -> torch.Tensor:
    """Per row, how many columns of padding come before its first token."""
    return (mask.cumsum(1) == 0).sum(1)


def prompt_batch(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of the prompts, left-padded to the longest."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[i, length - len(prompt):] = 1
    return ids, mask, positions(mask)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Each column's position within its own row (padding gets 0: it is masked out anyway)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def attention_mask_4d(mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """The [rows, 1, queries, keys] boolean mask (True: may attend) of the last `query_length` columns of
    a left-padded batch: causal, padding hidden. A query at a padding position attends to itself, so that
    no row of the mask is empty (an empty row's softmax is NaN, which would reach real tokens through
    the next layer's keys)."""
    keys = mask.shape[1]
    q_index = torch.arange(keys - query_length, keys)[:, None]
    k_index = torch.arange(keys)[None, :]
    allowed = (k_index <= q_index)[None] & mask[:, None, :].bool()
    allowed |= (k_index == q_index)[None]
    return allowed[:, None]
