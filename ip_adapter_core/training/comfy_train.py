"""Training an adapter inside ComfyUI on the host's own UNet (host side).

The loop is this module's, not the host's LoRA trainer (comfy_extras/nodes_train.py), whose habits
would be wrong here: it takes the loss on x0 and noises with a continuous σ while the UNet sees a
rounded t (we noise with DDPM's ᾱ_t at an integer t and take the loss on ε, as the reference); at
batch > 1 it runs every caption over every row (each row here gets its own caption); its gradient
checkpointing reruns blocks with the one mutable ``transformer_options``, so a replace patch
recomputed in backward sees another block's key (ours snapshots the options per block, and our
patches hold their layer instead of reading the key); frozen loader weights are inference tensors
that cannot be saved for backward (ours are swapped for normal copies for the run and put back);
the loader casts patches with ``.to(dtype)`` (ours ignore it, so trainable weights stay float32).

What the host gives: the UNet (loaded with its memory manager), ProgressBar (so the editor shows
progress and Cancel stops the run between steps), and the LOSS_MAP its loss-graph node draws.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from ..apply.attention import host_kernel_is_chunked
from ..apply.transformer_options import TRAIN_TOKENS_KEY
from ..files.config import IMAGE_EMBEDS
from . import drop, noise

log = logging.getLogger("ipadapter")

COMPUTE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainAttn2:
    """attn2 during training: the host's text attention plus the image branch with the batch's own
    tokens (one image per row), through the trainable K'/V' of this layer."""

    def __init__(self, ip_layer):
        self.ip_layer = ip_layer

    def __call__(self, q, k, v, extra):
        import comfy.ldm.modules.attention as A

        heads = extra["n_heads"]
        out = A.optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"),
                                    transformer_options=extra)
        tokens = extra[TRAIN_TOKENS_KEY]
        ip_k = self.ip_layer.to_k_ip(tokens).to(q.dtype)
        ip_v = self.ip_layer.to_v_ip(tokens).to(q.dtype)
        return out + A.attention_pytorch(q, ip_k, ip_v, heads)

    def to(self, *args, **kwargs):
        # ComfyUI casts patches to the UNet's dtype when it loads a model: trainable weights stay float32
        return self


def _attention_override() -> dict:
    """Where the host's attention is a chunked CPU kernel (sub-quadratic, split, basic: ComfyUI's
    CPU default), every attention of the training forward uses torch SDPA instead: the same maths,
    with a backward about 2× faster and a fraction of the memory (bench/training.py). GPU kernels
    are kept."""
    import comfy.ldm.modules.attention as A

    if not host_kernel_is_chunked(A):
        return {}
    # the wrapper passes _inside_attn_wrapper on, so this call does not come back here
    return {"optimized_attention_override": lambda func, *args, **kwargs: A.attention_pytorch(*args, **kwargs)}


@dataclass
class TrainingSet:
    """What the dataset node computes once (socket type IPA_TRAINING_SET), all on the CPU."""

    latents: torch.Tensor            # [N, 4, h, w], the model's latent space (process_in applied)
    conds: torch.Tensor              # [N, 77, C] per-image caption cond
    pooled: torch.Tensor | None      # [N, P] SDXL pooled text, else None
    empty_cond: torch.Tensor         # [1, 77, C] the empty caption
    empty_pooled: torch.Tensor | None
    image_embeds: torch.Tensor       # [N, E] CLIP image_embeds
    penultimate: torch.Tensor        # [N, 257, H] CLIP penultimate hidden states
    zero_penultimate: torch.Tensor   # [1, 257, H] the encoder's output for an all-zero normalised image
    encoder: str                     # which CLIP vision model made the features
    size: tuple[int, int]            # image height, width in pixels

    def __len__(self) -> int:
        return self.latents.shape[0]

    def normal_copy(self) -> "TrainingSet":
        """A copy whose tensors can take part in autograd (call outside inference_mode)."""
        import dataclasses

        return dataclasses.replace(self, **{f.name: getattr(self, f.name).clone() for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def features(self, config):
        """(features [N, ...], the dropped value [1, ...]) for an adapter of ``config``."""
        if config.feature == IMAGE_EMBEDS:
            return self.image_embeds, torch.zeros_like(self.image_embeds[:1])
        return self.penultimate, self.zero_penultimate


@contextlib.contextmanager
def trainable_weights(module: torch.nn.Module):
    """Swap inference-mode parameters and buffers (ComfyUI loads models under inference_mode) for
    normal copies for the duration, so autograd can save them for backward; the module's own
    tensors are put back afterwards, also when a copy fails part-way (out of memory: the copies
    double the UNet), so the model given to the node is left as it was."""
    swapped = []
    try:
        with torch.inference_mode(False):
            for m in module.modules():
                for store in (m._parameters, m._buffers):
                    for name, t in list(store.items()):
                        if t is not None and t.is_inference():
                            copy = t.clone()
                            swapped.append((store, name, t))
                            store[name] = torch.nn.Parameter(copy, requires_grad=False) if store is m._parameters \
                                else copy
        yield
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """requires_grad off for the duration; each parameter's own flag back afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


_NO_FORWARD = object()


