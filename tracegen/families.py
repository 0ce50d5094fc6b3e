"""Every per-family difference tracegen knows, in one table keyed by the model's class name (torch).

What transformers already gives every model is used as it is: the input and output embeddings
(`get_input_embeddings`, `get_output_embeddings`), the final norm as a module, and each
layer's query, key and value after projection, q/k norms and rotary embedding, through the
attention function that `capture` registers with `transformers.AttentionInterface`. A
`Family` declares only what transformers does not name the same way everywhere: where the
blocks and the final norm live, which module's output is added to the residual stream, and
the scalings the model applies to its writes and its logits. BLOOM computes its attention
inline instead of dispatching through the interface; for it `qkv` names the method that
splits the fused projection. A family whose modeling code changed in a transformers release
names, in `since`, the release its declaration matches, and an older one is refused in one
line rather than traced through code the declaration does not describe.

The parity gate (`verify.py`) checks every one of these declarations against the model's own
outputs on every run, so a wrong or missing entry refuses the trace instead of writing it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from packaging.version import Version
from torch import nn

from .models import ModelError


class FamilyError(ModelError):
    """The model cannot be traced: unknown family, or a configuration tracegen refuses."""


class TransformersTooOld(FamilyError):
    """The installed transformers predates the release the family's declaration matches."""


@dataclass(frozen=True)
class Family:
    name: str
    layers: str  # dotted path to the list of blocks
    final_norm: str  # dotted path to the norm before the unembedding
    attn: str = "self_attn"  # the attention module inside a block
    # The modules, inside a block, whose outputs are added to the residual stream.
    attn_write: str = "self_attn"
    mlp_write: str = "mlp"
    write_scale: str | None = None  # config attribute multiplying both writes (Granite)
    writes_include_residual: bool = False  # the module returns residual + write (BLOOM)
    logit_scale: str | None = None  # config attribute multiplying the logits (Cohere)
    logit_divisor: str | None = None  # config attribute dividing the logits (Granite)
    logit_softcap: str | None = None  # config attribute: cap * tanh(logits / cap) (Gemma 2/3)
    # "interface": q/k/v come from the registered attention function. Otherwise the name of
    # the attention module's method that splits the fused projection into q, k, v, each
    # [B, heads, T, d_head] (BLOOM's `_reshape`).
    qkv: str = "interface"
    experts: str | None = None  # MoE: the experts module inside the MLP
    router: str | None = None  # MoE: the router module inside the MLP
    experts_per_token: str | None = None  # MoE: config attribute, experts run per token
    # The transformers release whose modeling code this declaration matches; older ones are
    # refused (Falcon moved to the attention interface in 5.25).
    since: str | None = None
    # Config switches whose math tracegen does not model: (test, what to say).
    refuse: tuple[tuple[Callable[[Any], bool], str], ...] = field(default_factory=tuple)

    def overrides(self) -> list[str]:
        """What this family declares beyond the defaults, for the manifest and the docs."""
        default = Family(self.name, self.layers, self.final_norm)
        skip = {"name", "layers", "final_norm", "refuse"}
        return [
            f"{key}={getattr(self, key)}"
            for key in self.__dataclass_fields__
            if key not in skip and getattr(self, key) != getattr(default, key)
        ]


LLAMA = Family("llama", layers="model.layers", final_norm="model.norm")
# Gemma 2/3 and OLMo-2 normalise each sublayer's output before adding it to the residual stream.
POST_NORMS = replace(
    LLAMA, attn_write="post_attention_layernorm", mlp_write="post_feedforward_layernorm"
)
MOE = replace(LLAMA, experts="experts", router="gate", experts_per_token="num_experts_per_tok")
GPT2 = Family(
    "gpt2", layers="transformer.h", final_norm="transformer.ln_f", attn="attn", attn_write="attn"
)

