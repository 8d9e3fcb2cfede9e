"""DDPM forward noising and the ε-prediction loss, as SD1.5/SDXL were trained (and the
reference's DDPMScheduler.add_noise): scaled-linear betas 0.00085..0.012 over 1000 steps,
x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε at an integer t, loss = mean squared error of the predicted ε."""
from __future__ import annotations

import torch
import torch.nn.functional as F

TRAIN_TIMESTEPS = 1000


def alphas_cumprod(steps: int = TRAIN_TIMESTEPS, beta_start: float = 0.00085, beta_end: float = 0.012):
    """ᾱ_t in float32, computed the way diffusers' DDPMScheduler computes it ("scaled_linear")."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    """x_t for integer timesteps ``t`` [B]."""
    a = acp.to(device=x0.device)[t.to(x0.device)].to(x0.dtype)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return a.sqrt().view(shape) * x0 + (1 - a).sqrt().view(shape) * eps


def sample_timesteps(n: int, generator: torch.Generator, steps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    return torch.randint(0, steps, (n,), generator=generator)


def eps_loss(pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reference's loss: MSE of the predicted noise, in float32, mean over everything."""
    return F.mse_loss(pred.float(), eps.float(), reduction="mean")
