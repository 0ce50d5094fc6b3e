"""The parity gate: a trace is checked against the model's own outputs before it is written
(torch).

The reference is one pass of the model over every traced position without the KV cache,
through the model's stock eager attention (`capture.Reference`), so it shares nothing with
the recorder but the weights. Each check gives its largest error and where it occurred;
tolerances depend on the dtype the model ran in, since the captured tensors are that dtype's
values and the reference rounds its own arithmetic in it. The run refuses a trace when any
check exceeds its tolerance, and the manifest keeps every check's error.

Checks (all positions of the prompt and of every greedy step):
  lens_logprobs       the logit lens at the last depth (final norm, unembedding, logit
                      scaling and soft-cap, from the recorded residual stream) against the
                      model's own log-probabilities, over tokens the model gives >= 1e-4;
  block_identity      resid_out = resid_in + attn_out + mlp_out in every block, relative to
                      the block's largest |resid_out|;
  residual_chain      resid_in of block i+1 = resid_out of block i, same scale;
  attention           what the trace keeps of the recorded probabilities (prompt pass plus
                      cached steps; all of it, whole rows or each row's top k, as --attention
                      chose) against the model's own, every layer and head; for top k also
                      the rest's sum and that no key left out outweighs a kept one;
  head_scores         the head scores stored in derived.safetensors (first token, previous
                      token, induction; the sink's share where the model has attention
                      sinks) against the same scores of the model's own matrix;
  qk_scores           softmax of the recorded queries and keys (scaled, soft-capped, masked,
                      ALiBi where the model has it, each head's sink logit as one more column
                      where it has sinks) against the probabilities the layer used:
                      the stored q/k norms are those of the vectors that meet in the scores;
  attribution_sum     direct logit attribution of each position's predicted token sums to
                      its logit (before any soft-cap), relative to max(1, |logit|);
  lens_statistics     the lens's entropy and KL to the final distribution against float64,
                      at every depth of the answer position and of LENS_SAMPLE positions
                      spread over the trace: max(|entropy error|, |KL error| / (1 + KL)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .capture import Capture, Reference
from .derive import residual_at_depths
from .families import Adapter

# Largest error allowed per check and dtype. float32 runs leave only summation-order
# rounding; half-precision runs compare float32 recomputation with the model's own rounding.
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {
        "lens_logprobs": 2e-3,
        "block_identity": 1e-4,
        "residual_chain": 1e-6,
        # Recorded attention is float16, as stored: half an ulp below 1 is 2.4e-4.
        "attention": 5e-4,
        # Both sides float32 means over the same rows; only summation order differs.
        "head_scores": 1e-5,
        "qk_scores": 1e-4,
        "attribution_sum": 1e-3,
        # The lens runs on float32 copies of the head whatever the model's dtype: only the
        # summation over the vocabulary differs from float64.
        "lens_statistics": 1e-4,
    },
    "float16": {
        "lens_logprobs": 0.1,
        "block_identity": 5e-3,
        "residual_chain": 1e-6,
        "attention": 5e-3,
        "head_scores": 5e-3,
        "qk_scores": 2e-2,
        # The writes are half-precision values; their float32 sum differs from the final
        # residual by the rounding of every block's additions (as block_identity measures).
        "attribution_sum": 5e-3,
        "lens_statistics": 1e-4,
    },
    "bfloat16": {
        "lens_logprobs": 0.5,
        "block_identity": 3e-2,
        "residual_chain": 1e-6,
        "attention": 3e-2,
        "head_scores": 3e-2,
        # Recomputed in float32; some models round q·k to bfloat16 before the softmax.
        "qk_scores": 0.1,
        "attribution_sum": 3e-2,
        "lens_statistics": 1e-4,
    },
}
LENS_SAMPLE = 8  # positions spread over the trace whose lens statistics the gate recomputes
LIKELY = 1e-4  # the lens check looks at tokens the model gives at least this probability
GATE_ROWS = 256  # positions per block of the lens check


class GateError(RuntimeError):
    """A check failed: the trace would not be what the model computed. One line."""


@dataclass(frozen=True)
class Check:
    name: str
    error: float
    tolerance: float
    where: str  # e.g. "layer 3", "position 17"

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # NaN fails too


@dataclass(frozen=True)
class GateReport:
    checks: list[Check]
    dtype: str
    reference_rows_sum_to_one: bool  # False for models with attention sinks
    reference_row_sum_error: float

    def as_manifest(self) -> dict:
        return {
            "dtype": self.dtype,
            "passed": all(check.passed for check in self.checks),
            "checks": {
                check.name: {**asdict(check), "passed": check.passed} for check in self.checks
            },
            "attention_rows_sum_to_one": self.reference_rows_sum_to_one,
            "attention_row_sum_max_error": self.reference_row_sum_error,
        }


def _worst(errors: list[float], label: str) -> tuple[float, str]:
    """The largest error and where; NaN counts as the worst."""
    index = max(
        range(len(errors)), key=lambda i: float("inf") if errors[i] != errors[i] else errors[i]
    )
    return float(errors[index]), f"{label} {index}"


@torch.inference_mode()
def lens_errors(adapter: Adapter, capture: Capture, own_logits: torch.Tensor) -> list[float]:
    """Per position: the largest |lens log-prob - the model's own| at the last depth, over
    tokens the model gives at least LIKELY. Run as soon as the reference pass ends, so that
    its [N, V] logits can go before the lens stage needs the memory; in blocks of positions,
    since a few [N, V] float32 copies at once would be the run's peak (1.6 GB each at 8,192
    positions of a 49,152-token vocabulary)."""
    residual = capture.layers[-1]["resid_out"]
    per_position: list[float] = []
    for start in range(0, len(residual), GATE_ROWS):
        rows = slice(start, start + GATE_ROWS)
        lens = adapter.logits(residual[rows]).log_softmax(-1)  # [rows, V]
        own = own_logits[rows].log_softmax(-1)
        likely = own.exp() >= LIKELY
        per_position += torch.where(likely, (lens - own).abs(), 0.0).amax(-1).tolist()
    return per_position


def lens_sample(n_positions: int, answer_position: int) -> list[int]:
    """The positions whose lens statistics the gate recomputes: the answer's and a spread."""
    spread = torch.linspace(0, n_positions - 1, LENS_SAMPLE).round().long().tolist()
    return sorted({*spread, answer_position})


