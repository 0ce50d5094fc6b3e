"""The narrator's checkable claims, one per story-map row, each judged from its panel's facts:
the verdict the panel decided and the one number that decides it. The claims page reads
these, so its numbers are the panels' own. Depths are fractions of the model's depth, so
models of different depth compare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .words import count, fmt_num, fmt_pct, show_token


@dataclass(frozen=True)
class Claim:
    key: str  # the panel that judges it
    said: str  # what the narrator says, in short
    decide: Callable[[Any], str]  # facts -> the deciding number, as text (no HTML)


@dataclass(frozen=True)
class Judged:
    key: str
    verdict: str
    number: str


def _depth(depth: int, n_layers: int) -> str:
    return f"{fmt_num(depth / max(n_layers, 1))} of the depth"


def _p1(f: Any) -> str:
    change = f.shape.at_story - f.shape.early
    return (
        f"top-1 = the output's at {fmt_pct(f.shape.at_story)} of positions at "
        f"{_depth(f.story_depth, f.n_layers)} ({'+' if change >= 0 else '−'}"
        f"{count(round(100 * abs(change)), 'point')} from layer {f.early})"
    )


def _p3(f: Any) -> str:
    return (
        f"{f.reading_heads} of {count(f.n_all, 'head')} read the first block at 2× its uniform "
        f"share (best {fmt_pct(f.best_start_mass)})"
    )


def _p4(f: Any) -> str:
    return f"{f.end_heads} of {count(f.n_all, 'head')} ({fmt_pct(f.end_heads / max(f.n_all, 1))})"


def _p5(f: Any) -> str:
    if f.bet is None or f.best_correct is None:
        return "not watched"
    return (
        f"{show_token(f.bet.text)} {fmt_pct(f.bet.prob)} vs {show_token(f.best_correct.text)} "
        f"{fmt_pct(f.best_correct.prob)}"
    )


def _p6(f: Any) -> str:
    return f"median take-over at {fmt_num(f.median_takeover_fraction)} of the depth (story: 0.75)"


def _p7(f: Any) -> str:
    return f"the last quarter writes {fmt_pct(f.at['the answer'].late_share)} of the logit"


def _p8(f: Any) -> str:
    return f"first {show_token(f.first)}, count {show_token(f.chosen)}"


def _p9(f: Any) -> str:
    diff = f.max_abs_logit_diff
    return (
        f"{'eval' if f.eval_mode else 'training'} mode, gradients "
        f"{'on' if f.grad_enabled else 'off'}, two passes "
        + ("bit-identical" if diff == 0 else f"differ by {fmt_num(diff, 6)}")
    )


def _p10(f: Any) -> str:
    return f"output entropy {fmt_num(f.output_entropy[0])} → {fmt_num(f.output_entropy[-1])} nats"


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "p1", "around the 32nd layer, n-gram statistics give way to a higher-order description", _p1
    ),
    Claim("p3", "a layer re-reads the start of the prompt", _p3),
    Claim("p4", "a few heads attend again to the end of the sequence", _p4),
    Claim("p5", "frequency wins: “two eyes” over “zero” or “no eyes”", _p5),
    Claim("p6", "a second decoder takes over at about three quarters of the depth", _p6),
    Claim("p7", "the layers below are a means to an end: the answer is written late", _p7),
    Claim("p8", "the decoder sampled “foot”, and the bet “two” wins", _p8),
    Claim("p9", "no dropout, no backpropagation, no update", _p9),
    Claim("p10", "reborn every forward pass", _p10),
)


def judge(facts: dict[str, Any]) -> list[Judged]:
    """Every claim for one model, from its panels' facts (key -> facts)."""
    return [Judged(c.key, facts[c.key].verdict, c.decide(facts[c.key])) for c in CLAIMS]
