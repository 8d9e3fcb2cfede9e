"""Layer factories. Outside ComfyUI plain torch.nn; inside it ``comfy.ops.manual_cast``
is passed instead, whose layers cast their weights to the input's dtype and device."""
import torch


class TorchOps:
    Linear = torch.nn.Linear
    LayerNorm = torch.nn.LayerNorm


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype to feed ``module`` (a layer, or a network of them). Released files are fp16. Layers that
    cast their weights to the input (comfy.ops manual_cast, in the host) compute in float32, as the
    reference does after loading; plain torch layers need the input in their own dtype."""
    if any(getattr(m, "comfy_cast_weights", False) for m in module.modules()):
        return torch.float32
    return next(module.parameters()).dtype
