"""What of each layer's attention and activations a trace keeps (`tracegen run --attention`,
`--activations`). NumPy only.

The model computes an N x N probability matrix per head and layer; stored whole, it makes a
trace grow with the square of the prompt. Three layouts:

    full      every row: the lower triangle, `attn_probs_tril` [H, N(N+1)/2]
    rows:R    whole rows for the last R positions and the prompt's end (the answer position,
              which the panels read): `attn_rows` [H, rows, N]; the manifest lists the rows
    topk:K    for every position, its K largest weights and their keys, and the sum of the
              rest: `attn_topk_probs` [H, N, K], `attn_topk_keys` [H, N, K] (-1 where a
              position has fewer than K keys), `attn_rest` [H, N]

Whatever the layout, three head scores are computed from every prompt row while the layer's
whole matrix is in memory, and stored in derived.safetensors (see `head_scores`). Those and
the answer position's row are all the story's panels need, so every layout builds the site.

Activations (the residual stream in and out of each block and what attention and the MLP
write to it, D numbers per position each) grow linearly, but at 138 kB per position for the
default model they are most of a long prompt's trace:

    all       every position: [N, D] each
    rows:R    the positions rows:R names for attention: [rows, D] each, listed in the
              manifest's `activations.rows`; the panels read the answer position's only
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Generated steps stop at the end of the answer's line, 16 by default: rows:16 keeps the
# answer position and every generated step's row for a default run.
DEFAULT_POLICY = "rows:16"
DEFAULT_ACTIVATIONS = "rows:16"
MAX_KEPT = 1 << 20  # a bound on R and K, far above any real use; catches typos like rows:1e9
POLICY_SYNTAX = "full, rows:R (R >= 1) or topk:K (K >= 1)"
ACTIVATIONS_SYNTAX = "all or rows:R (R >= 1)"

# The tensors of each layout, with the schema's symbolic shapes (see store.LAYER_TENSORS).
LAYOUT_TENSORS: dict[str, dict[str, tuple[str, ...]]] = {
    "full": {"attn_probs_tril": ("H", "P")},
    "rows": {"attn_rows": ("H", "R", "N")},
    "topk": {
        "attn_topk_probs": ("H", "N", "A"),
        "attn_topk_keys": ("H", "N", "A"),
        "attn_rest": ("H", "N"),
    },
}
ATTENTION_TENSORS = frozenset(name for layout in LAYOUT_TENSORS.values() for name in layout)

# Head scores, [L, H] each, over the prompt's positions (queries 1..n_prompt-1):
#   head_first_token     mean attention on the first token (a sink where it is high)
#   head_previous_token  mean attention on the token just before the query
#   head_induction       mean attention on the keys that followed an earlier occurrence of
#                        the query's token (see `induction_pairs`), over queries that have one
HEAD_SCORES = ("head_first_token", "head_previous_token", "head_induction")


class PolicyError(ValueError):
    """A malformed --attention value. The message is one line."""


@dataclass(frozen=True)
class AttentionPolicy:
    """What --attention (or --activations, whose kinds are "all" and "rows") keeps."""

    kind: str  # "full", "rows" or "topk"; "all" or "rows" for activations
    count: int = 0  # R for rows, K for topk

    def __str__(self) -> str:
        return f"{self.kind}:{self.count}" if self.count else self.kind

    def rows(self, n_prompt: int, n_positions: int) -> list[int]:
        """The query positions whose whole rows `rows:R` keeps, ascending."""
        last = range(max(n_positions - self.count, 0), n_positions)
        return sorted({max(n_prompt - 1, 0), *last})


def parse_policy(text: str) -> AttentionPolicy:
    """'full', 'rows:16' or 'topk:8' -> AttentionPolicy; anything else is a PolicyError."""
    return _parse(text, "full", ("rows", "topk"), f"--attention {text!r} is not one of "
                  f"{POLICY_SYNTAX}")  # fmt: skip


def parse_activations(text: str) -> AttentionPolicy:
    """'all' or 'rows:16' -> the positions whose activations a trace keeps."""
    return _parse(text, "all", ("rows",), f"--activations {text!r} is not one of "
                  f"{ACTIVATIONS_SYNTAX}")  # fmt: skip


def _parse(text: str, whole: str, counted: tuple[str, ...], error: str) -> AttentionPolicy:
    value = text.strip().lower()
    if value == whole:
        return AttentionPolicy(whole)
    match = re.fullmatch(rf"({'|'.join(counted)}):(\d+)", value)
    if not match or not 1 <= int(match.group(2)) <= MAX_KEPT:
        raise PolicyError(error)
    return AttentionPolicy(match.group(1), int(match.group(2)))


def induction_pairs(token_ids: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(queries, keys) where key k follows an earlier occurrence of query q's token: token
    k-1 equals token q and k-1 <= q-2, so k < q. Listed pairs, not an N x N mask: a prompt
    of 8,192 tokens has about N x (repeats per token) of them, not N^2."""
    ids = np.asarray(token_ids)
    queries, keys = [], []
    where: dict[int, list[int]] = {}
    for q, token in enumerate(ids.tolist()):
        earlier = where.setdefault(token, [])
        # occurrences at j <= q-2 give the key j+1 <= q-1; the one at q-1 would give k = q
        for j in earlier:
            if j <= q - 2:
                queries.append(q)
                keys.append(j + 1)
        earlier.append(q)
    return np.asarray(queries, dtype=np.int64), np.asarray(keys, dtype=np.int64)


def induction_chance(token_ids: list[int] | np.ndarray) -> float:
    """The induction score uniform attention would give: targets / keys, averaged over the
    queries that have a target."""
    queries, _ = induction_pairs(token_ids)
    if not len(queries):
        return 0.0
    counts = np.bincount(queries, minlength=len(token_ids))
    has = counts > 0
    return float((counts[has] / (np.arange(len(token_ids)) + 1)[has]).mean())
