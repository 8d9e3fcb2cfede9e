"""The joint-block replace patch that runs the SD3.5-Large IP-Adapter (InstantX, FAMILIES.md §4) inside ComfyUI's
MMDiT, through the host's own patch point ``patches_replace["dit"][("double_block", i)]``.

The adapter's term, as diffusers' ``SD3IPAdapterJointAttnProcessor2_0`` computes it, per joint block i:

    tokens, t_emb = image_proj(SigLIP penultimate states, timestep)        # once per model evaluation
    ip            = norm_ip_i(tokens, t_emb)                                # LayerNorm shifted/scaled by t_emb
    K', V'        = norm_ip_k_i(to_k_ip_i(ip)), to_v_ip_i(ip)
    out_ip        = SDPA(norm_q_i(q), [norm_k_i(k); K'], [v; V'])          # q, k, v: the block's raw image q/k/v
    x_attn        = joint_attention(...)[image tokens] + λ · out_ip         # before the block's output projection

q and k are the raw projections, before the block's own RMS norms (ln_q / ln_k), so the term needs what the
block computes half-way through its attention. The block is therefore run again here from ComfyUI's own
pieces (its modules, ``modulate``, ``split_qkv`` and the ``optimized_attention`` mmdit.py calls), in the order
mmdit.py's ``_block_mixing`` runs them; tests/test_host_sd3.py pins this to the host's own block bit for bit.
Where no image prompt acts (λ = 0, outside the sampling range) the host's block runs instead.

The tokens change every step (the Resampler reads the timestep), so they are made once per model evaluation
by the first block that needs them and kept in the call's SD3Call for the other blocks; an APPLY_MODEL wrapper
hands the patches the call's timestep (as the host computes it from sigma), the MMDiT and the latent's shape.
"""
from __future__ import annotations

import logging

import torch

from ..errors import IPAdapterError
from ..prompt.blocks import V_ONLY
from .attention import attention_functions
from .branch import BlockPatch, Branch, product
from .run_wrapper import add_wrapper_once, register
from .transformer_options import SD3_CALL_KEY

log = logging.getLogger("ipadapter")


class SD3Call:
    """What one MMDiT evaluation tells the patches: the model, the latent's shape, the timestep the MMDiT reads,
    and the image tokens made for it (per branch, on first use)."""

    __slots__ = ("model", "shape", "timestep", "picture_tokens", "tokens")

    def __init__(self, model, x: torch.Tensor, timestep: torch.Tensor):
        self.model = model
        self.shape = list(x.shape)
        self.timestep = timestep
        p = model.patch_size
        self.picture_tokens = ((x.shape[-2] + p - 1) // p) * ((x.shape[-1] + p - 1) // p)
        self.tokens: dict = {}

    def tokens_of(self, branch: Branch, device, dtype):
        """(tokens [2, T, C] of the (image, negative) features, time embedding [2, t_dim]) at this call's timestep."""
        hit = self.tokens.get(branch)
        if hit is None:
            # ComfyUI's samplers call the model with one timestep for every row (calc_cond_batch): the first row's
            # is taken, on the device (comparing the rows would make the host wait for the GPU once per step)
            t = self.timestep
            proj = branch.adapter.model.image_proj
            weight = next(proj.parameters())
            prompt = branch.prompt
            feats = torch.cat([prompt.positive, prompt.negative]).to(device=weight.device, dtype=torch.float32)
            with torch.no_grad():
                tokens, temb = proj(feats, t.flatten()[:1].to(weight.device).expand(feats.shape[0]))
            hit = self.tokens[branch] = (tokens.to(device=device, dtype=dtype), temb.to(device=device, dtype=dtype))
        return hit


def sd3_call_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                     **kwargs):
    """APPLY_MODEL wrapper (comfy.model_base.BaseModel._apply_model's arguments): hands the patches the MMDiT, the
    latent's shape and the timestep it will read, in a copy of transformer_options (the caller's is not changed)."""
    base = executor.class_obj
    opts = dict(transformer_options or {})
    opts[SD3_CALL_KEY] = SD3Call(base.diffusion_model, x, base.model_sampling.timestep(t).float())
    return executor(x, t, c_concat, c_crossattn, control, opts, **kwargs)


class SD3BlockPatch(BlockPatch):
    """Replacement for one joint block: the host's block where no image prompt acts, else the block run from its
    own pieces with every active branch's ``λ·out_ip`` added to its image attention output."""

    CALL_KEY, MODEL_NAME = SD3_CALL_KEY, "an SD3"

    def __call__(self, args, extra):
        opts = args["transformer_options"]
        acting = self.acting(opts)
        if acting is None:
            return self._block(args, extra)
        run, active, call = acting
        if self.previous is not None:
            raise IPAdapterError(
                f"IP-Adapter (SD3.5): another extension also replaces joint block {self.layer.key[1]}; the SD3.5 "
                "adapter runs the block itself and cannot run over it. Apply it without that extension's patch.")
        block = call.model.joint_blocks[self.layer.key[1]]
        term = _Term(self.layer, active, run, {**opts, "original_shape": call.shape}, call)
        txt, img = joint_block(block, args["txt"], args["img"], args["vec"], opts, term)
        return {"txt": txt, "img": img}