@contextlib.contextmanager
def checkpointed_blocks(diffusion_model, enabled: bool):
    """Gradient checkpointing per transformer block. Each call keeps a snapshot of its
    transformer_options, so the recomputation in backward runs with this block's own entries, not
    those the shared dict holds by then. The wrapper calls whatever ``forward`` the block had (another
    extension's instance attribute too) and that same attribute, or none, is put back afterwards."""
    if not enabled:
        yield
        return
    from comfy.ldm.modules.attention import BasicTransformerBlock

    wrapped = []
    try:
        for m in diffusion_model.modules():
            if isinstance(m, BasicTransformerBlock):
                original = m.forward

                def forward(x, context=None, transformer_options={}, _f=original):  # noqa: B006 - host signature
                    snapshot = dict(transformer_options)
                    return torch.utils.checkpoint.checkpoint(_f, x, context, snapshot, use_reentrant=False)

                wrapped.append((m, vars(m).get("forward", _NO_FORWARD)))
                m.forward = forward
        yield
    finally:
        for m, previous in reversed(wrapped):
            if previous is _NO_FORWARD:
                vars(m).pop("forward", None)  # back to the class's method
            else:
                m.forward = previous


def adm(base_model, pooled: torch.Tensor | None, size: tuple[int, int]):
    """SDXL's vector cond (pooled text + size/crop embeddings) for a batch; None for SD1.5."""
    if pooled is None or not getattr(base_model, "adm_channels", 0):
        return None
    h, w = size
    rows = [base_model.encode_adm(pooled_output=p[None], width=w, height=h, crop_w=0, crop_h=0,
                                  target_width=w, target_height=h) for p in pooled]
    return torch.cat(rows)


@dataclass
class TrainSettings:
    steps: int = 100
    batch_size: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    drop_rates: tuple[float, float, float] = drop.DEFAULT_RATES
    seed: int = 0
    gradient_checkpointing: bool = False
    compute_dtype: str = "float32"


def predict_eps(model_patcher, adapter, x_t, t, cond, features, pooled=None, size=(512, 512)):
    """The UNet's ε prediction for noised latents ``x_t`` at integer timesteps ``t``, each row with
    its own caption cond and image features, through the trainable adapter."""
    base = model_patcher.model
    dm = base.diffusion_model
    weight = next(dm.parameters())
    device, dtype = weight.device, weight.dtype
    tokens = adapter.image_proj(features.to(device, torch.float32))
    to = {"patches_replace": {"attn2": {l.key: TrainAttn2(adapter.layer(l.file_index)) for l in adapter.config.layers}},
          TRAIN_TOKENS_KEY: tokens, **_attention_override()}
    y = adm(base, pooled, size)
    return dm(x_t.to(device, dtype), t.to(device).float(), context=cond.to(device, dtype),
              y=None if y is None else y.to(device, dtype), transformer_options=to)


def train_step(model_patcher, adapter, data: TrainingSet, index: torch.Tensor, gen: torch.Generator,
               settings: TrainSettings, acp: torch.Tensor) -> torch.Tensor:
    """One batch: noise, drops, prediction; returns the ε loss (the caller backpropagates)."""
    n = index.shape[0]
    x0 = model_patcher.model.process_latent_in(data.latents[index])  # the VAE's latents in the UNet's scale
    eps = torch.randn(x0.shape, generator=gen)
    t = noise.sample_timesteps(n, gen)
    drop_image, drop_text = drop.draw(n, gen, *settings.drop_rates)
    feats, dropped = data.features(adapter.config)
    feats = drop.apply_drop(feats[index], dropped, drop_image)
    cond = drop.apply_drop(data.conds[index], data.empty_cond, drop_text)
    pooled = None if data.pooled is None else drop.apply_drop(data.pooled[index], data.empty_pooled, drop_text)
    pred = predict_eps(model_patcher, adapter, noise.add_noise(x0, eps, t, acp), t, cond, feats, pooled, data.size)
    return noise.eps_loss(pred, eps.to(pred.device))


def _autocast(device, name: str):
    """The UNet's forward in the chosen precision; float32 (the default) runs as loaded."""
    dtype = COMPUTE_DTYPES[name]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train(model_patcher, adapter, data: TrainingSet, settings: TrainSettings, on_step=None) -> list[float]:
    """Train ``adapter`` (float32, trainable) on ``data`` with the frozen UNet of ``model_patcher``;
    returns the loss per step. ``on_step(step, loss)`` is called after each optimizer step; an
    interrupt (ComfyUI's Cancel) raises between steps. The model is left as it was."""
    import comfy.model_management as mm

    mm.load_models_gpu([model_patcher], force_full_load=True)
    dm = model_patcher.model.diffusion_model
    device = next(dm.parameters()).device
    adapter.to(device).train().requires_grad_(True)
    params = list(adapter.parameters())
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    acp = noise.alphas_cumprod()
    losses = []
    # each context puts back what it borrowed on any exit (out of memory, Cancel), innermost first
    with torch.inference_mode(False), torch.enable_grad(), trainable_weights(dm), frozen(dm), \
            checkpointed_blocks(dm, settings.gradient_checkpointing):
        data = data.normal_copy()  # the dataset node's tensors are inference tensors too
        for step in range(settings.steps):
            mm.throw_exception_if_processing_interrupted()
            index = torch.randint(0, len(data), (settings.batch_size,), generator=gen)
            with _autocast(device, settings.compute_dtype):
                loss = train_step(model_patcher, adapter, data, index, gen, settings, acp)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    adapter.eval().requires_grad_(False)
    return losses
