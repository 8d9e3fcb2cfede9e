"""Layer factories. Outside ComfyUI plain torch.nn; inside it ``comfy.ops.manual_cast``
is passed instead, whose layers cast their weights to the input's dtype and device."""
import torch


class TorchOps:
    Linear = torch.nn.Linear
    LayerNorm = torch.nn.LayerNorm