def joint_block(block, context, x, c, opts, term=None):
    """ComfyUI's JointBlock (mmdit.py ``_block_mixing``) run from its own pieces, with ``term(q, k, v)`` (the raw
    image q, k, v [B, L, heads, head_dim]) added to the image attention output before the output projection.
    Without ``term`` it equals the host's block bit for bit (tests/test_host_sd3.py)."""
    from comfy.ldm.modules.diffusionmodules import mmdit  # noqa: PLC0415 - host only

    cb, xb = block.context_block, block.x_block
    if xb.x_block_self_attn or xb.scale_mod_only or xb.pre_only:
        raise IPAdapterError("IP-Adapter (SD3.5): this MMDiT's joint blocks are not SD3.5 Large's (MMDiT-X self-"
                             "attention or scale-only modulation); the adapter is for SD3.5 Large.")
    context_qkv, context_rest = cb.pre_attention(context, c)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = xb.adaLN_modulation(c).chunk(6, dim=1)
    qkv = xb.attn.qkv(mmdit.modulate(xb.norm1(x), shift_msa, scale_msa))
    q, k, v = mmdit.split_qkv(qkv, xb.attn.head_dim)
    qn = xb.attn.ln_q(q).reshape(q.shape[0], q.shape[1], -1)
    kn = xb.attn.ln_k(k).reshape(q.shape[0], q.shape[1], -1)
    n = context_qkv[0].shape[1]
    attn = mmdit.optimized_attention(torch.cat((context_qkv[0], qn), dim=1), torch.cat((context_qkv[1], kn), dim=1),
                                     torch.cat((context_qkv[2], v), dim=1), heads=xb.attn.num_heads,
                                     transformer_options=opts)
    context_attn, x_attn = attn[:, :n], attn[:, n:]
    context = None if cb.pre_only else cb.post_attention(context_attn, *context_rest)
    if term is not None:
        x_attn = term(x_attn, q, k, v)
    return context, xb.post_attention(x_attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp)


class _Term:
    """Every active branch's ``λ·mask·gate·out_ip`` for one joint block call."""

    def __init__(self, layer, branches, run, opts, call):
        self.layer, self.branches, self.run, self.opts, self.call = layer, branches, run, opts, call

    def __call__(self, x_attn, q, k, v):
        for branch, scale, plan in self.branches:
            x_attn = self._add(x_attn, q, k, v, branch, scale, plan)
        return x_attn

    def _add(self, out, q, k, v, branch, scale, plan):
        run, opts, rows, heads = self.run, self.opts, q.shape[0], q.shape[2]
        ipl = branch.adapter.model.layer(self.layer.file_index)
        tokens, temb = self.call.tokens_of(branch, q.device, q.dtype)
        ip = ipl.norm_ip(tokens, temb)
        ip_k = ipl.norm_ip_k(ipl.to_k_ip(ip).unflatten(-1, (heads, -1))).transpose(1, 2)   # [2, heads, T, D]
        ip_v = ipl.to_v_ip(ip).unflatten(-1, (heads, -1)).transpose(1, 2)
        sets = tuple(branch.prompt.layer_route(self.layer.key)[r] for r in run.roles(opts))
        index = run.row_index(sets, rows, q.device)
        ip_k, ip_v = ip_k.index_select(0, index), ip_v.index_select(0, index)   # the set of each row
        query = ipl.norm_q(q.transpose(1, 2))
        keys = torch.cat([ipl.norm_k(k.transpose(1, 2)), ip_k], dim=2)
        values = torch.cat([v.transpose(1, 2), ip_v], dim=2)
        attention, _ = attention_functions()
        o = attention(query, keys, values, heads, skip_reshape=True, transformer_options=opts)
        mask = run.mask(branch, opts, self.call.picture_tokens, rows, out.dtype, out.device)
        gate, lam = run.step_factors(branch, plan, opts.get("sigmas"), out.dtype)
        f = product(mask, gate, lam)
        return torch.add(out, o, alpha=scale) if f is None else torch.addcmul(out, o, f, value=scale)


def apply_sd3_prompt(model, branch: Branch):
    """A clone of an SD3.5 Large ``model`` with ``branch`` added to every joint block its λ does not leave out."""
    import comfy.patcher_extension as pe  # noqa: PLC0415 - host only

    prompt = branch.prompt
    if prompt.animated():
        raise IPAdapterError("IP-Adapter (SD3.5): one token set per frame is not supported on SD3.5; project the "
                             "images together (combine: concat or a mix).")
    if prompt.scaling != V_ONLY:
        raise IPAdapterError("embeds_scaling: on SD3.5 the image prompt's attention also reads the picture's own keys, "
                             "so λ can only weigh its output: use 'V only'.")
    out = model.clone()
    register(out)
    add_wrapper_once(out, pe.WrappersMP.APPLY_MODEL, sd3_call_wrapper)
    existing = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for layer in branch.adapter.config.layers:
        scale = prompt.layer_scale(layer.key)
        if scale == 0:
            continue
        prev = existing.get(layer.key)
        patch = prev.with_branch(branch, scale) if isinstance(prev, SD3BlockPatch) \
            else SD3BlockPatch(layer, ((branch, scale),), previous=prev)
        out.set_model_patch_replace(patch, "dit", *layer.key)
    return out