FAMILIES: dict[str, Family] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": replace(LLAMA, name="mistral"),
    "MixtralForCausalLM": replace(MOE, name="mixtral"),
    "Qwen2ForCausalLM": replace(LLAMA, name="qwen2"),
    "Qwen3ForCausalLM": replace(LLAMA, name="qwen3"),
    "Qwen3MoeForCausalLM": replace(MOE, name="qwen3_moe"),
    # Attention sinks reach the recorder as the interface's `s_aux`; no declaration needed.
    "GptOssForCausalLM": replace(MOE, name="gpt_oss", router="router"),
    "GemmaForCausalLM": replace(LLAMA, name="gemma"),
    "Gemma2ForCausalLM": replace(
        POST_NORMS, name="gemma2", logit_softcap="final_logit_softcapping"
    ),
    "Gemma3ForCausalLM": replace(
        POST_NORMS, name="gemma3", logit_softcap="final_logit_softcapping"
    ),
    "PhiForCausalLM": replace(LLAMA, name="phi", final_norm="model.final_layernorm"),
    "Phi3ForCausalLM": replace(LLAMA, name="phi3"),
    "OlmoForCausalLM": replace(LLAMA, name="olmo"),
    "Olmo2ForCausalLM": replace(POST_NORMS, name="olmo2"),
    "CohereForCausalLM": replace(LLAMA, name="cohere", logit_scale="logit_scale"),
    # Sliding-window layers with rotary, full layers without positions; parallel like Cohere.
    "Cohere2ForCausalLM": replace(LLAMA, name="cohere2", logit_scale="logit_scale"),
    "GraniteForCausalLM": replace(
        LLAMA, name="granite", write_scale="residual_multiplier", logit_divisor="logits_scaling"
    ),
    "StableLmForCausalLM": replace(LLAMA, name="stablelm"),
    "SmolLM3ForCausalLM": replace(LLAMA, name="smollm3"),
    "GPT2LMHeadModel": GPT2,
    "GPTJForCausalLM": replace(GPT2, name="gptj"),
    "CodeGenForCausalLM": replace(GPT2, name="codegen"),
    "GPTBigCodeForCausalLM": replace(GPT2, name="gpt_bigcode"),
    "GPTNeoXForCausalLM": Family(
        "gpt_neox",
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attn="attention",
        attn_write="attention",
    ),
    "OPTForCausalLM": Family(
        "opt",
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        mlp_write="fc2",  # OPT's MLP is fc1 -> activation -> fc2, inline in the block
        refuse=(
            (
                lambda config: not config.do_layer_norm_before,
                "normalises the residual stream after each block (do_layer_norm_before=False), "
                "so blocks do not add writes to one stream",
            ),
            (
                lambda config: config.word_embed_proj_dim != config.hidden_size,
                "projects between the embedding and the residual width (word_embed_proj_dim)",
            ),
        ),
    ),
    "FalconForCausalLM": replace(
        GPT2, name="falcon", attn="self_attention", attn_write="self_attention", since="5.25"
    ),
    "BloomForCausalLM": replace(
        GPT2,
        name="bloom",
        attn="self_attention",
        attn_write="self_attention",
        writes_include_residual=True,
        qkv="_reshape",
    ),
}


