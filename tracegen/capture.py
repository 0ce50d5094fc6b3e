"""One forward pass over the prompt, then greedy steps with the KV cache, recorded layer by
layer through hooks (torch).

The result covers positions 0..N-1: the prompt's tokens, then each generated token that was
fed back in. The last generated token is predicted but never fed, so it has no position.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .models import Adapter

RESIDUAL_NAMES = ("resid_in", "resid_out", "attn_out", "mlp_out")
QKV_NAMES = ("q_norm", "k_norm", "v_norm")


@dataclass
class Capture:
    """What one traced run produced, on the CPU in float32."""

    input_ids: list[int]  # the N traced positions
    generated_ids: list[int]
    stop_reason: str
    layers: list[dict[str, torch.Tensor]]  # resid_* [N, D], attn_probs [H, N, N], *_norm [heads, N]
    layer_seconds: list[float]  # median over timing passes, prompt pass
    determinism_max_abs_diff: float
    grad_enabled: bool
    dropout_modules_training: int
    eval_mode: bool


class Recorder:
    """Hooks that copy each block's residual traffic and per-head q/k/v norms for one pass."""

    def __init__(self, adapter: Adapter):
        self.adapter = adapter
        self.records: list[dict[str, torch.Tensor]] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Recorder:
        for index, modules in enumerate(self.adapter.blocks):
            self._hook_block(index, modules)
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()

    def start_pass(self) -> None:
        self.records = [{} for _ in self.adapter.blocks]

    def _keep(self, index: int, name: str, tensor: torch.Tensor) -> None:
        self.records[index][name] = tensor.detach().to("cpu", torch.float32)

    def _hook_block(self, index: int, modules) -> None:
        def block_input(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._keep(index, "resid_in", hidden[0])

        def block_output(module, args, kwargs, output):
            self._keep(index, "resid_out", _first(output)[0])

        def writer(name: str) -> Callable:
            return lambda module, args, output: self._keep(index, name, _first(output)[0])

        def head_norms(name: str, to_heads: Callable) -> Callable:
            # [T, heads, d_head] -> [heads, T]
            return lambda module, args, output: self._keep(
                index, name, to_heads(output).norm(dim=-1).transpose(0, 1)
            )

        block = modules.block
        self.handles += [
            block.register_forward_pre_hook(block_input, with_kwargs=True),
            block.register_forward_hook(block_output, with_kwargs=True),
            modules.attn_write.register_forward_hook(writer("attn_out")),
            modules.mlp_write.register_forward_hook(writer("mlp_out")),
        ]
        for name, (module, to_heads) in modules.qkv.items():
            self.handles.append(module.register_forward_hook(head_norms(name, to_heads)))


class LayerTimer:
    """Wall time of each block in one pass, from hooks on its entry and exit."""

    def __init__(self, adapter: Adapter, synchronize: Callable[[], None]):
        self.adapter = adapter
        self.synchronize = synchronize
        self.seconds = [0.0] * len(adapter.blocks)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerTimer:
        for index, modules in enumerate(self.adapter.blocks):
            self.handles.append(modules.block.register_forward_pre_hook(self._start(index)))
            self.handles.append(modules.block.register_forward_hook(self._stop(index)))
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


def _cache_of(outputs):
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _is_line_end(token_text: str) -> bool:
    return "\n" in token_text


class Tracer:
    """Runs the traced passes in order, each a stage of its own:

    tracer = Tracer(model, tokenizer, adapter, prompt_ids)
    tracer.prompt_pass()          # the forward pass over the prompt, recorded
    tracer.greedy_steps(steps)    # generated tokens fed back through the KV cache, recorded
    tracer.time_prompt_pass()     # the prompt pass again: per-block time, determinism
    capture = tracer.result()
    """

    def __init__(self, model, tokenizer, adapter: Adapter, prompt_ids: list[int]):
        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.prompt_ids = list(prompt_ids)
        self.device = next(model.parameters()).device
        self.records: list[list[dict[str, torch.Tensor]]] = []  # per pass, per block
        self.attentions: list[list[torch.Tensor]] = []  # per pass, per block: [H, rows, keys]
        self.logits: list[torch.Tensor] = []  # per pass: [rows, V]
        self.generated: list[int] = []
        self.stop_reason = ""
        self.cache = None
        self.grad_enabled = True
        self.layer_seconds: list[float] = []
        self.max_diff = float("nan")

    def _recorded_pass(self, input_ids: list[int], **kwargs) -> None:
        ids = torch.tensor([input_ids], device=self.device)
        with torch.inference_mode(), Recorder(self.adapter) as recorder:
            self.grad_enabled = torch.is_grad_enabled()
            recorder.start_pass()
            outputs = self.model(ids, use_cache=True, output_attentions=True, **kwargs)
        self.records.append(recorder.records)
        self.attentions.append([probs[0].to("cpu", torch.float32) for probs in outputs.attentions])
        self.logits.append(outputs.logits[0].to("cpu", torch.float32))
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
        parameters = inspect.signature(self.model.forward).parameters
        cache_argument = "cache" if "cache" in parameters else "past_key_values"
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

    def time_prompt_pass(self, repeats: int = 5) -> None:
        """The prompt pass again, with hooks that only read the clock. Its logits must match
        the recorded pass exactly; the largest difference is the determinism check."""
        synchronize = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        ids = torch.tensor([self.prompt_ids], device=self.device)
        seconds_per_repeat: list[list[float]] = []
        self.max_diff = 0.0
        with torch.inference_mode():
            for _ in range(repeats):
                with LayerTimer(self.adapter, synchronize) as timer:
                    again = self.model(ids, use_cache=True, output_attentions=True)
                seconds_per_repeat.append(timer.seconds)
                diff = (again.logits[0].to("cpu", torch.float32) - self.logits[0]).abs().max()
                self.max_diff = max(self.max_diff, float(diff))
        self.layer_seconds = [
            statistics.median(times) for times in zip(*seconds_per_repeat, strict=True)
        ]

    def result(self) -> Capture:
        n_positions = len(self.prompt_ids) + len(self.records) - 1
        layers = []
        for index in range(len(self.adapter.blocks)):
            per_pass = [records[index] for records in self.records]
            layer = {name: torch.cat([r[name] for r in per_pass], dim=0) for name in RESIDUAL_NAMES}
            for name in QKV_NAMES:
                layer[name] = torch.cat([r[name] for r in per_pass], dim=1)
            attention = [step[index] for step in self.attentions]
            layer["attn_probs"] = _full_attention(attention, n_positions)
            layers.append(layer)
        dropout_training = sum(
            1
            for module in self.model.modules()
            if "Dropout" in type(module).__name__ and module.training
        )
        return Capture(
            input_ids=self.prompt_ids + self.generated[: len(self.records) - 1],
            generated_ids=self.generated,
            stop_reason=self.stop_reason,
            layers=layers,
            layer_seconds=self.layer_seconds,
            determinism_max_abs_diff=self.max_diff,
            grad_enabled=self.grad_enabled,
            dropout_modules_training=dropout_training,
            eval_mode=not self.model.training,
        )


def _full_attention(per_pass: list[torch.Tensor], n_positions: int) -> torch.Tensor:
    """Rows of each pass ([H, rows, keys]) placed into one causal [H, N, N] matrix.

    A pass's keys end at its own last position. Usually they start at 0; a sliding-window
    cache (Mistral, Gemma 2/3) keeps only the most recent keys, which is why the rows are
    aligned at their end.
    """
    heads = per_pass[0].shape[0]
    full = torch.zeros(heads, n_positions, n_positions)
    row = 0
    for probs in per_pass:
        rows, keys = probs.shape[1], probs.shape[2]
        end = row + rows
        full[:, row:end, end - keys : end] = probs
        row = end
    return full


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
    flat: set[int] = set()
    for value in ids:
        if isinstance(value, int):
            flat.add(value)
        elif isinstance(value, list):
            flat.update(value)
    return flat
