"""The block replace patch that runs Flux IP-Adapters inside ComfyUI's Flux (FAMILIES.md §3), through the
host's own patch points ``patches_replace["dit"][("double_block", i)]`` and ``[("single_block", i)]``: every
sampler, guider and scheduler works, and nothing of the model is replaced or changed.

XLabs (v1, v2), per double block i, as their pipeline and diffusers' ``FluxIPAdapterAttnProcessor``:

    q   = the block's image-stream query: modulated LayerNorm, the q third of img_attn.qkv, RMS q-norm
          (before RoPE), computed from the block's input, since the block changes ``img`` in place
    img = block(img, txt)[img] + λ · SDPA(q, K'_i, V'_i)        # after the block, not gated by its modulation

Only the q third of the block's qkv projection is computed again (a third of one matmul per block).
The block itself runs unchanged (or a foreign patch registered before ours), so λ = 0 and steps outside
the range leave the model's output bit for bit.

InstantX, per double block (the image stream's query) and per single block (the query of all its tokens,
[text; image]), as Shakker-Labs' node (tests/support/reference_instantx.py transcribes it):

    attn = attention(q, k, v) + λ · SDPA(q, RMS(K'_i), RMS(V'_i))   # before the output projection and gate

Its term goes inside the block, so the block's own attention call is wrapped through ComfyUI's
``optimized_attention_override`` (set in a copy of this call's transformer_options, chaining any override
already there); the rest of the block runs as ComfyUI wrote it. The hook counts its calls: a block that does
not call attention exactly once (a host change) is refused with an error instead of a misplaced term.

Like the UNet patch (unet_patch.py), one patch per block holds every image prompt applied to it, holds
nothing of a run (the RunState of run_state.py does) and is shared by the model's clones. The diffusion
model itself and the shape of the call reach the patch through a DIFFUSION_MODEL wrapper (the patch
signature carries neither): the block whose query is needed is the one of the model being run.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..files.flux_layout import DOUBLE
from ..prompt.blocks import V_ONLY
from .attention import attention_functions, scale_kv, select_rows
from .branch import BlockPatch, Branch, product
from .run_wrapper import add_wrapper_once, register
from .transformer_options import FLUX_CALL_KEY

OVERRIDE = "optimized_attention_override"  # ComfyUI's hook around every optimized_attention call

log = logging.getLogger("ipadapter")


class FluxBlockPatch(BlockPatch):
    """Replacement for one double or single block: the block (or a previous foreign patch) with the branches'
    terms added inside its attention (InstantX) and after it (XLabs)."""

    CALL_KEY, MODEL_NAME = FLUX_CALL_KEY, "a Flux"

    def __call__(self, args, extra):
        opts = args["transformer_options"]
        acting = self.acting(opts)
        if acting is None:
            return self._block(args, extra)
        run, active, call = acting
        kind, index = self.layer.key
        double = kind == DOUBLE
        block = (call.model.double_blocks if double else call.model.single_blocks)[index]
        # the query before the block runs: it changes img in place
        q = image_query(block, args["img"], args["vec"]) if double else stream_query(block, args["img"], args["vec"])
        text = args["txt"].shape[1] if double else args["img"].shape[1] - call.picture_tokens - call.ref_tokens
        terms = _Terms(self.layer, q, {**opts, "original_shape": call.shape}, run, run.roles(opts), call,
                       0 if double else text)
        inside = [a for a in active if a[0].prompt.config.ip_inside]
        after = [a for a in active if not a[0].prompt.config.ip_inside]
        if inside:
            hook = _AttentionHook(terms, inside, offset=text if double else 0, previous=opts.get(OVERRIDE))
            args = {**args, "transformer_options": {**opts, OVERRIDE: hook}}
        out = self._block(args, extra)
        if inside and hook.calls != 1:
            raise RuntimeError(
                f"IP-Adapter: ComfyUI's Flux {kind.replace('_', ' ')} {index} ran {hook.calls} attention calls where "
                "one was expected, so InstantX's term could not be placed. This ComfyUI version changed its Flux "
                "blocks; please report it (ComfyUI version, this message).")
        if after:
            out["img"] = terms.add(out["img"], after)
        return out


class _Terms:
    """Each branch's ``λ·mask·gate·SDPA(q, K', V')`` for one block call, over q's tokens: image tokens in a double
    block; text, picture and reference-latent tokens in a single block (``text`` leading tokens, which a
    region mask leaves out: they are no place in the picture)."""

    def __init__(self, layer, q, opts, run, roles, call, text):
        self.layer, self.q, self.opts, self.run = layer, q, opts, run
        self.roles, self.call, self.text = roles, call, text

    def add(self, out, branches):
        """``out`` [B, L, H·D] (L = q's tokens) plus every branch's term."""
        for branch, scale, plan in branches:
            out = self._add(out, branch, scale, plan)
        return out

    def _mask(self, branch, rows, dtype, device):
        m = self.run.mask(branch, self.opts, self.call.picture_tokens, rows, dtype, device)
        if m is None:
            return None
        parts = [m.new_zeros(m.shape[0], self.text, 1), m, m.new_ones(m.shape[0], self.call.ref_tokens, 1)]
        return torch.cat([p for p in parts if p.shape[1]], dim=1)

    def _add(self, out, branch, scale, plan):
        q, run, prompt = self.q, self.run, branch.prompt
        rows, heads = q.shape[0], q.shape[1]
        sets = tuple(prompt.layer_route(self.layer.key)[r] for r in self.roles)
        mask = self._mask(branch, rows, out.dtype, out.device)
        gate, lam = run.step_factors(branch, plan, self.opts.get("sigmas"), out.dtype)
        if prompt.scaling == V_ONLY:
            factor, lam_in = product(mask, gate, lam), None
        else:
            factor, lam_in, scale = product(mask, gate), (scale if lam is None else lam * scale), 1.0
        _, image_attention = attention_functions()
        ip_k, ip_v = run.kv(branch, self.layer, q.device, q.dtype, prompt.scaling, lam_in)
        if prompt.animated():
            tracks = run.frame_tracks(branch, sets, self.opts, rows, q.dtype, q.device)
        else:
            tracks = [(run.row_index(sets, rows, q.device), None)]
        for index, w in tracks:
            k, v = select_rows(ip_k, index, rows), select_rows(ip_v, index, rows)
            f = factor
            if w is not None and prompt.scaling != V_ONLY:
                k, v = scale_kv(k, v, prompt.scaling, w, penalty=False)
            elif w is not None:
                f = product(factor, w)
            k, v = (t.view(rows, t.shape[1], heads, -1).transpose(1, 2) for t in (k, v))
            o = image_attention(q, k, v, heads, skip_reshape=True, transformer_options=self.opts)
            out = torch.add(out, o, alpha=scale) if f is None else torch.addcmul(out, o, f, value=scale)
        return out


class _AttentionHook:
    """An ``optimized_attention_override`` for one block call: the block's own attention (or a previous
    override's), then the InstantX terms added to its output from token ``offset`` on, before the block's
    output projection and gate. Counts its calls: a block that does not call attention exactly once is a
    host change the patch refuses to guess about."""

    def __init__(self, terms: _Terms, branches, offset: int, previous=None):
        self.terms, self.branches, self.offset, self.previous = terms, branches, offset, previous
        self.calls = 0

    def __call__(self, func, *args, **kwargs):
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        self.calls += 1
        if self.calls == 1:
            out[:, self.offset:] = self.terms.add(out[:, self.offset:], self.branches)
        return out


def image_query(block, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """A DoubleStreamBlock's image-stream attention query as the block makes it, before RoPE:
    [B, heads, L, head_dim]. Only the q third of ``img_attn.qkv`` is computed; its weight comes through
    ComfyUI's cast (offloaded, low-VRAM, LoRA-patched and fp8 weights alike)."""
    from comfy.ldm.flux.layers import apply_mod  # noqa: PLC0415 - host only

    mod1, _ = block.img_mod(vec)
    x = apply_mod(block.img_norm1(img), 1 + mod1.scale, mod1.shift)
    return _query(block.img_attn.qkv, x, x.shape[-1], block.num_heads, block.img_attn.norm.query_norm)


def _query(linear, x, width, heads, norm):
    """The first ``width`` outputs of ``linear`` (its q rows) as heads, RMS-normed as the block norms them."""
    import comfy.ops  # noqa: PLC0415 - host only

    weight, bias = comfy.ops.cast_bias_weight(linear, x)
    if type(weight) in (torch.Tensor, torch.nn.Parameter):  # not a quantized tensor subclass
        q = F.linear(x, weight[:width], None if bias is None else bias[:width])
    else:  # a quantized tensor type that cannot be sliced: the whole projection, its first columns
        q = linear(x)[..., :width]
    q = q.view(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
    return norm(q).to(q.dtype)


def stream_query(block, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """A SingleStreamBlock's attention query over all its tokens ([text; image]) as the block makes it, before
    RoPE: [B, heads, L, head_dim]; only the q rows of ``linear1`` are computed."""
    from comfy.ldm.flux.layers import apply_mod  # noqa: PLC0415 - host only

    mod, _ = block.modulation(vec)
    return _query(block.linear1, apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift), block.hidden_size,
                  block.num_heads, block.norm.query_norm)


class FluxCall:
    """What one Flux model call tells the patches: the model being run, the latent's shape, and how many image
    tokens are the picture's (2x2 patches) and how many reference latents' (Kontext), which follow them."""

    __slots__ = ("model", "shape", "picture_tokens", "ref_tokens")

    def __init__(self, model, x: torch.Tensor, ref_latents=None):
        self.model = model
        self.shape = list(x.shape)
        self.picture_tokens = _tokens(x, model.patch_size)
        self.ref_tokens = sum(_tokens(r, model.patch_size) for r in ref_latents or ())


def _tokens(x, p) -> int:
    return ((x.shape[-2] + p // 2) // p) * ((x.shape[-1] + p // 2) // p)


def flux_call_wrapper(executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                      transformer_options=None, **kwargs):
    """DIFFUSION_MODEL wrapper (comfy.ldm.flux.model.Flux._forward's arguments): hands the patches the
    model and the call's shape in a copy of transformer_options (the caller's dict is not changed)."""
    opts = dict(transformer_options or {})
    opts[FLUX_CALL_KEY] = FluxCall(executor.class_obj, x, ref_latents)
    return executor(x, timestep, context, y, guidance, ref_latents, control, opts, **kwargs)


def apply_flux_prompt(model, branch: Branch):
    """A clone of a Flux ``model`` with ``branch`` added to the blocks its adapter acts in."""
    import comfy.patcher_extension as pe  # noqa: PLC0415 - host only

    out = model.clone()
    register(out)
    add_wrapper_once(out, pe.WrappersMP.DIFFUSION_MODEL, flux_call_wrapper)
    existing = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for layer in branch.adapter.config.layers:
        scale = branch.prompt.layer_scale(layer.key)
        if scale == 0:
            continue
        prev = existing.get(layer.key)
        patch = prev.with_branch(branch, scale) if isinstance(prev, FluxBlockPatch) \
            else FluxBlockPatch(layer, ((branch, scale),), previous=prev)
        out.set_model_patch_replace(patch, "dit", *layer.key)
    return out
