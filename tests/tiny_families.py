"""Tiny configs of every family tracegen supports, with the config switches that change the math.

Every case is hidden 64, 2-3 layers, 4 heads of 16 dims and an MLP of width 128 (where the family
lets the width be set), so a random-weight model builds and traces in about a second on a CPU.
``build_config`` adds the vocabulary, the special ids and the context length under whatever names
the family uses; the case kwargs hold only sizes and switches. Dropout probabilities are left at
their defaults (the models run in eval mode).

Switch values are chosen so that they visibly change the numbers of a random-weight model: sliding
windows are a few tokens wide (shorter than a test prompt), softcaps and ``clip_qkv`` are small
enough to bite on small random activations, and multipliers are far from 1.

The comment above each family says whether its transformers modeling file dispatches attention
through ``ALL_ATTENTION_FUNCTIONS`` (checked against transformers 5.25). BLOOM computes attention
inline instead, so a hook on the attention interface does not see it; Falcon did too up to
transformers 5.24, and tracegen refuses Falcon there (``Family.since``).

Partial rotary is given with the legacy kwargs (``partial_rotary_factor``, ``rotary_pct``);
transformers 5 moves them into ``config.rope_parameters``, transformers 4 reads them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str  # e.g. "llama", "mistral-sliding", "gpt2", "falcon-alibi"
    config_class: str  # transformers class name, e.g. "LlamaConfig"
    kwargs: dict = field(default_factory=dict)  # size/switch kwargs (NOT vocab/bos/eos/context)
    switches: str = ""  # one line: what this case covers
    example_ids: tuple[str, ...] = ()  # 1-2 real hub model ids of the family


# Sizes shared by the Llama-like families (their kwargs are named the same).
_LLAMA_SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
# GQA variant: 4 query heads share 2 key/value heads.
_LLAMA_SIZE_GQA = {**_LLAMA_SIZE, "num_key_value_heads": 2}
# GPT-2-style names (GPT-2, GPT-J, GPT-BigCode, CodeGen).
_GPT2_SIZE = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128}


CASES: tuple[Case, ...] = (
    # --- Llama: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------------
    Case(
        name="llama",
        config_class="LlamaConfig",
        kwargs={**_LLAMA_SIZE_GQA, "tie_word_embeddings": False},
        switches="RMSNorm, SwiGLU, full rotary, GQA 4q/2kv, untied lm_head",
        example_ids=("meta-llama/Llama-3.2-1B",),
    ),
    Case(
        name="llama-tied",
        config_class="LlamaConfig",
        kwargs={**_LLAMA_SIZE, "tie_word_embeddings": True, "attention_bias": True},
        switches="tied embeddings, q/k/v/o bias, MHA",
        example_ids=("meta-llama/Llama-3.2-1B",),
    ),
    # --- Mistral: ALL_ATTENTION_FUNCTIONS: yes -------------------------------------------------
    Case(
        name="mistral-sliding",
        config_class="MistralConfig",
        kwargs={**_LLAMA_SIZE_GQA, "sliding_window": 4, "tie_word_embeddings": False},
        switches="sliding window 4 on every layer, GQA 4q/2kv",
        example_ids=("mistralai/Mistral-7B-v0.1",),
    ),
    # --- Mixtral: ALL_ATTENTION_FUNCTIONS: yes -------------------------------------------------
    Case(
        name="mixtral",
        config_class="MixtralConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "tie_word_embeddings": False,
        },
        switches="sparse MoE MLP, 4 experts, top-2 routing, GQA 4q/2kv",
        example_ids=("mistralai/Mixtral-8x7B-v0.1",),
    ),
    # --- Qwen2: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------------
    Case(
        name="qwen2",
        config_class="Qwen2Config",
        kwargs={**_LLAMA_SIZE_GQA, "tie_word_embeddings": True},
        switches="q/k/v bias (no o bias), GQA 4q/2kv, tied embeddings",
        example_ids=("Qwen/Qwen2.5-0.5B",),
    ),
    # --- Qwen3: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------------
    Case(
        name="qwen3-qknorm",
        config_class="Qwen3Config",
        kwargs={**_LLAMA_SIZE_GQA, "head_dim": 16, "tie_word_embeddings": True},
        switches="per-head RMSNorm on q and k before rotary, GQA 4q/2kv, tied embeddings",
        example_ids=("Qwen/Qwen3-0.6B",),
    ),
    # --- Qwen3-MoE: ALL_ATTENTION_FUNCTIONS: yes -----------------------------------------------
    Case(
        name="qwen3-moe",
        config_class="Qwen3MoeConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "head_dim": 16,
            "moe_intermediate_size": 128,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "tie_word_embeddings": False,
        },
        switches="per-head q/k norm, MoE on every layer, 4 experts top-2, renormalised top-k",
        example_ids=("Qwen/Qwen3-30B-A3B",),
    ),
    # --- GPT-OSS: ALL_ATTENTION_FUNCTIONS: yes (sinks passed as s_aux) ---------------------------
    Case(
        name="gpt-oss",
        config_class="GptOssConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "num_hidden_layers": 3,
            "head_dim": 16,
            "intermediate_size": 128,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            # GPT-OSS's YaRN, its factor matching build_config's 512 positions over these 16
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 16,
            },
            "tie_word_embeddings": False,
        },
        switches="attention sinks (a learned logit per head joins every softmax), MoE with a "
        "biased router, 4 experts top-2, clamped SwiGLU, sliding window 4 / full alternation, "
        "q/k/v/o bias, YaRN rotary, GQA 4q/2kv",
        example_ids=("openai/gpt-oss-20b",),
    ),
    # --- Gemma: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------------
    Case(
        name="gemma",
        config_class="GemmaConfig",
        kwargs={**_LLAMA_SIZE, "num_key_value_heads": 1, "head_dim": 16},
        switches="embeddings scaled by sqrt(hidden), (1+w) RMSNorm, GeGLU, MQA, tied",
        example_ids=("google/gemma-2b",),
    ),
    # --- Gemma 2: ALL_ATTENTION_FUNCTIONS: yes -------------------------------------------------
    Case(
        name="gemma2-softcap",
        config_class="Gemma2Config",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "num_hidden_layers": 3,
            "head_dim": 16,
            "query_pre_attn_scalar": 32,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "attn_logit_softcapping": 1.0,
            "final_logit_softcapping": 0.5,
        },
        switches="post-attn/post-MLP norms, attn+final logit softcap, sliding/full alternation, "
        "query_pre_attn_scalar != head_dim",
        example_ids=("google/gemma-2-2b",),
    ),
    # --- Gemma 3 (text): ALL_ATTENTION_FUNCTIONS: yes ------------------------------------------
    Case(
        name="gemma3-sliding-qknorm",
        config_class="Gemma3TextConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "num_hidden_layers": 3,
            "head_dim": 16,
            "query_pre_attn_scalar": 24,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        },
        switches="q/k RMSNorm, post-norms, sliding window 4 on 2 of 3 layers with local rope "
        "base, query_pre_attn_scalar != head_dim",
        example_ids=("google/gemma-3-270m",),
    ),
    # --- Phi: ALL_ATTENTION_FUNCTIONS: yes -----------------------------------------------------
    Case(
        name="phi",
        config_class="PhiConfig",
        kwargs={**_LLAMA_SIZE, "partial_rotary_factor": 0.5, "tie_word_embeddings": False},
        switches="parallel attn+MLP from one LayerNorm, partial rotary 0.5, biased lm_head",
        example_ids=("microsoft/phi-2",),
    ),
    Case(
        name="phi-qk-layernorm",
        config_class="PhiConfig",
        kwargs={
            **_LLAMA_SIZE,
            "partial_rotary_factor": 0.5,
            "qk_layernorm": True,
            "tie_word_embeddings": False,
        },
        switches="as phi plus per-head LayerNorm on q and k",
        example_ids=("microsoft/phi-2",),
    ),
    # --- Phi-3: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------------
    Case(
        name="phi3",
        config_class="Phi3Config",
        kwargs={**_LLAMA_SIZE_GQA, "tie_word_embeddings": False},
        switches="fused qkv_proj and gate_up_proj, GQA 4q/2kv",
        example_ids=("microsoft/Phi-3-mini-4k-instruct",),
    ),
    # --- OLMo: ALL_ATTENTION_FUNCTIONS: yes ----------------------------------------------------
    Case(
        name="olmo-clip-qkv",
        config_class="OlmoConfig",
        kwargs={**_LLAMA_SIZE, "clip_qkv": 0.1, "tie_word_embeddings": False},
        switches="non-parametric LayerNorm, q/k/v clamped to +-0.1 (clips random activations)",
        example_ids=("allenai/OLMo-1B-hf",),
    ),
    # --- OLMo-2: ALL_ATTENTION_FUNCTIONS: yes --------------------------------------------------
    Case(
        name="olmo2",
        config_class="Olmo2Config",
        kwargs={**_LLAMA_SIZE_GQA, "tie_word_embeddings": False},
        switches="RMSNorm on q and k across all heads (width heads*head_dim), post-norms only",
        example_ids=("allenai/OLMo-2-0425-1B",),
    ),
    # --- Cohere: ALL_ATTENTION_FUNCTIONS: yes --------------------------------------------------
    Case(
        name="cohere",
        config_class="CohereConfig",
        kwargs={**_LLAMA_SIZE_GQA, "logit_scale": 0.25, "tie_word_embeddings": True},
        switches="parallel attn+MLP, bias-free LayerNorm, interleaved rotary, logit_scale 0.25",
        example_ids=("CohereForAI/c4ai-command-r-v01",),
    ),
    Case(
        name="cohere-qknorm",
        config_class="CohereConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "logit_scale": 0.25,
            "use_qk_norm": True,
            "tie_word_embeddings": True,
        },
        switches="as cohere plus per-head LayerNorm on q and k",
        example_ids=("CohereForAI/c4ai-command-r-plus",),
    ),
    # --- Cohere 2: ALL_ATTENTION_FUNCTIONS: yes -----------------------------------------------
    Case(
        name="cohere2-sliding",
        config_class="Cohere2Config",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "num_hidden_layers": 3,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
            "logit_scale": 0.25,
            "tie_word_embeddings": True,
        },
        switches="parallel attn+MLP, sliding window 4 with rotary on 2 of 3 layers, the full "
        "layer without positions (NoPE), logit_scale 0.25",
        example_ids=("CohereLabs/c4ai-command-r7b-12-2024",),
    ),
    # --- Granite: ALL_ATTENTION_FUNCTIONS: yes -------------------------------------------------
    Case(
        name="granite",
        config_class="GraniteConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22,
            "attention_multiplier": 0.015625,
            "logits_scaling": 8.0,
            "tie_word_embeddings": True,
        },
        switches="embedding x12, residual branches x0.22, attention scale 1/64, logits /8",
        example_ids=("ibm-granite/granite-3.0-2b-instruct",),
    ),
    # --- StableLM: ALL_ATTENTION_FUNCTIONS: yes ------------------------------------------------
    Case(
        name="stablelm",
        config_class="StableLmConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "partial_rotary_factor": 0.25,
            "use_qkv_bias": True,
            "tie_word_embeddings": False,
        },
        switches="LayerNorm, partial rotary 0.25, q/k/v bias, sequential residual",
        example_ids=("stabilityai/stablelm-2-1_6b",),
    ),
    Case(
        name="stablelm-parallel-qknorm",
        config_class="StableLmConfig",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "partial_rotary_factor": 0.25,
            "use_parallel_residual": True,
            "qk_layernorm": True,
            "tie_word_embeddings": False,
        },
        switches="parallel residual (one LayerNorm), per-head LayerNorm on q and k, rotary 0.25",
        example_ids=("stabilityai/stablelm-2-12b",),
    ),
    # --- Falcon: ALL_ATTENTION_FUNCTIONS: yes since 5.25 (ALiBi folded into the mask) -----------
    Case(
        name="falcon",
        config_class="FalconConfig",
        kwargs={
            "hidden_size": 64,
            "ffn_hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "multi_query": False,
        },
        switches="rotary, parallel attn+MLP (default), one LayerNorm, fused qkv, MHA, tied",
        example_ids=("tiiuae/falcon-7b",),
    ),
    Case(
        name="falcon-multi-query",
        config_class="FalconConfig",
        kwargs={
            "hidden_size": 64,
            "ffn_hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "multi_query": True,
        },
        switches="rotary, parallel attn+MLP, multi-query (one shared k/v head)",
        example_ids=("tiiuae/falcon-7b",),
    ),
    Case(
        name="falcon-alibi",
        config_class="FalconConfig",
        kwargs={
            "hidden_size": 64,
            "ffn_hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "alibi": True,
            "multi_query": False,
            "parallel_attn": False,
            "bias": True,
        },
        switches="ALiBi (no rotary), sequential attn then MLP, biases, MHA",
        example_ids=("tiiuae/falcon-rw-1b",),
    ),
    Case(
        name="falcon-new-arch",
        config_class="FalconConfig",
        kwargs={
            "hidden_size": 64,
            "ffn_hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "new_decoder_architecture": True,
            "num_kv_heads": 2,
        },
        switches="new decoder architecture: two LayerNorms (ln_attn, ln_mlp), grouped kv 4q/2kv",
        example_ids=("tiiuae/falcon-40b",),
    ),
    # --- GPT-2: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------------
    Case(
        name="gpt2",
        config_class="GPT2Config",
        kwargs={**_GPT2_SIZE, "tie_word_embeddings": True},
        switches="learned absolute positions, Conv1D projections, pre-LN, tied",
        example_ids=("openai-community/gpt2",),
    ),
    Case(
        name="gpt2-inverse-layer-scale",
        config_class="GPT2Config",
        kwargs={
            **_GPT2_SIZE,
            "n_layer": 3,
            "scale_attn_by_inverse_layer_idx": True,
            "tie_word_embeddings": False,
        },
        switches="attention scores further divided by (layer_idx + 1), untied lm_head",
        example_ids=("openai-community/gpt2",),
    ),
    # --- GPT-J: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------------
    Case(
        name="gptj",
        config_class="GPTJConfig",
        kwargs={**_GPT2_SIZE, "rotary_dim": 8, "tie_word_embeddings": False},
        switches="interleaved rotary on 8 of 16 head dims, parallel attn+MLP, biased lm_head",
        example_ids=("EleutherAI/gpt-j-6b",),
    ),
    # --- GPT-NeoX: ALL_ATTENTION_FUNCTIONS: yes ------------------------------------------------
    Case(
        name="gpt-neox",
        config_class="GPTNeoXConfig",
        kwargs={
            **_LLAMA_SIZE,
            "rotary_pct": 0.25,
            "use_parallel_residual": True,
            "tie_word_embeddings": False,
        },
        switches="parallel residual (two LayerNorms), rotary on 25% of head dims, fused qkv",
        example_ids=("EleutherAI/pythia-160m",),
    ),
    Case(
        name="gpt-neox-sequential",
        config_class="GPTNeoXConfig",
        kwargs={
            **_LLAMA_SIZE,
            "rotary_pct": 0.25,
            "use_parallel_residual": False,
            "tie_word_embeddings": False,
        },
        switches="sequential residual, rotary on 25% of head dims",
        example_ids=("EleutherAI/pythia-160m",),
    ),
    # --- GPT-BigCode: ALL_ATTENTION_FUNCTIONS: yes ---------------------------------------------
    Case(
        name="gpt-bigcode-mqa",
        config_class="GPTBigCodeConfig",
        kwargs={**_GPT2_SIZE, "multi_query": True},
        switches="multi-query attention (one k/v head), learned positions, tied",
        example_ids=("bigcode/gpt_bigcode-santacoder",),
    ),
    # --- OPT: ALL_ATTENTION_FUNCTIONS: yes -----------------------------------------------------
    Case(
        name="opt",
        config_class="OPTConfig",
        kwargs={
            "hidden_size": 64,
            "ffn_dim": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "do_layer_norm_before": True,
            "word_embed_proj_dim": 64,
            "tie_word_embeddings": True,
        },
        switches="learned positions with offset 2, pre-LN, ReLU MLP, no embed projection, tied",
        example_ids=("facebook/opt-125m",),
    ),
    # --- BLOOM: ALL_ATTENTION_FUNCTIONS: NO (attention computed inline in BloomAttention) -------
    Case(
        name="bloom-alibi",
        config_class="BloomConfig",
        kwargs={"hidden_size": 64, "n_layer": 2, "n_head": 4},
        switches="ALiBi, LayerNorm on embeddings, fused qkv, MLP fixed at 4x hidden, tied",
        example_ids=("bigscience/bloom-560m",),
    ),
    # --- CodeGen: ALL_ATTENTION_FUNCTIONS: yes -------------------------------------------------
    Case(
        name="codegen",
        config_class="CodeGenConfig",
        kwargs={**_GPT2_SIZE, "rotary_dim": 8, "tie_word_embeddings": False},
        switches="qkv fused in 4 model-parallel blocks, interleaved rotary on 8 of 16 head dims",
        example_ids=("Salesforce/codegen-350M-mono",),
    ),
    # --- SmolLM3: ALL_ATTENTION_FUNCTIONS: yes -------------------------------------------------
    Case(
        name="smollm3-nope",
        config_class="SmolLM3Config",
        kwargs={
            **_LLAMA_SIZE_GQA,
            "num_hidden_layers": 3,
            "no_rope_layers": [1, 1, 0],
            "tie_word_embeddings": True,
        },
        switches="layer 2 of 3 has no rotary (NoPE), GQA 4q/2kv, tied",
        example_ids=("HuggingFaceTB/SmolLM3-3B",),
    ),
)


# Context-length kwarg names per config class; anything not listed uses max_position_embeddings.
_CONTEXT_KEYS: dict[str, tuple[str, ...]] = {
    "GPT2Config": ("n_positions",),
    "GPTJConfig": ("n_positions",),
    "GPTBigCodeConfig": ("n_positions",),
    "CodeGenConfig": ("n_positions", "n_ctx"),
    "Phi3Config": ("max_position_embeddings", "original_max_position_embeddings"),
    "BloomConfig": (),  # ALiBi only, no position limit in the config
}


def case_by_name(name: str) -> Case:
    """The case called ``name``."""
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(name)


def build_config(
    case: Case, vocab_size: int, max_context: int = 512, bos_id: int = 0, eos_id: int = 1
):
    """Instantiate the config with the vocabulary, special ids and context length under whatever
    names the family uses (n_positions, max_position_embeddings, ...).

    ``pad_token_id`` is set to None: several families default it to an id beyond a small
    vocabulary (Phi-3: 32000), which would make the embedding's padding row out of range.
    """
    import transformers

    cls = getattr(transformers, case.config_class)
    kwargs = dict(case.kwargs)
    for key in _CONTEXT_KEYS.get(case.config_class, ("max_position_embeddings",)):
        kwargs[key] = max_context
    kwargs.update(
        vocab_size=vocab_size,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
    )
    return cls(**kwargs)
