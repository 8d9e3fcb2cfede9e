"""Saving and loading image prompts as safetensors (never pickles: loading runs no code)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import safetensors.torch

from .config import AdapterConfig, ResamplerConfig
from .embeds import ImagePrompt
from .errors import IPAdapterError

EXTENSION = ".ipaembeds"
FORMAT = "ipadapter-embeds/1"


def save_prompt(prompt: ImagePrompt, path) -> Path:
    """Write the tokens and the adapter config; weighting is not saved (re-apply IPAWeight)."""
    path = Path(path)
    meta = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(prompt.config)),
            "adapter": Path(prompt.adapter_path).name}
    tensors = {"positive": prompt.positive.contiguous().cpu(), "negative": prompt.negative.contiguous().cpu()}
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
    return path


def load_prompt(path) -> ImagePrompt:
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise IPAdapterError(f"embeds file '{path}': not a readable safetensors file ({e}). "
                             "Save embeds with the IP-Adapter Save Embeds node.") from e
    if meta.get("format") != FORMAT or set(tensors) != {"positive", "negative"}:
        raise IPAdapterError(f"embeds file '{path}': expected format {FORMAT} with 'positive' and "
                             f"'negative' tensors; found format {meta.get('format')!r} and {sorted(tensors)}.")
    raw = json.loads(meta["config"])
    res = raw.pop("resampler")
    raw["layer_hidden"] = tuple(raw["layer_hidden"])
    config = AdapterConfig(**raw, resampler=ResamplerConfig(**res) if res else None)
    return ImagePrompt(tensors["positive"], tensors["negative"], config, adapter_path="")
