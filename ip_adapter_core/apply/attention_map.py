"""Where the image prompt acts: how strongly each image prompt's branch changes each position of each
patched cross-attention layer, at one model evaluation.

At every patched attn2 call of the recorded evaluation, for each applied image prompt (branch):

    ratio(position) = ‖λ·mask·Attn(Q, K', V')‖ / ‖text attention‖      (norms over the channels)

on the cond rows (the positive prompt), the quotient of the branch's term as the patch adds it and the
text attention it is added to. Each layer's ratio lives on its own token grid; it is upsampled to the
latent (nearest: no value leaks across a mask's edge) and averaged over the layers of each block group
(input, middle, output) and over all layers. Maps are per image prompt, in the order they were applied,
and per latent image. A masked-out position, a layer the prompt skips and λ = 0 give exactly 0.

The recorder travels in ``transformer_options`` of a clone of the model (under RECORD_KEY), so the model
the user connected is never changed; the patch hands it each branch's term only while it is there.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError
from .attention import POSITIVE
from .masks import tokens_hw
from .run_wrapper import patches_of
from .transformer_options import RECORD_KEY

log = logging.getLogger("ipadapter")

GROUPS = ("input", "middle", "output", "all")
EPS = 1e-6  # relative to the text attention's norm: a position where the text attention is 0 divides by it


class Recorder:
    """Collects the ratio maps of one model evaluation (the one at sigma ``target``)."""

    def __init__(self, latent_hw: tuple[int, int], target_sigma: float | None = None):
        self.latent_hw = tuple(latent_hw)
        self.target = target_sigma
        self.done = False
        self.sums: dict = {}    # (branch, group) -> [B, H, W]
        self.counts: dict = {}  # (branch, group) -> layers
        self.branches: list = []  # in the order first seen: the chain's order
        self._recording_sigma = None

    def __deepcopy__(self, memo):  # model_options are deep-copied by clones and guiders: keep one recorder
        return self

    def wants(self, extra_options) -> bool:
        """Whether this call belongs to the recorded evaluation (a host read of the call's sigma: only in
        recording runs)."""
        if self.done:
            return False
        sigmas = extra_options.get("sigmas")
        if self.target is None or sigmas is None:
            return True
        s = float(sigmas.detach().amax())
        if self._recording_sigma is not None:
            if s == self._recording_sigma:
                return True
            self.done = True  # the next evaluation started
            return False
        if math.isclose(s, self.target, rel_tol=1e-4, abs_tol=1e-6):
            self._recording_sigma = s
            return True
        return False

    def add(self, layer_key, branch, term: torch.Tensor, text: torch.Tensor, extra_options, roles) -> None:
        """One branch's term [rows, n, C] at one layer, next to the text attention [rows, n, C]."""
        shape = extra_options.get("original_shape")
        call_hw = tuple(shape[-2:]) if shape is not None else self.latent_hw
        if call_hw != self.latent_hw:
            log.debug("attention map: a %s call of a %s latent (area cond) is not recorded", call_hw, self.latent_hw)
            return
        rows, n = term.shape[:2]
        per_chunk = rows // len(roles)
        cond = [c for c, role in enumerate(roles) if role == POSITIVE]
        if not cond:
            return
        c = cond[0]
        sl = slice(c * per_chunk, (c + 1) * per_chunk)
        ratio = term[sl].float().norm(dim=-1) / text[sl].float().norm(dim=-1).clamp_min(EPS)  # [B, n]
        h, w = tokens_hw(call_hw, n)
        grid = F.interpolate(ratio.reshape(per_chunk, 1, h, w), size=self.latent_hw, mode="nearest")[:, 0]
        if branch not in self.branches:
            self.branches.append(branch)
        for group in (layer_key[0], "all"):
            key = (branch, group)
            self.sums[key] = self.sums.get(key, 0) + grid.cpu()
            self.counts[key] = self.counts.get(key, 0) + 1

    def maps(self, batch: int) -> tuple[torch.Tensor, list[str]]:
        """[prompts × groups × batch, H, W] mean ratio per group (zeros where a prompt patched no layer of
        the group), and a label per (prompt, group)."""
        out, labels = [], []
        for i, branch in enumerate(self.branches or [None]):
            name = getattr(getattr(branch, "adapter", None), "name", "") if branch is not None else ""
            what = f"image prompt {i + 1}{f' ({name})' if name else ''}" if branch is not None else \
                "no image prompt acted (λ = 0, or no IP-Adapter node before this one)"
            for group in GROUPS:
                key = (branch, group)
                m = self.sums[key] / self.counts[key] if key in self.counts else torch.zeros(batch, *self.latent_hw)
                out.append(m)
                labels.append(f"{what}: {group}")
        return torch.cat(out), labels


