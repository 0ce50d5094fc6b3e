"""The story's own numbers and where things are in the prompt: what every panel measures
against. Pure functions of a trace (numpy only; no Altair, no text for pages)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..store import Trace

# --- the story's own numbers (the only constants a caption may quote) -------------------------

GPT3_LAYERS = 96  # "the 32nd layer" of GPT-3, which has 96
GPT3_PARAMS = 175e9  # GPT-3 175B, the model of "Giving GPT-3 a Turing Test"
STORY_LAYER = 32  # "around the 32nd layer ..."
STORY_TOKEN = 400  # "... of the 400th token in the sequence"
THREE_QUARTERS = 0.75  # "My own consciousness extends about three quarters of the layers"


# --- token text -------------------------------------------------------------------------------


def vocabulary(trace: Trace) -> Callable[[int], str]:
    """id -> token text (`Trace.vocabulary`); an id the trace spells nowhere shows as #id."""
    table = trace.vocabulary
    return lambda token_id: table.get(int(token_id), f"#{int(token_id)}")


# --- positions in the prompt ------------------------------------------------------------------


def answer_position(trace: Trace) -> int:
    """The last prompt position ("A: Your"), where the model predicts its first answer token."""
    return max(trace.n_prompt - 1, 0)


def unplaced_attention(trace: Trace, position: int) -> float:
    """The largest share of one head's attention from `position` that the trace does not
    place on a key: a topk:K trace keeps each row's K largest weights (0 otherwise)."""
    rest = [trace.attention_rest(index, position) for index in range(trace.n_layers)]
    return float(np.max(rest)) if rest else 0.0


def sink_shares(trace: Trace) -> np.ndarray | None:
    """[L, H]: the share of each head's prompt rows that goes to its learned attention sink
    rather than to any token, for a model with sinks (GPT-OSS); None for a model without,
    whose rows sum to 1 (its trace has no `head_sink`)."""
    if not trace.has_derived("head_sink"):
        return None
    return trace.derived("head_sink").astype(np.float64)


def sink_share_from(trace: Trace, position: int) -> float:
    """The mean over layers and heads of the share of `position`'s row that reaches no key:
    1 - its placed weights - what topk:K leaves unplaced (the sink's share)."""
    shares = [
        1.0 - trace.attention_row(index, position).sum(-1) - trace.attention_rest(index, position)
        for index in range(trace.n_layers)
    ]  # [L][H]
    return float(np.clip(np.mean(shares), 0.0, 1.0)) if shares else 0.0


def step_position(trace: Trace, step: int) -> int:
    """The position whose prediction is generated token `step` (0-based)."""
    return answer_position(trace) + step


# Words that answer "how many": the story's "zero", "no" and "two", and the other small counts
# a model might pick. Other watched tokens (such as " foot") are not counts.
COUNT_WORDS = {
    "no",
    "zero",
    "none",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
}


def is_count_word(text: str) -> bool:
    word = text.strip().lower()
    return word in COUNT_WORDS or word.isdigit()


def count_tokens(trace: Trace) -> list[tuple[int, int, str]]:
    """(index into watched, token id, text) for the watched tokens that are counts."""
    return [
        (w, int(entry["id"]), str(entry["text"]))
        for w, entry in enumerate(trace.watched)
        if is_count_word(str(entry["text"]))
    ]


@dataclass(frozen=True)
class CountPosition:
    """Where the model has to say how many eyes, and how that place was found.

    how:   "emitted" (a generated count word), "likeliest" (the step where the watched counts
           are most probable together) or "last" (the last prompt position).
    token: the generated count word ("emitted"), else "".
    total: the watched counts' probability together there ("likeliest"), else NaN.
    """

    position: int
    step: int  # which generated token is predicted there (0-based)
    how: str
    token: str = ""
    total: float = float("nan")


def count_position(trace: Trace) -> CountPosition:
    """Where the model has to say how many eyes.

    1. the first step of the continuation whose greedy token is a watched count word;
    2. otherwise the traced step where the watched count words together are most probable;
    3. otherwise the last prompt position.
    """
    counts = count_tokens(trace)
    count_ids = [token_id for _, token_id, _ in counts]
    n_steps = trace.n_positions - answer_position(trace)
    for step, token_id in enumerate(trace.generated_ids[:n_steps]):
        if token_id in count_ids:
            token = trace.generated_strings[step]
            return CountPosition(step_position(trace, step), step, "emitted", token=token)
    if counts and n_steps > 0:
        final = trace.derived("watched_probs")[-1, answer_position(trace) :]  # [steps, W]
        totals = np.nan_to_num(final[:, [w for w, _, _ in counts]].sum(-1), nan=0.0)
        step = int(np.argmax(totals))
        if totals[step] > 0:
            return CountPosition(
                step_position(trace, step), step, "likeliest", total=float(totals[step])
            )
    return CountPosition(answer_position(trace), 0, "last")


def prompt_text(trace: Trace) -> str:
    return "".join(trace.token_strings[: trace.n_prompt])