def get_module(root: nn.Module, dotted: str) -> nn.Module | None:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass
class Adapter:
    """One loaded model seen through its family: the modules a trace hooks, and its head."""

    family: Family
    model: nn.Module
    blocks: list[nn.Module]
    final_norm: nn.Module
    unembed: nn.Module
    write_scale: float
    logit_multiplier: float  # logit_scale, or 1 / logits_scaling, or 1
    logit_softcap: float | None

    def attention(self, index: int) -> nn.Module:
        return get_module(self.blocks[index], self.family.attn)

    def writers(self, index: int) -> tuple[nn.Module, nn.Module]:
        block = self.blocks[index]
        return get_module(block, self.family.attn_write), get_module(block, self.family.mlp_write)

    def logits_before_cap(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm, unembedding and the model's logit scaling, before any soft-cap."""
        logits = self.unembed(self.final_norm(resid))
        return logits * self.logit_multiplier if self.logit_multiplier != 1.0 else logits

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """The logit lens: what the model's head makes of any residual stream."""
        logits = self.logits_before_cap(resid)
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def head_on_cpu(adapter: Adapter) -> Adapter:
    """The adapter with float32 CPU copies of the final norm and the unembedding, which is
    all that the lens and attribution need, wherever the model's weights are (a GPU, several,
    or offloaded to disk by accelerate, whose hooks fetch them for the copy)."""
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import align_module_device

    def copy_of(module: nn.Module) -> nn.Module:
        parameters = list(module.parameters())
        on_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in parameters)
        if on_cpu and not hasattr(module, "_hf_hook"):
            return module  # already what the lens needs: no second copy of the unembedding
        with align_module_device(module, torch.device("cpu")):
            copied = copy.deepcopy(module)
        remove_hook_from_module(copied, recurse=True)
        # nn.Module's own methods: transformers refuses .float() on models loaded from GGUF.
        return nn.Module.float(nn.Module.to(copied, "cpu"))

    head = {"final_norm": copy_of(adapter.final_norm), "unembed": copy_of(adapter.unembed)}
    return replace(adapter, **head)


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def family_of(model: nn.Module) -> Family:
    """The table entry for this model, or one line saying why it cannot be traced."""
    name = type(model).__name__
    family = FAMILIES.get(name)
    if family is None:
        raise FamilyError(f"cannot trace {name}: {_what_it_lacks(model)}")
    installed = transformers_version()
    if family.since and Version(installed) < Version(family.since):
        raise TransformersTooOld(
            f"cannot trace {name} with transformers {installed}: tracegen's declaration of it "
            f"matches the modeling code of transformers >= {family.since}; "
            f"pip install 'transformers>={family.since}'"
        )
    config = text_config(model.config)
    for test, why in family.refuse:
        if test(config):
            raise FamilyError(f"cannot trace {name}: it {why}")
    return family


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def _what_it_lacks(model: nn.Module) -> str:
    def attends(module: nn.Module) -> bool:
        return any("Attention" in type(sub).__name__ for sub in module.modules())

    blocks = next((m for m in model.modules() if isinstance(m, nn.ModuleList)), None)
    if blocks is None or not any(attends(block) for block in blocks):
        return (
            "it has no attention layers (a state-space or other recurrent model); tracegen "
            "traces decoder-only transformers"
        )
    without = [str(index) for index, block in enumerate(blocks) if not attends(block)]
    if without:
        return (
            f"layers {', '.join(without)} have no attention (a hybrid with layers of another "
            "kind); tracegen traces models whose every layer attends"
        )
    supported = ", ".join(sorted(FAMILIES))
    return f"its family is not in tracegen's table (tracegen/families.py); supported: {supported}"


def adapt(model: nn.Module) -> Adapter:
    """Find the modules the family table names, or say in one line what is missing."""
    family = family_of(model)
    name = type(model).__name__
    layers, final_norm = get_module(model, family.layers), get_module(model, family.final_norm)
    if layers is None or final_norm is None:
        missing = family.layers if layers is None else family.final_norm
        raise FamilyError(f"cannot trace {name}: it has no module {missing}")
    blocks = list(layers)
    for index, block in enumerate(blocks):
        for path in (family.attn, family.attn_write, family.mlp_write):
            if get_module(block, path) is None:
                raise FamilyError(
                    f"cannot trace {name}: layer {index} ({type(block).__name__}) has no {path}; "
                    "a hybrid model with layers of another kind is not supported"
                )
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise FamilyError(f"cannot trace {name}: it has no output embeddings (unembedding)")
    config = text_config(model.config)
    multiplier = 1.0
    if family.logit_scale:
        multiplier *= float(getattr(config, family.logit_scale))
    if family.logit_divisor:
        multiplier /= float(getattr(config, family.logit_divisor))
    softcap = getattr(config, family.logit_softcap, None) if family.logit_softcap else None
    write_scale = float(getattr(config, family.write_scale)) if family.write_scale else 1.0
    return Adapter(
        family,
        model,
        blocks,
        final_norm,
        unembed,
        write_scale,
        multiplier,
        float(softcap) if softcap else None,
    )


@dataclass(frozen=True)
class Shape:
    """The sizes a trace, its FLOPs and its KV cache need, read from the loaded modules."""

    n_layers: int
    n_heads: int
    n_kv_heads: int  # key/value heads the cache stores (1 for multi-query)
    d_model: int
    d_head: int
    d_mlp: int  # per expert for a mixture of experts


def shape_of(adapter: Adapter, n_kv_heads: int) -> Shape:
    """n_kv_heads comes from the recorded keys, which is what the cache holds."""
    config = text_config(adapter.model.config)
    attention = adapter.attention(0)
    heads = int(getattr(attention, "num_heads", None) or config.num_attention_heads)
    d_model = int(adapter.unembed.weight.shape[-1])
    d_head = int(getattr(attention, "head_dim", None) or d_model // heads)
    widths = ("moe_intermediate_size", "intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner")
    d_mlp = next((getattr(config, name) for name in widths if getattr(config, name, None)), None)
    return Shape(len(adapter.blocks), heads, n_kv_heads, d_model, d_head, int(d_mlp or 4 * d_model))
