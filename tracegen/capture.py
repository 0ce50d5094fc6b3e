"""One forward pass over the prompt, then greedy steps with the KV cache, recorded layer by
layer (torch).

Two recorders work together. Hooks on each block copy the residual stream it reads and
returns and what its attention and MLP write. The attention function registered with
`transformers.AttentionInterface` as "tracegen" receives every layer's query, key and value
after projection, q/k norms and rotary embedding, calls the modeling file's own
`eager_attention_forward` (so Gemma keeps its soft-cap), and keeps the per-head norms and the
attention probabilities. BLOOM computes attention inline; for it a wrapper around its own
q/k/v split does the same.

The result covers positions 0..N-1: the prompt's tokens, then each generated token that was
fed back in. The last generated token is predicted but never fed, so it has no position.
"""

from __future__ import annotations

import inspect
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .families import Adapter, FamilyError
from .keep import AttentionKeeper, head_scores, kept_error, sink_shares
from .policy import DEFAULT_POLICY, AttentionPolicy, parse_policy
from .store import ACTIVATIONS

QKV_NAMES = ("q_norm", "k_norm", "v_norm")
ATTENTION_NAME = "tracegen"


@dataclass
class Capture:
    """What one traced run produced, on the CPU in float32."""

    input_ids: list[int]  # the N traced positions
    generated_ids: list[int]
    stop_reason: str
    # resid_* [N, D] float32, *_norm [heads, N] float32, and the attention tensors of the
    # policy's layout (tracegen.policy) in float16
    layers: list[dict[str, torch.Tensor]]
    policy: AttentionPolicy
    attention_rows: list[int] | None  # rows:R: the positions whose rows are kept
    head_scores: torch.Tensor  # [L, 3, H] float32, policy.HEAD_SCORES over the prompt
    # [L, H] float32: the share of each head's prompt rows that went to its attention sink
    # (keep.sink_shares); None for a model without sinks, whose rows sum to 1
    head_sink: torch.Tensor | None
    layer_seconds: list[float]  # per block, from the recorded prompt pass
    score_errors: list[float]  # per block: recomputed q·k softmax vs the weights the layer used
    determinism_max_abs_diff: float
    grad_enabled: bool
    dropout_modules_training: int
    eval_mode: bool


# The recorder of the pass under way; the registered attention function reports to it.
_ACTIVE: list[Recorder] = []


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """Registered as attn_implementation="tracegen": the modeling file's own eager attention,
    recorded. query [B, H, T, d_head], key/value [B, G, keys, d_head], post norm and rotary.
    A model with attention sinks (GPT-OSS) passes its per-head sink logits [H] as `s_aux`,
    the interface's name for them."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, query, key, value, attention_mask, **kwargs)
    if _ACTIVE:
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5

        def scores(q: torch.Tensor, k: torch.Tensor, heads: slice) -> torch.Tensor:
            logits = (q @ k.transpose(-1, -2)) * scaling
            softcap = kwargs.get("softcap")
            return torch.tanh(logits / softcap) * softcap if softcap else logits

        _ACTIVE[-1].on_attention(
            module.layer_idx, query, key, value, weights, attention_mask, scores,
            sinks=kwargs.get("s_aux"),
        )  # fmt: skip
    return output, weights


def register_attention() -> None:
    """Make attn_implementation="tracegen" known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, _recording_attention)
    # The recorder calls eager attention, which wants eager's additive float mask.
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