@torch.inference_mode()
def lens_statistics_errors(
    adapter: Adapter, capture: Capture, lens: dict[str, torch.Tensor], positions: list[int]
) -> tuple[float, str]:
    """The largest error of the stored entropy [depth, N] and KL [depth, N] against a float64
    recomputation at `positions`, every depth, and where it is."""
    depths = residual_at_depths(capture)
    # One unembedding matmul for every depth's sampled rows: a few rows at a time would read
    # the whole unembedding once per depth.
    sampled = torch.stack([resid[positions] for resid in depths])  # [depth, P, D]
    logits = adapter.logits(sampled.flatten(0, 1)).unflatten(0, sampled.shape[:2])  # [depth, P, V]
    final = logits[-1].double().log_softmax(-1)  # [P, V]
    worst, where = -1.0, ""
    for depth in range(len(depths)):
        log_p = logits[depth].double().log_softmax(-1)  # [P, V]
        entropy = -(log_p.exp() * log_p).sum(-1)  # [P]
        kl = (final.exp() * (final - log_p)).sum(-1)  # [P]
        entropy_error = (lens["lens_entropy"][depth, positions].double() - entropy).abs()
        kl_error = (lens["lens_kl"][depth, positions].double() - kl).abs() / (1.0 + kl)
        errors = torch.maximum(entropy_error, kl_error).nan_to_num(float("inf"))  # [P]
        index = int(errors.argmax())
        if float(errors[index]) > worst:
            worst, where = float(errors[index]), f"depth {depth} position {positions[index]}"
    return worst, where


@torch.inference_mode()
def run_gate(
    adapter: Adapter,
    capture: Capture,
    reference: Reference,
    attribution: torch.Tensor,
    final_logit: torch.Tensor,
    lens: dict[str, torch.Tensor],
    answer_position: int,
    dtype: str,
) -> GateReport:
    """Every check's largest error. Raises nothing: `require` decides."""
    tolerance = TOLERANCES[dtype]
    checks: list[Check] = []

    def add(name: str, error: float, where: str) -> None:
        checks.append(Check(name, error, tolerance[name], where))

    add("lens_logprobs", *_worst(reference.lens_errors, "position"))

    identity, chain = [], []
    for index, layer in enumerate(capture.layers):
        scale = layer["resid_out"].abs().max().clamp_min(1e-30)
        written = layer["resid_in"] + layer["attn_out"] + layer["mlp_out"]
        identity.append(float((written - layer["resid_out"]).abs().max() / scale))
        if index + 1 < len(capture.layers):
            following = capture.layers[index + 1]["resid_in"]
            chain.append(float((following - layer["resid_out"]).abs().max() / scale))
    add("block_identity", *_worst(identity, "layer"))
    add("residual_chain", *_worst(chain or [0.0], "layer"))

    attention = reference.attention_errors
    add("attention", *_worst(attention, "layer"))
    add("head_scores", *_worst(reference.head_score_errors, "layer"))
    add("qk_scores", *_worst(capture.score_errors, "layer"))

    attributed = (attribution.sum(-1) - final_logit).abs() / final_logit.abs().clamp_min(1.0)
    add("attribution_sum", *_worst(attributed.tolist(), "position"))
    positions = lens_sample(len(capture.layers[0]["resid_in"]), answer_position)
    add("lens_statistics", *lens_statistics_errors(adapter, capture, lens, positions))

    row_error = max(reference.row_sum_errors)
    return GateReport(checks, dtype, row_error <= 1e-3, row_error)


def require(report: GateReport) -> None:
    """Refuse the trace, in one line, at the first failed check."""
    for check in report.checks:
        if not check.passed:
            raise GateError(
                f"parity gate: {check.name} failed at {check.where}: error {check.error:.3g} > "
                f"tolerance {check.tolerance:.3g} ({report.dtype}); nothing was written"
            )
