"""The head scores computed the plain way, from whole N x N matrices with an N x N induction
mask: the independent check of what `tracegen.keep.head_scores` computes at trace time from
listed pairs (and what the synthetic traces carry)."""

from __future__ import annotations

import numpy as np


def induction_mask(token_ids: list[int]) -> np.ndarray:
    """[n, n]: 1 where key k follows an earlier occurrence (k-1 < q-1) of query q's token."""
    ids = np.asarray(token_ids)
    n = len(ids)
    same = ids[:, None] == ids[None, :]  # [q, j]
    earlier = np.tril(np.ones((n, n), dtype=bool), k=-2)  # j <= q - 2, so j + 1 < q
    mask = np.zeros((n, n))
    mask[:, 1:] = (same & earlier)[:, :-1]
    return mask


def reference_head_scores(
    attention: list[np.ndarray], token_ids: list[int], n_prompt: int
) -> dict[str, np.ndarray]:
    """attention: per layer [H, N, N] -> head_first_token, head_previous_token,
    head_induction as [L, H] float32, over prompt queries 1..n_prompt-1."""
    n = n_prompt
    mask = induction_mask(token_ids[:n])
    has_target = mask.sum(-1) > 0
    first, previous, induction = [], [], []
    for layer in attention:
        attn = np.asarray(layer, dtype=np.float64)[:, :n, :n]
        first.append(attn[:, 1:, 0].mean(-1))
        previous.append(attn[:, np.arange(1, n), np.arange(n - 1)].mean(-1))
        if has_target.any():
            induction.append((attn * mask).sum(-1)[:, has_target].mean(-1))
        else:
            induction.append(np.zeros(attn.shape[0]))
    return {
        "head_first_token": np.stack(first).astype(np.float32),
        "head_previous_token": np.stack(previous).astype(np.float32),
        "head_induction": np.stack(induction).astype(np.float32),
    }
