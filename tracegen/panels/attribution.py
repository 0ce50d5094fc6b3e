"""¶7: "a useful intermediate sufficient statistic, a means to an end": which components write
the predicted token's logit directly (direct logit attribution through the frozen final norm).

Direct attribution counts only what a component writes straight into the output direction;
what it does by changing later layers' inputs is not counted. Early layers can matter a lot
and still write little directly, which is what "a means to an end" would look like.
"""

from __future__ import annotations

import altair as alt
import numpy as np

from ..store import Trace
from . import Panel
from .common import (
    BORNE_OUT,
    CATEGORICAL,
    CONTEXT,
    MIXED,
    WIDTH,
    answer_position,
    caption,
    count_position,
    escape,
    fmt_num,
    fmt_pct,
    parse_components,
    rounded,
    show_token,
    three_quarters_depth,
    to_chart,
    token_html,
    vocabulary,
)

KIND_ORDER = ["embed", "attn", "mlp", "other"]


def build(trace: Trace) -> Panel:
    n_layers = trace.n_layers
    text_of = vocabulary(trace)
    components = parse_components(trace.attribution_components, n_layers)
    attribution = np.nan_to_num(trace.derived("attribution").astype(np.float64))  # [N, C]
    logit = np.nan_to_num(trace.derived("final_logit").astype(np.float64))
    top_ids = trace.derived("lens_topk_ids")[-1, :, 0]
    positions = {"the answer": answer_position(trace), "the count": count_position(trace).position}
    labels = {
        name: f"{name} ({show_token(text_of(top_ids[p]))} at {p})" for name, p in positions.items()
    }

    rows = [
        {
            "s": labels[name],
            "c": comp.label,
            "k": comp.kind,
            "l": comp.layer,
            "a": rounded(attribution[p, index], 3),
        }
        for name, p in positions.items()
        for index, comp in enumerate(components)
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
                scale=alt.Scale(domain=KIND_ORDER, range=CATEGORICAL[: len(KIND_ORDER)]),
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

    # The last quarter: the layers above three quarters of the depth (as p2, p6 and p8 count).
    narrator_depth = three_quarters_depth(n_layers)
    last_quarter = (
        f"layers {narrator_depth + 1}-{n_layers}" if narrator_depth < n_layers else "none"
    )

    def summary(name: str) -> tuple[str, dict]:
        p = positions[name]
        parts = attribution[p]
        order = np.argsort(-parts)[:3]
        late = np.array([c.layer > narrator_depth for c in components])
        late_share = float(parts[late].sum() / logit[p]) if logit[p] > 0 else float("nan")
        kinds = {k: float(parts[[c.kind == k for c in components]].sum()) for k in KIND_ORDER}
        text = (
            f"For {name} ({token_html(text_of(top_ids[p]))}, logit {fmt_num(logit[p])}): the "
            "largest writers are "
            + ", ".join(f"{escape(components[i].label)} ({fmt_num(parts[i])})" for i in order)
            + f"; attention writes {fmt_num(kinds['attn'])} in all and the MLPs "
            f"{fmt_num(kinds['mlp'])}; the last quarter of the layers ({last_quarter}) writes "
            f"{fmt_pct(late_share)} of the logit."
        )
        return text, {
            "top": [components[i].label for i in order],
            "late_share": late_share,
            "kinds": kinds,
            "logit": float(logit[p]),
        }

    texts, facts = {}, {}
    for name in positions:
        texts[name], facts[name] = summary(name)
    late_share = facts["the answer"]["late_share"]
    # Judged on the answer: borne out when the last quarter writes most of its logit.
    verdict = CONTEXT if not np.isfinite(late_share) else BORNE_OUT if late_share > 0.5 else MIXED
    judged = (
        "Most of the answer's logit is written by the last quarter of the layers; the layers "
        "below mostly prepare what those read, which is how a means to an end looks."
        if verdict == BORNE_OUT
        else "The layers below the last quarter write much of the answer themselves, so they are "
        "not only a means to an end."
    )
    answer_text = show_token(text_of(top_ids[positions["the answer"]]))
    alt_text = (
        f"The largest direct writers of {answer_text} are "
        + ", ".join(facts["the answer"]["top"])
        + f"; the last quarter of the layers writes {fmt_pct(late_share)} of its logit."
    )
    return Panel(
        key="p7",
        question="Which components write the answer?",
        charts=[to_chart(bars, alt_text)],
        caption=caption(
            "Direct logit attribution: each component's write to the residual stream, passed "
            "through the final norm (its scale frozen at the value it took) and the unembedding "
            "row of the predicted token. The parts sum to the logit.",
            [texts["the answer"], texts["the count"], judged],
        ),
        verdict=verdict,
        facts=facts,
    )