class Recorder:
    """For one pass: what each block reads and writes, and what its attention computes."""

    def __init__(self, adapter: Adapter, keeper: AttentionKeeper, first_position: int):
        self.adapter = adapter
        self.keeper = keeper
        self.first_position = first_position
        self.records: list[dict[str, torch.Tensor]] = [{} for _ in adapter.blocks]
        self.score_errors = [0.0] * len(adapter.blocks)
        self.has_sinks = False  # some layer's attention passed sink logits (s_aux)
        self.handles: list = []
        self.undo: list[Callable[[], None]] = []

    def __enter__(self) -> Recorder:
        for index, block in enumerate(self.adapter.blocks):
            self._hook_block(index, block)
            if self.adapter.family.qkv != "interface":
                self._hook_inline_attention(index)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _ACTIVE.remove(self)
        for handle in self.handles:
            handle.remove()
        for undo in self.undo:
            undo()

    def _keep(self, index: int, name: str, tensor: torch.Tensor) -> None:
        # clone: Falcon adds attention into the MLP's output tensor in place.
        self.records[index][name] = tensor.detach().to("cpu", torch.float32, copy=True)

    def on_attention(self, index, query, key, value, weights, mask, scores, sinks=None) -> None:
        """Per-head norms of what enters the scores, what the policy keeps of the
        probabilities, and (unless `scores` is None) a check that the probabilities follow
        from these very queries and keys, and from the sink logits [H] where the model has
        them: each head's sink joins the softmax as one more column, which is then dropped,
        so a row of probabilities sums to less than 1."""
        if sinks is not None:
            self.has_sinks = True
        rows = query.shape[2]
        self._keep(index, "q_norm", query[0].float().norm(dim=-1))  # [H, T]
        self._keep(index, "k_norm", key[0, :, -rows:].float().norm(dim=-1))  # [G, T]
        self._keep(index, "v_norm", value[0, :, -rows:].float().norm(dim=-1))  # [G, T]
        self.keeper.take(index, self.first_position, weights[0].detach())  # [H, T, keys]
        if scores is None:
            return
        groups = query.shape[1] // key.shape[1]
        # Head by head: each step makes a [T, keys] float32 copy, and five of them for all
        # heads at once would be most of a long prompt's peak memory.
        for head in range(query.shape[1]):
            one = slice(head, head + 1)
            keys = key[:, head // groups][:, None].float()  # [B, 1, keys, d_head]
            logits = scores(query[:, one].float(), keys, one)
            if mask is not None:  # [B, 1 or H, T, keys]: Falcon's ALiBi folds into the mask
                head_mask = mask[:, one] if mask.shape[1] > 1 else mask
                logits = logits + head_mask[..., : keys.shape[-2]].float()
            if sinks is not None:  # [B, 1, T, 1]: this head's sink logit on every row
                sink = sinks[one].float().view(1, 1, 1, 1).expand(*logits.shape[:-1], 1)
                probs = torch.cat([logits, sink], dim=-1).softmax(-1)[..., :-1]
            else:
                probs = logits.softmax(-1)
            error = (probs - weights[:, one].float()).abs().max()
            self.score_errors[index] = max(self.score_errors[index], float(error))

    def _hook_block(self, index: int, block) -> None:
        attn_write, mlp_write = self.adapter.writers(index)
        scale = self.adapter.write_scale
        with_residual = self.adapter.family.writes_include_residual

        def block_input(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._keep(index, "resid_in", hidden[0])

        def block_output(module, args, kwargs, output):
            self._keep(index, "resid_out", _first(output)[0])

        def writer(name: str) -> Callable:
            def hook(module, args, kwargs, output):
                written = _first(output)
                # OPT runs its MLP on [B * T, D]; everything else on [B, T, D]. B is 1.
                written = written if written.dim() == 2 else written[0]
                if with_residual:  # BLOOM's modules return residual + write
                    residual = args[1] if len(args) > 1 else kwargs["residual"]
                    written = written - residual[0]
                self._keep(index, name, written * scale if scale != 1.0 else written)

            return hook

        self.handles += [
            block.register_forward_pre_hook(block_input, with_kwargs=True),
            block.register_forward_hook(block_output, with_kwargs=True),
            attn_write.register_forward_hook(writer("attn_out"), with_kwargs=True),
            mlp_write.register_forward_hook(writer("mlp_out"), with_kwargs=True),
        ]

    def _hook_inline_attention(self, index: int) -> None:
        """BLOOM: q/k/v [B, heads, T, d_head] from its own split method; scores as its
        forward computes them (q·k scaled, plus ALiBi)."""
        attention = self.adapter.attention(index)
        family = self.adapter.family
        split = getattr(attention, family.qkv)
        seen: dict = {}

        def recording_split(fused):
            seen["qkv"] = split(fused)
            return seen["qkv"]

        def before(module, args, kwargs):
            seen.update(kwargs)

        def after(module, args, kwargs, output):
            query, key, value = seen.pop("qkv")
            alibi = seen.get("alibi")

            def scores(q: torch.Tensor, k: torch.Tensor, heads: slice) -> torch.Tensor:
                logits = (q @ k.transpose(-1, -2)) * module.inv_norm_factor
                if alibi is not None:  # [B * H, 1, keys]: this pass's heads' slopes
                    slopes = alibi.view(logits.shape[0], -1, 1, alibi.shape[-1])[:, heads]
                    logits = logits + slopes.float() * module.beta
                return logits

            weights = output[1]
            # On a cached step the split holds only the new key, so the scores cannot be
            # recomputed here; the norms are still exact.
            whole = key.shape[2] == weights.shape[-1]
            self.on_attention(
                index, query, key, value, weights, seen.get("attention_mask"),
                scores if whole else None,
            )  # fmt: skip

        setattr(attention, family.qkv, recording_split)  # shadows the method on this instance
        self.undo.append(lambda: delattr(attention, family.qkv))
        self.handles += [
            attention.register_forward_pre_hook(before, with_kwargs=True),
            attention.register_forward_hook(after, with_kwargs=True),
        ]


def _cache_of(outputs):
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _is_line_end(token_text: str) -> bool:
    return "\n" in token_text


def input_device(model) -> torch.device:
    """Where the token ids go in. A model placed by accelerate (`hf_device_map`) may have its
    first weights on disk; its hooks move inputs on, so the CPU serves unless the embedding
    sits on a GPU."""
    placement = getattr(model, "hf_device_map", None)
    if placement:
        first = next(iter(placement.values()))
        return torch.device(f"cuda:{first}" if isinstance(first, int) else "cpu")
    return next(model.parameters()).device


def use_attention(model, name: str) -> None:
    """Switch a loaded model between the recorder ("tracegen") and stock "eager"."""
    if name == ATTENTION_NAME:
        register_attention()
    model.set_attn_implementation(name)


class LayerTimer:
    """Wall time of each block in one pass, from hooks on its entry and exit."""

    def __init__(self, adapter: Adapter, synchronize: Callable[[], None]):
        self.adapter = adapter
        self.synchronize = synchronize
        self.seconds = [0.0] * len(adapter.blocks)
        self.handles: list = []

    def __enter__(self) -> LayerTimer:
        for index, block in enumerate(self.adapter.blocks):
            self.handles.append(block.register_forward_pre_hook(self._start(index)))
            self.handles.append(block.register_forward_hook(self._stop(index)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()

    def _start(self, index: int) -> Callable:
        def hook(module, args):
            self.synchronize()
            self.seconds[index] = -time.perf_counter()

        return hook

    def _stop(self, index: int) -> Callable:
        def hook(module, args, output):
            self.synchronize()
            self.seconds[index] += time.perf_counter()

        return hook


@dataclass
class Reference:
    """The model's own outputs over all traced positions in one pass without the cache,
    through stock eager attention: what the parity gate compares the trace with."""

    logits: torch.Tensor | None  # [N, V] float32; dropped once lens_errors are measured
    attention_errors: list[float]  # per block: max |recorded - own| probability
    row_sum_errors: list[float]  # per block: max |sum of a row of the model's own - 1|
    head_score_errors: list[float]  # per block: max |recorded - own| head score or sink share
    lens_errors: list[float] | None = None  # per position (verify.lens_errors)


class Tracer:
    """Runs the traced passes in order, each a stage of its own:

    tracer = Tracer(model, tokenizer, adapter, prompt_ids)
    tracer.prompt_pass()          # the forward pass over the prompt, recorded
    tracer.greedy_steps(steps)    # generated tokens fed back through the KV cache, recorded
    tracer.time_prompt_pass()     # the prompt pass again: per-block time, determinism
    capture = tracer.result()
    reference = tracer.reference_pass(capture)  # stock attention, no cache: for the gate
    """

    def __init__(
        self,
        model,
        tokenizer,
        adapter: Adapter,
        prompt_ids: list[int],
        policy: AttentionPolicy | None = None,
    ):
        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.prompt_ids = list(prompt_ids)
        self.policy = policy or parse_policy(DEFAULT_POLICY)
        self.keeper = AttentionKeeper(self.policy, len(adapter.blocks), self.prompt_ids)
        self.fed = 0  # positions recorded so far
        self.forward_parameters = inspect.signature(model.forward).parameters
        self.device = input_device(model)
        self.inline = adapter.family.qkv != "interface"
        self.records: list[list[dict[str, torch.Tensor]]] = []  # per pass, per block
        self.score_errors = [0.0] * len(adapter.blocks)
        self.has_sinks = False  # some layer's attention passed sink logits
        self.logits: list[torch.Tensor] = []  # per pass: [1, V], its last position's
        self.generated: list[int] = []
        self.stop_reason = ""
        self.cache = None
        self.grad_enabled = True
        self.layer_seconds: list[float] = []
        self.max_diff = float("nan")
        if not self.inline:
            use_attention(model, ATTENTION_NAME)

    def _forward(self, ids: torch.Tensor, **kwargs):
        # BLOOM hands its probabilities out only through output_attentions. Only
        # the last position's logits are needed (the next token; the determinism check): all
        # of them would be N x vocabulary floats, 1.6 GB at 8,192 positions. The lens and the
        # gate work from the recorded residual stream and the reference pass instead.
        if "logits_to_keep" in self.forward_parameters:
            kwargs["logits_to_keep"] = 1
        return self.model(ids, use_cache=True, output_attentions=self.inline, **kwargs)

    def _recorded_pass(self, input_ids: list[int], **kwargs) -> None:
        ids = torch.tensor([input_ids], device=self.device)
        passes = len(self.records) + 1
        with torch.inference_mode(), Recorder(self.adapter, self.keeper, self.fed) as recorder:
            self.grad_enabled = torch.is_grad_enabled()
            outputs = self._forward(ids, **kwargs)
        self.fed += len(input_ids)
        missing = [i for i in range(len(recorder.records)) if self.keeper.seen(i) < passes]
        if missing:
            raise FamilyError(
                f"cannot trace {type(self.model).__name__}: layer {missing[0]}'s attention did not "
                "pass through the recorder "
                "(a config switch that bypasses transformers' attention interface)"
            )
        self.records.append(recorder.records)
        self.has_sinks = self.has_sinks or recorder.has_sinks
        self.score_errors = [
            max(a, b) for a, b in zip(self.score_errors, recorder.score_errors, strict=True)
        ]
        self.logits.append(outputs.logits[0, -1:].to("cpu", torch.float32))
        self.cache = _cache_of(outputs)

    def prompt_pass(self) -> None:
        self._recorded_pass(self.prompt_ids)

    def greedy_steps(
        self,
        steps: int | None = None,
        max_steps: int = 16,
        on_step: Callable[[int, str], None] | None = None,
    ) -> None:
        """steps=None continues until the generated text ends a line (or the model emits its
        end token), at most `max_steps` tokens; an integer generates exactly that many."""
        limit = steps if steps is not None else max_steps
        eos_ids = _eos_ids(self.tokenizer, self.model)
        # transformers 5 renamed `past_key_values` to `cache`; older releases know the former.
        cache_argument = "cache" if "cache" in self.forward_parameters else "past_key_values"
        self.stop_reason = f"reached {limit} steps"
        while True:
            next_id = int(self.logits[-1][-1].argmax())
            self.generated.append(next_id)
            text = self.tokenizer.decode([next_id])
            if on_step:
                on_step(len(self.generated), text)
            if steps is None and (next_id in eos_ids or _is_line_end(text)):
                self.stop_reason = "end of line" if _is_line_end(text) else "end of text"
                break
            if len(self.generated) == limit:
                break
            # The last generated token is never fed: its pass would predict past the end.
            self._recorded_pass([next_id], **{cache_argument: self.cache})
        self.cache = None  # keys and values of every layer: no pass reads them again

    def time_prompt_pass(self, repeats: int = 3) -> None:
        """The prompt pass again, with hooks that only read the clock. Its logits at the last
        position must match the recorded pass's exactly; the largest difference is the
        determinism check.

        Three passes, not five: bench/run_speed.py measured one pass within 6% of the median
        of five in total but up to 72% off per block on a shared machine; the median of
        three steadies the per-block figures the FLOPs panel shows at a cost of one prompt
        pass each (under 2% of a run of the default model)."""
        synchronize = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        ids = torch.tensor([self.prompt_ids], device=self.device)
        seconds_per_repeat: list[list[float]] = []
        self.max_diff = 0.0
        with torch.inference_mode():
            for _ in range(repeats):
                with LayerTimer(self.adapter, synchronize) as timer:
                    again = self._forward(ids)
                seconds_per_repeat.append(timer.seconds)
                last = again.logits[0, -1:].to("cpu", torch.float32)
                diff = (last - self.logits[0]).abs().max()
                self.max_diff = max(self.max_diff, float(diff))
                del again  # before the next pass: its logits and cache are as big as the pass's
        self.layer_seconds = [
            statistics.median(times) for times in zip(*seconds_per_repeat, strict=True)
        ]

    def reference_pass(self, capture: Capture) -> Reference:
        """All traced positions at once, without the cache, through stock eager attention.

        Each layer's attention is compared with what the trace keeps of it, and its head
        scores recomputed, as the layer returns it; then it is dropped, so the pass holds one
        layer's probabilities at a time, as the model does.
        """
        n_layers = len(self.adapter.blocks)
        attention_errors = [float("nan")] * n_layers
        row_sum_errors = [float("nan")] * n_layers
        head_score_errors = [float("nan")] * n_layers
        n_prompt = len(self.prompt_ids)

        def compare(index: int) -> Callable:
            def hook(module, args, output):
                own = output[1][0].to("cpu", torch.float32)  # [H, N, N]
                attention_errors[index] = kept_error(
                    capture.policy, capture.layers[index], own, capture.attention_rows
                )
                row_sum_errors[index] = float((own.sum(-1) - 1.0).abs().max())
                prompt = own[:, :n_prompt, :n_prompt]
                scores = head_scores(prompt, self.keeper.pairs)
                error = (scores - capture.head_scores[index]).abs().max()
                if capture.head_sink is not None:
                    sinks = sink_shares(prompt)
                    error = max(error, (sinks - capture.head_sink[index]).abs().max())
                head_score_errors[index] = float(error)

            return hook

        if not self.inline:
            use_attention(self.model, "eager")
        ids = torch.tensor([capture.input_ids], device=self.device)
        handles = [
            self.adapter.attention(index).register_forward_hook(compare(index))
            for index in range(n_layers)
        ]
        try:
            with torch.inference_mode():
                # Eager attention layers return their probabilities to the hook either way;
                # BLOOM only when asked.
                outputs = self.model(ids, use_cache=False, output_attentions=self.inline)
        finally:
            for handle in handles:
                handle.remove()
            if not self.inline:
                use_attention(self.model, ATTENTION_NAME)
        return Reference(
            logits=outputs.logits[0].to("cpu", torch.float32),
            attention_errors=attention_errors,
            row_sum_errors=row_sum_errors,
            head_score_errors=head_score_errors,
        )

    def result(self) -> Capture:
        n_positions = len(self.prompt_ids) + len(self.records) - 1
        layers = []
        for index in range(len(self.adapter.blocks)):
            per_pass = [records[index] for records in self.records]
            layer = {name: torch.cat([r[name] for r in per_pass], dim=0) for name in ACTIVATIONS}
            for name in QKV_NAMES:
                layer[name] = torch.cat([r[name] for r in per_pass], dim=1)
            layer.update(self.keeper.tensors(index, n_positions))
            layers.append(layer)
        dropout_training = sum(
            1
            for module in self.model.modules()
            if "Dropout" in type(module).__name__ and module.training
        )
        rows = self.policy.rows(len(self.prompt_ids), n_positions)
        return Capture(
            input_ids=self.prompt_ids + self.generated[: len(self.records) - 1],
            generated_ids=self.generated,
            stop_reason=self.stop_reason,
            layers=layers,
            policy=self.policy,
            attention_rows=rows if self.policy.kind == "rows" else None,
            head_scores=self.keeper.head_scores(),
            head_sink=self.keeper.sink_shares() if self.has_sinks else None,
            layer_seconds=self.layer_seconds,
            score_errors=self.score_errors,
            determinism_max_abs_diff=self.max_diff,
            grad_enabled=self.grad_enabled,
            dropout_modules_training=dropout_training,
            eval_mode=not self.model.training,
        )


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
    flat: set[int] = set()
    for value in ids:
        if isinstance(value, int):
            flat.add(value)
        elif isinstance(value, list):
            flat.update(value)
    return flat
