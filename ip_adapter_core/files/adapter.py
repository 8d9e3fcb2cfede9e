"""An IP-Adapter as a torch module: the projection network plus the per-layer
K'/V' projections, laid out so the flat safetensors keys load strictly."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from ..errors import IPAdapterFileError
from ..networks.ops import TorchOps
from ..networks.projection import build_projection
from ..networks.time_resampler import JointIPLayer
from .config import AdapterConfig, detect_config
from .formats import adapter_sections, read_flat_state_dict

log = logging.getLogger("ipadapter")


class IPLayer(torch.nn.Module):
    """K' and V' of one attention layer: Linear cross_dim -> hidden (bias-free but on XLabs' Flux adapters)."""

    def __init__(self, cross_dim, hidden, operations=TorchOps, device=None, dtype=None, bias=False):
        super().__init__()
        self.to_k_ip = operations.Linear(cross_dim, hidden, bias=bias, device=device, dtype=dtype)
        self.to_v_ip = operations.Linear(cross_dim, hidden, bias=bias, device=device, dtype=dtype)


class IPAdapterModel(torch.nn.Module):
    """``image_proj`` + ``ip_adapter.{file_index}``: the weights of one IP-Adapter file."""

    def __init__(self, config: AdapterConfig, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.image_proj = build_projection(config, operations, device=device, dtype=dtype)
        self.ip_adapter = torch.nn.ModuleDict({str(layer.file_index): self._layer(config, layer, operations, device, dtype)
                                              for layer in config.layers})

    @staticmethod
    def _layer(config, layer, operations, device, dtype):
        if config.timed:  # SD3.5: K'/V' plus the block's own norms
            return JointIPLayer(config.cross_dim, layer.hidden, config.resampler.dim, layer.dim_head, operations,
                                device, dtype)
        return IPLayer(config.kv_width, layer.hidden, operations, device, dtype, config.ip_bias)

    def layer(self, file_index: int) -> IPLayer:
        return self.ip_adapter[str(file_index)]


@dataclass(frozen=True)
class LoadedAdapter:
    """What the loader hands on: where it came from, what it is, and its weights."""

    path: str
    config: AdapterConfig
    model: IPAdapterModel
    # FaceID: the UNet LoRA, ``{i}.to_{q,k,v,out}_lora.{down,up}.weight`` as in the file (CPU); ComfyUI's
    # weight patching merges it into the UNet (apply/unet_lora.py), so it is no part of the module.
    lora: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


def read_adapter(path) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Read and classify a file; returns its config and the flat state dict."""
    flat = read_flat_state_dict(path)
    sections, rest = adapter_sections(flat)  # XLabs' Flux files name their sections their own way
    config = detect_config(sections, path, rest)
    if rest:
        log.warning("IP-Adapter file '%s': ignoring %d keys outside image_proj/ip_adapter (%s)",
                    path, len(rest), ", ".join(rest[:3]))
    return config, {f"{name}.{k}": v for name, part in sections.items() for k, v in part.items()}


def load_adapter(path, dtype: torch.dtype | None = None, device="cpu", operations=TorchOps) -> LoadedAdapter:
    """Load an IP-Adapter file (.safetensors or .bin) strictly, in ``dtype`` (default: as stored)."""
    config, sd = read_adapter(path)
    lora = {k.partition(".")[2]: sd.pop(k) for k in [k for k in sd if "_lora." in k]}
    dtype = dtype or next(iter(sd.values())).dtype
    with torch.device("meta"):
        model = IPAdapterModel(config, operations, dtype=dtype)
    try:
        # assign=True swaps the meta tensors for the file's, so nothing is allocated twice.
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()},
                              strict=True, assign=True)
    except RuntimeError as e:
        raise IPAdapterFileError(path, f"does not match the {config.name} layout: {e}",
                                 "The file is damaged or a variant this extension does not know.") from e
    log.info("Loaded IP-Adapter '%s': %s", Path(path).name, config.name)
    return LoadedAdapter(str(path), config, model.eval().requires_grad_(False), MappingProxyType(lora))
