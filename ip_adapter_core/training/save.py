"""Writing a trained adapter as the files every loader reads: flat ``.safetensors`` with
``image_proj.*`` / ``ip_adapter.{i}.to_k_ip.weight`` keys (ours, diffusers' load_ip_adapter,
ComfyUI_IPAdapter_plus), or the reference's nested ``.bin`` ({"image_proj": ..., "ip_adapter": ...})."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import IPAdapterError


def sections(model, dtype=torch.float16) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": {...}, "ip_adapter": {...}} as contiguous CPU tensors in ``dtype``."""
    def part(module):
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
    return {"image_proj": part(model.image_proj), "ip_adapter": part(model.ip_adapter)}


def save_adapter(model, path, dtype=torch.float16, fmt: str | None = None) -> Path:
    """Write ``model`` (an IPAdapterModel) to ``path``; the format follows the suffix unless ``fmt``."""
    path = Path(path)
    fmt = fmt or ("bin" if path.suffix == ".bin" else "safetensors")
    parts = sections(model, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        flat = {f"{s}.{k}": v for s, d in parts.items() for k, v in d.items()}
        save_file(flat, str(path), metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(parts, path)
    else:
        raise IPAdapterError(f"format: expected safetensors or bin; got {fmt!r}.")
    return path
