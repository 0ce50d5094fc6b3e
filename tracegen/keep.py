"""Reduce each layer's attention to what the --attention policy keeps, as the layer computes
it (torch). The layouts are described in `tracegen.policy`.

A recorded pass hands every layer's probabilities [H, rows, keys] to `AttentionKeeper.take`
and drops them when the layer returns, so the run never holds more than the one layer's
matrix the model itself computes, plus what the policy keeps. The prompt pass also yields
the head scores, from its whole prompt x prompt matrix.

A pass's rows are positions first..first+rows-1 and its keys end at its last position:
usually they start at 0, but a sliding-window cache (Mistral, Gemma 2/3) keeps only the most
recent keys, which is why keys are aligned at their end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .policy import AttentionPolicy, induction_pairs


def head_scores(probs: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[3, H] float32: first-token, previous-token and induction scores (policy.HEAD_SCORES)
    of one layer's prompt x prompt probabilities [H, n, n], over queries 1..n-1."""
    heads, n = probs.shape[0], probs.shape[1]
    if n < 2:
        return torch.zeros(3, heads)
    probs = probs.float()
    queries = torch.arange(1, n)
    first = probs[:, 1:, 0].mean(-1)
    previous = probs[:, queries, queries - 1].mean(-1)
    induction = torch.zeros(heads)
    query_ids, key_ids = pairs
    if len(query_ids):
        per_query = torch.zeros(heads, n).index_add_(1, query_ids, probs[:, query_ids, key_ids])
        has_target = torch.zeros(n, dtype=torch.bool)
        has_target[query_ids] = True
        induction = per_query[:, has_target].mean(-1)
    return torch.stack([first, previous, induction]).cpu()


def sink_shares(probs: torch.Tensor) -> torch.Tensor:
    """[H] float32: the mean share of a row that reaches no token, 1 - the row's sum, over
    queries 1..n-1 of one layer's prompt x prompt probabilities [H, n, n] (the queries of
    `head_scores`). With attention sinks (GPT-OSS) a learned logit per head joins the softmax
    and its column is dropped, so that share went to the sink; without, it is rounding."""
    heads, n = probs.shape[0], probs.shape[1]
    if n < 2:
        return torch.zeros(heads)
    row_sums = probs[:, 1:].sum(-1, dtype=torch.float32)  # [H, n-1], no float32 copy of probs
    return (1.0 - row_sums).clamp_min(0.0).mean(-1).cpu()


@dataclass
class _Part:
    first: int  # the pass's first row position
    first_key: int  # the position of its first key
    probs: torch.Tensor  # full and rows: [H, rows, keys] f16 (rows: the kept rows only)
    row_positions: list[int] = field(default_factory=list)
    packed: bool = False  # full: probs is the prompt pass's lower triangle [H, rows(rows+1)/2]
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # probs, keys, rest


class AttentionKeeper:
    """Keeps, per layer, what the policy stores, pass by pass; `tensors` assembles a layer."""

    def __init__(self, policy: AttentionPolicy, n_layers: int, prompt_ids: list[int]):
        self.policy = policy
        self.n_prompt = len(prompt_ids)
        queries, keys = induction_pairs(prompt_ids)
        self.pairs = (torch.from_numpy(queries), torch.from_numpy(keys))
        self.parts: list[list[_Part]] = [[] for _ in range(n_layers)]
        self.scores: list[torch.Tensor | None] = [None] * n_layers
        self.sinks: list[torch.Tensor | None] = [None] * n_layers

    def take(self, index: int, first: int, probs: torch.Tensor) -> None:
        """One layer's probabilities [H, rows, keys] for rows first..first+rows-1."""
        rows, keys = probs.shape[1], probs.shape[2]
        first_key = first + rows - keys
        if first == 0 and rows == self.n_prompt:
            device = probs.device
            pairs = tuple(p.to(device) for p in self.pairs)
            self.scores[index] = head_scores(probs[:, :, : self.n_prompt], pairs)
            self.sinks[index] = sink_shares(probs[:, :, : self.n_prompt])
        part = _Part(first, first_key, probs)
        kind, count = self.policy.kind, self.policy.count
        if kind == "full" and first == 0 and keys == rows:
            # the prompt pass packed at once: half the square, in the stored dtype
            below = torch.tril_indices(rows, rows, device=probs.device)
            part.probs = probs[:, below[0], below[1]].to("cpu", torch.float16)
            part.packed = True
        elif kind == "full":
            part.probs = probs.to("cpu", torch.float16, copy=True)
        elif kind == "rows":
            # The final number of positions is known only after the steps; keep every row
            # that may turn out to be among the last `count`, and the prompt's end.
            wanted = [
                offset
                for offset in range(rows)
                if offset >= rows - count or first + offset == self.n_prompt - 1
            ]
            part.row_positions = [first + offset for offset in wanted]
            part.probs = probs[:, wanted].to("cpu", torch.float16, copy=True)
        else:
            part.topk = _top_keys(probs, count, first, first_key)
            part.probs = torch.empty(0)
        self.parts[index].append(part)

    def seen(self, index: int) -> int:
        """How many passes of layer `index` reached the keeper."""
        return len(self.parts[index])

    def tensors(self, index: int, n_positions: int) -> dict[str, torch.Tensor]:
        """Layer `index`'s attention tensors as the trace stores them."""
        parts = self.parts[index]
        if self.policy.kind == "full":
            return {"attn_probs_tril": _packed(parts, n_positions)}
        if self.policy.kind == "rows":
            kept = self.policy.rows(self.n_prompt, n_positions)
            return {"attn_rows": _rows(parts, kept, n_positions)}
        kept = [part.topk for part in parts if part.topk is not None]
        probs, keys, rest = (torch.cat(x, dim=1) for x in zip(*kept, strict=True))
        return {"attn_topk_probs": probs, "attn_topk_keys": keys, "attn_rest": rest}

    def head_scores(self) -> torch.Tensor:
        """[L, 3, H] from the prompt pass."""
        missing = [i for i, scores in enumerate(self.scores) if scores is None]
        if missing:
            raise RuntimeError(f"layer {missing[0]} gave no prompt-pass attention")
        return torch.stack(self.scores)  # type: ignore[arg-type]

    def sink_shares(self) -> torch.Tensor:
        """[L, H] from the prompt pass (see `sink_shares`)."""
        self.head_scores()  # the same passes fill both: one error if a layer gave none
        return torch.stack(self.sinks)  # type: ignore[arg-type]


