"""¶7: "a useful intermediate sufficient statistic, a means to an end": which components write
the predicted token's logit directly (direct logit attribution through the frozen final norm).

Direct attribution counts only what a component writes straight into the output direction;
what it does by changing later layers' inputs is not counted. Early layers can matter a lot
and still write little directly, which is what "a means to an end" would look like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import altair as alt
import numpy as np

from ..store import Trace
from .story import (
    Component,
    answer_position,
    count_position,
    parse_components,
    three_quarters_depth,
    vocabulary,
)
from .style import WIDTH, colour_scale
from .types import BORNE_OUT, CONTEXT, MIXED, PanelDef, Words
from .vega import rounded
from .words import caption, escape, fmt_num, fmt_pct, layer_span, show_token, token_html

KIND_ORDER = ["embed", "attn", "mlp", "other"]
# Judged on the answer: borne out when the last quarter writes more than this share.
MOST = 0.5


@dataclass(frozen=True)
class Writers:
    """Direct logit attribution at one position."""

    position: int
    token: str  # the final top-1 there, whose logit is attributed
    logit: float
    parts: np.ndarray  # [C] each component's direct contribution
    top: tuple[int, ...]  # indices of the three largest writers
    kinds: dict[str, float]  # KIND_ORDER -> summed contribution
    late_share: float  # share of the logit written above three quarters; NaN if logit <= 0


@dataclass(frozen=True)
class AttributionFacts:
    n_layers: int
    components: tuple[Component, ...]  # [C]
    three_quarters_depth: int
    at: dict[str, Writers]  # "the answer", "the count"
    verdict: str

    def top_labels(self, name: str) -> list[str]:
        return [self.components[i].label for i in self.at[name].top]


def _writers(
    position: int, token: str, parts: np.ndarray, logit: float, comps: list[Component], deep: int
) -> Writers:
    late = np.array([c.layer > deep for c in comps])
    return Writers(
        position=position,
        token=token,
        logit=logit,
        parts=parts,
        top=tuple(int(i) for i in np.argsort(-parts)[:3]),
        kinds={k: float(parts[[c.kind == k for c in comps]].sum()) for k in KIND_ORDER},
        late_share=float(parts[late].sum() / logit) if logit > 0 else math.nan,
    )


def measure_attribution(trace: Trace) -> AttributionFacts:
    n_layers = trace.n_layers
    text_of = vocabulary(trace)
    components = parse_components(trace.attribution_components, n_layers)
    attribution = np.nan_to_num(trace.derived("attribution").astype(np.float64))  # [N, C]
    logit = np.nan_to_num(trace.derived("final_logit").astype(np.float64))  # [N]
    top_ids = trace.derived("lens_topk_ids")[-1, :, 0]  # [N]
    deep = three_quarters_depth(n_layers)
    positions = {"the answer": answer_position(trace), "the count": count_position(trace).position}
    at = {
        name: _writers(p, text_of(top_ids[p]), attribution[p], float(logit[p]), components, deep)
        for name, p in positions.items()
    }
    late_share = at["the answer"].late_share
    return AttributionFacts(
        n_layers=n_layers,
        components=tuple(components),
        three_quarters_depth=deep,
        at=at,
        verdict=CONTEXT
        if not math.isfinite(late_share)
        else BORNE_OUT
        if late_share > MOST
        else MIXED,
    )


def attribution_words(f: AttributionFacts) -> Words:
    last_quarter = layer_span(f.three_quarters_depth + 1, f.n_layers)

    def summary(name: str) -> str:
        w = f.at[name]
        return (
            f"For {name} ({token_html(w.token)}, logit {fmt_num(w.logit)}): the largest writers "
            "are "
            + ", ".join(f"{escape(f.components[i].label)} ({fmt_num(w.parts[i])})" for i in w.top)
            + f"; attention writes {fmt_num(w.kinds['attn'])} in all and the MLPs "
            f"{fmt_num(w.kinds['mlp'])}; the last quarter of the layers ({last_quarter}) writes "
            f"{fmt_pct(w.late_share)} of the logit."
        )

    judged = (
        "Most of the answer's logit is written by the last quarter of the layers; the layers "
        "below mostly prepare what those read, which is how a means to an end looks."
        if f.verdict == BORNE_OUT
        else "The layers below the last quarter write much of the answer themselves, so they are "
        "not only a means to an end."
    )
    answer = f.at["the answer"]
    alt_text = (
        f"The largest direct writers of {show_token(answer.token)} are "
        + ", ".join(f.top_labels("the answer"))
        + f"; the last quarter of the layers writes {fmt_pct(answer.late_share)} of its logit."
    )
    return Words(
        caption=caption(
            "Direct logit attribution: each component's write to the residual stream, passed "
            "through the final norm (its scale frozen at the value it took) and the unembedding "
            "row of the predicted token. The parts sum to the logit.",
            [summary("the answer"), summary("the count"), judged],
        ),
        alts=(alt_text,),
    )


def attribution_charts(f: AttributionFacts) -> list[alt.TopLevelMixin]:
    labels = {name: f"{name} ({show_token(w.token)} at {w.position})" for name, w in f.at.items()}
    rows = [
        {
            "s": labels[name],
            "c": comp.label,
            "k": comp.kind,
            "l": comp.layer,
            "a": rounded(w.parts[index], 3),
        }
        for name, w in f.at.items()
        for index, comp in enumerate(f.components)
    ]
    which = alt.param(
        name="which",
        value=labels["the answer"],
        bind=alt.binding_radio(options=list(dict.fromkeys(labels.values())), name="predicting "),
    )
    bars = (
        alt.Chart(alt.Data(values=rows))
        .transform_filter("datum.s == which")
        .mark_bar()
        .encode(
            x=alt.X(
                "l:O",
                title="layer (0 = embeddings)",
                axis=alt.Axis(labelOverlap=True, labelAngle=0),
            ),
            xOffset=alt.XOffset("k:N", sort=KIND_ORDER),
            y=alt.Y("a:Q", title="direct logit contribution"),
            color=alt.Color(
                "k:N",
                title=None,
                sort=KIND_ORDER,
                scale=alt.Scale(**colour_scale(KIND_ORDER)),
                legend=alt.Legend(orient="bottom"),
            ),
            tooltip=[
                alt.Tooltip("c:N", title="component"),
                alt.Tooltip("a:Q", title="logit", format=".2f"),
                alt.Tooltip("s:N", title="predicting"),
            ],
        )
        .add_params(which)
        .properties(
            width=WIDTH,
            height=170,
            title="What each component writes into the predicted token's logit",
        )
    )
    return [bars]


PANEL = PanelDef(
    key="p7",
    question="Which components write the answer?",
    measure=measure_attribution,
    words=attribution_words,
    charts=attribution_charts,
)