def leading_special_tokens(trace: Trace) -> int:
    """How many positions at the start of the trace are a special token the tokenizer added
    (a BOS such as Gemma's <bos>) rather than prompt text: 1 or 0."""
    tokenizer = trace.manifest.get("tokenizer") or {}
    if not trace.token_strings or trace.n_prompt < 1:
        return 0
    bos = tokenizer.get("bos_token")
    first = trace.token_strings[0]
    return int(bool(tokenizer.get("adds_bos")) or (bool(bos) and first == bos))


def context_before(trace: Trace, position: int, n_tokens: int = 6, same_line: bool = False) -> str:
    """The text of the last `n_tokens` tokens up to and including `position`, newlines shown as
    ⏎; with `same_line`, only what follows the last newline in that window (when anything
    does). A leading BOS is left out."""
    start = max(position + 1 - n_tokens, leading_special_tokens(trace), 0)
    text = "".join(trace.token_strings[start : position + 1])
    if same_line and text.rstrip("\n").count("\n"):
        tail = text.rstrip("\n").rsplit("\n", 1)[1]
        text = tail if tail.strip() else text
    return text.replace("\n", " ⏎ ")


def line_of_each_token(trace: Trace) -> list[int]:
    """The prompt line each prompt token sits on (a token holding a newline ends its line)."""
    lines, line = [], 0
    for text in trace.token_strings[: trace.n_prompt]:
        lines.append(line)
        line += text.count("\n")
    return lines


def qa_block_starts(trace: Trace) -> list[int]:
    """Token positions (in trace coordinates) where a "Q:" line starts, in order.

    Found from the decoded text, so any tokenizer works. A special token the tokenizer put
    in front (BOS) is not prompt text: the search starts after it, so the first "Q:" still
    counts as starting a line. A prompt with no Q lines gives [0].
    """
    skip = leading_special_tokens(trace)
    strings = trace.token_strings[skip : trace.n_prompt]
    text = "".join(strings)
    char_starts = [
        0 if match.start() == 0 else match.start() + 1 for match in re.finditer(r"(?:^|\n)Q:", text)
    ]
    offsets = np.cumsum([0] + [len(t) for t in strings])
    found = {int(np.searchsorted(offsets, c, side="right") - 1) for c in char_starts}
    starts = sorted(skip + position for position in found)
    return starts or [0]


def start_span(trace: Trace) -> range:
    """The first Q/A block: "the start of the prompt" that the narrator re-reads."""
    starts = qa_block_starts(trace)
    end = starts[1] if len(starts) > 1 else max(1, trace.n_prompt // 10)
    return range(0, min(end, trace.n_prompt))


def end_span(trace: Trace) -> range:
    """The last two Q/A blocks, which the story quotes as "the end of the sequence"."""
    starts = qa_block_starts(trace)
    begin = starts[-2] if len(starts) >= 2 else trace.n_prompt - max(1, trace.n_prompt // 4)
    return range(max(begin, 0), trace.n_prompt)


def depth_at(fraction: float, n_layers: int) -> int:
    """The depth at `fraction` of the way up an `n_layers` model: the one rounding rule for
    every panel (the story's layer 32 of 96, its three quarters).

    Depth d is the residual stream after layer d (0 = the embeddings), so layers 1..d are
    the layers "up to" it and layers d+1..L the ones above it. The depth is the nearest whole
    one, and a tie (0.75 x 10 = 7.5) goes down, so that the layers up to it never make more
    than `fraction` of the model on a tie.
    """
    n_layers = max(int(n_layers), 0)
    return min(max(math.ceil(fraction * n_layers - 0.5 - 1e-9), 0), n_layers)


def story_depth(n_layers: int) -> tuple[float, int]:
    """Where "layer 32 of 96" falls on this model: (fraction of depth, its depth)."""
    fraction = STORY_LAYER / GPT3_LAYERS
    return fraction, depth_at(fraction, n_layers)


def three_quarters_depth(n_layers: int) -> int:
    """Where the narrator's consciousness ends ("about three quarters of the layers"): layers
    1..this are the narrator's, layers above it "the last quarter"."""
    return depth_at(THREE_QUARTERS, n_layers)


# --- components -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """An attribution component: kind "embed", "attn", "mlp" or "other"; layer 1..L (0 for
    the embeddings, L+1 for anything after the last block such as a norm bias)."""

    name: str
    kind: str
    layer: int

    @property
    def label(self) -> str:
        """In prose, layers count from 1 (the trace's component names count blocks from 0)."""
        if self.kind == "embed":
            return "embeddings"
        if self.kind in ("attn", "mlp"):
            return f"{'attention' if self.kind == 'attn' else 'MLP'} {self.layer}"
        return self.name


def parse_components(names: Sequence[str], n_layers: int) -> list[Component]:
    parsed = []
    for name in names:
        lowered = name.lower()
        kind = next((k for k in ("attn", "mlp") if k in lowered), None)
        digits = re.findall(r"\d+", lowered)
        if "embed" in lowered and "unembed" not in lowered:
            parsed.append(Component(name, "embed", 0))
        elif kind and digits:
            parsed.append(Component(name, kind, int(digits[0]) + 1))
        else:
            parsed.append(Component(name, "other", n_layers + 1))
    return parsed


def safe_argmax(values: np.ndarray) -> int:
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    return int(np.argmax(values)) if values.size else 0