def _top_keys(
    probs: torch.Tensor, k: int, first: int, first_key: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's k largest weights [H, rows, k] f16, their key positions [H, rows, k] int32
    (-1 where the row has fewer than k keys), and the sum of the rest [H, rows] f16."""
    heads, rows, keys = probs.shape
    values, columns = probs.float().topk(min(k, keys), dim=-1)
    positions = columns + first_key
    query = first + torch.arange(rows, device=probs.device).view(1, rows, 1)
    future = positions > query  # zero weights topk may pick in a row with fewer than k keys
    values = values.masked_fill(future, 0.0)
    positions = positions.masked_fill(future, -1)
    rest = (probs.float().sum(-1) - values.sum(-1)).clamp_min(0.0)
    pad = k - values.shape[-1]
    if pad:
        values = torch.nn.functional.pad(values, (0, pad), value=0.0)
        positions = torch.nn.functional.pad(positions, (0, pad), value=-1)
    return (
        values.to("cpu", torch.float16),
        positions.to("cpu", torch.int32),
        rest.to("cpu", torch.float16),
    )


def _row_slices(part: _Part, offset: int) -> tuple[int, int, torch.Tensor]:
    """Row `offset` of a part: (position, first key, its weights on keys first_key..position)."""
    position = part.row_positions[offset] if part.row_positions else part.first + offset
    return position, part.first_key, part.probs[:, offset, : position + 1 - part.first_key]


def _packed(parts: list[_Part], n_positions: int) -> torch.Tensor:
    """[H, N(N+1)/2] float16, row by row in numpy.tril_indices order, never the N x N square."""
    heads = parts[0].probs.shape[0]
    packed = torch.zeros(heads, n_positions * (n_positions + 1) // 2, dtype=torch.float16)
    for part in parts:
        if part.packed:  # the prompt pass: its whole triangle at once
            packed[:, : part.probs.shape[1]] = part.probs
            continue
        for offset in range(part.probs.shape[1]):
            position, first_key, seen = _row_slices(part, offset)
            start = position * (position + 1) // 2
            packed[:, start + first_key : start + position + 1] = seen
    return packed


def _rows(parts: list[_Part], kept: list[int], n_positions: int) -> torch.Tensor:
    """[H, len(kept), N] float16: the whole rows of the kept positions."""
    heads = parts[0].probs.shape[0]
    out = torch.zeros(heads, len(kept), n_positions, dtype=torch.float16)
    slot = {position: i for i, position in enumerate(kept)}
    for part in parts:
        for offset in range(len(part.row_positions)):
            position, first_key, seen = _row_slices(part, offset)
            if position in slot:
                out[:, slot[position], first_key : position + 1] = seen
    return out


def unpack_attention(packed: torch.Tensor, n_positions: int) -> torch.Tensor:
    """[H, N(N+1)/2] -> [H, N, N] float32, zero above the diagonal."""
    full = torch.zeros(packed.shape[0], n_positions, n_positions)
    below = torch.tril_indices(n_positions, n_positions)
    full[:, below[0], below[1]] = packed.float()
    return full


def kept_error(policy: AttentionPolicy, layer: dict[str, torch.Tensor], own: torch.Tensor,
               rows: list[int] | None) -> float:  # fmt: skip
    """The largest difference between what a layer's trace keeps and the model's own
    probabilities [H, N, N] over every traced position (the parity gate's `attention`)."""
    if policy.kind == "full":
        return float((unpack_attention(layer["attn_probs_tril"], own.shape[-1]) - own).abs().max())
    if policy.kind == "rows":
        return float((layer["attn_rows"].float() - own[:, rows]).abs().max())
    keys = layer["attn_topk_keys"].long()
    valid = keys >= 0
    at_keys = own.gather(-1, keys.clamp_min(0)).masked_fill(~valid, 0.0)
    kept = (layer["attn_topk_probs"].float() - at_keys).abs().max()
    rest = (own.sum(-1) - at_keys.sum(-1) - layer["attn_rest"].float()).abs().max()
    # The kept keys must be the largest: nothing left out may outweigh the smallest kept.
    # Head by head, since the scatter copies the head's N x N matrix.
    left_out = torch.stack([
        own[head].scatter(-1, keys[head].clamp_min(0), 0.0).amax(-1)
        for head in range(own.shape[0])
    ])  # fmt: skip
    smallest = layer["attn_topk_probs"].float().masked_fill(~valid, float("inf")).amin(-1)
    full_rows = valid.all(-1)  # a row with fewer than k keys keeps all of them
    order = torch.where(full_rows, (left_out - smallest).clamp_min(0.0), 0.0).max()
    return float(max(kept, rest, order))