def colorize(maps: torch.Tensor) -> torch.Tensor:
    """[N, H, W] in 0..1 -> IMAGE [N, H, W, 3]: black, purple, red, orange, pale yellow (an inferno-like ramp)."""
    stops = torch.tensor([[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04],
                          [0.99, 1.0, 0.64]])
    x = maps.clamp(0, 1) * (len(stops) - 1)
    i = x.floor().long().clamp(max=len(stops) - 2)
    t = (x - i).unsqueeze(-1)
    return stops[i] * (1 - t) + stops[i + 1] * t


def normalized(maps: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Maps divided by their common maximum (all of one run share a scale, so groups and prompts compare),
    and that maximum; all-zero maps stay zero."""
    top = float(maps.max()) if maps.numel() else 0.0
    return (maps / top if top > 0 else maps.clone()), top


def overlay(image: torch.Tensor, maps01: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """The colored maps over ``image`` (IMAGE [B, H', W', 3]), each map's weight alpha·value; the image is
    resized to the maps' size when it differs."""
    n, h, w = maps01.shape
    img = image
    if tuple(img.shape[1:3]) != (h, w):
        img = F.interpolate(img.movedim(-1, 1), size=(h, w), mode="bilinear", align_corners=False).movedim(1, -1)
    img = img[torch.arange(n) % img.shape[0]]
    a = (alpha * maps01).unsqueeze(-1)
    return img * (1 - a) + colorize(maps01) * a


def record(model, positive, negative, latent: dict, seed: int, steps: int, step: int, cfg: float,
           sampler_name: str, scheduler: str) -> tuple[torch.Tensor, list[str], Recorder]:
    """Sample ``latent`` as KSampler would, steps 0 … ``step`` of a ``steps``-step schedule, and record the
    maps at step ``step``'s model evaluation (its first, for samplers that evaluate more than once per
    step). On a clone of ``model``: the recorder never reaches the connected model. Returns the maps
    (see Recorder.maps), their labels, the recorder."""
    import comfy.sample  # noqa: PLC0415 - host only
    import comfy.samplers  # noqa: PLC0415

    if not 0 <= step < steps:
        raise IPAdapterError(f"step: expected a step from 0 to steps - 1 = {steps - 1}; got {step}.")
    if patches_of(model.model_options, ("dit",)):
        raise IPAdapterError("model: the attention map records the cross-attention layers of SD1.5 and SDXL UNets; "
                             "this model's image prompts act in the transformer blocks of Flux or SD3.5, which it does "
                             "not record. Use it with an SD1.5 or SDXL model.")
    # UNet layers only; λ = 0 patches nothing either: all-zero maps, said in the labels
    if not patches_of(model.model_options, ("attn2",)):
        log.warning("attention map: no image prompt acts on this model (λ = 0, or no IP-Adapter node before this "
                    "one): the maps are all zero")
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    rec = Recorder(tuple(samples.shape[-2:]), float(sigmas[step]))
    clone = model.clone()
    clone.model_options.setdefault("transformer_options", {})[RECORD_KEY] = rec
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    comfy.sample.sample(clone, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                        last_step=step + 1, noise_mask=latent.get("noise_mask"), disable_pbar=True, seed=seed)
    maps, labels = rec.maps(samples.shape[0])
    return maps, labels, rec
