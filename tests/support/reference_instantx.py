"""InstantX's Flux IP-Adapter as its ComfyUI node computes it, transcribed for the tests (not used by the
extension): Shakker-Labs/ComfyUI-IPAdapter-Flux at eef22b6 (2025-06-22), ``ipadapter_flux.py`` (MLPProjModel),
``attention_processor.py`` (IPAFluxAttnProcessor2_0) and ``flux/layers.py`` (DoubleStreamBlockIPA,
SingleStreamBlockIPA). InstantX's model is not in diffusers, so this is the reference.

Their node replaces the model's blocks with these (object patches of forward_orig and every block); here the
same forwards run as ``patches_replace["dit"]`` functions that ignore the original block, on the host block's own
submodules and ComfyUI's own Flux attention (RoPE included), as their ``flux/math.py`` copy does.

    tokens = LayerNorm(Linear(2304 -> T·C)(GELU(Linear(1152 -> 2304)(pooled)))).reshape(B, T, C)
    ip     = scale · SDPA(q, RMSNorm_128(to_k_ip(tokens)), RMSNorm_128(to_v_ip(tokens)))   # q: pre-RoPE, normed
    double block: img_attn += ip  (before img_attn.proj and its gate); single block: attn += ip (before linear2)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mlp_proj(sd: dict, pooled: torch.Tensor, tokens: int) -> torch.Tensor:
    """MLPProjModel.forward: proj (Linear, GELU, Linear), reshape, LayerNorm."""
    x = F.linear(pooled, sd["image_proj.proj.0.weight"], sd["image_proj.proj.0.bias"])
    x = F.linear(F.gelu(x), sd["image_proj.proj.2.weight"], sd["image_proj.proj.2.bias"])
    width = sd["image_proj.norm.weight"].shape[0]
    return F.layer_norm(x.reshape(-1, tokens, width), (width,), sd["image_proj.norm.weight"],
                        sd["image_proj.norm.bias"])


def _rms(x, eps=1e-5):
    """diffusers' RMSNorm(128, eps=1e-5, elementwise_affine=False)."""
    dtype = x.dtype
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(variance + eps)).to(dtype)


def ip_processor(sd: dict, index: int, heads: int, query, image_emb, scale: float):
    """IPAFluxAttnProcessor2_0.__call__ (always inside its timestep range here)."""
    k = F.linear(image_emb, sd[f"ip_adapter.{index}.to_k_ip.weight"])
    v = F.linear(image_emb, sd[f"ip_adapter.{index}.to_v_ip.weight"])
    b, t, _ = k.shape
    k = _rms(k.reshape(b, t, heads, -1).transpose(1, 2))
    v = _rms(v.reshape(b, t, heads, -1).transpose(1, 2))
    out = F.scaled_dot_product_attention(query.to(image_emb.dtype), k, v, dropout_p=0.0, is_causal=False)
    return scale * out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def double_block(block, sd, index, image_emb, scale, img, txt, vec, pe, attn_mask=None):
    """DoubleStreamBlockIPA.forward (flipped_img_txt False, as Flux.1)."""
    from comfy.ldm.flux.math import attention

    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)
    img_modulated = (1 + img_mod1.scale) * block.img_norm1(img) + img_mod1.shift
    img_qkv = block.img_attn.qkv(img_modulated)
    img_q, img_k, img_v = img_qkv.view(img_qkv.shape[0], img_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    txt_modulated = (1 + txt_mod1.scale) * block.txt_norm1(txt) + txt_mod1.shift
    txt_qkv = block.txt_attn.qkv(txt_modulated)
    txt_q, txt_k, txt_v = txt_qkv.view(txt_qkv.shape[0], txt_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)
    attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                     torch.cat((txt_v, img_v), dim=2), pe=pe, mask=attn_mask)
    txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
    img_attn = img_attn + ip_processor(sd, index, block.num_heads, img_q, image_emb, scale)
    img = img + img_mod1.gate * block.img_attn.proj(img_attn)
    img = img + img_mod2.gate * block.img_mlp((1 + img_mod2.scale) * block.img_norm2(img) + img_mod2.shift)
    txt = txt + txt_mod1.gate * block.txt_attn.proj(txt_attn)
    txt = txt + txt_mod2.gate * block.txt_mlp((1 + txt_mod2.scale) * block.txt_norm2(txt) + txt_mod2.shift)
    return img, txt


def single_block(block, sd, index, image_emb, scale, x, vec, pe, attn_mask=None):
    """SingleStreamBlockIPA.forward."""
    from comfy.ldm.flux.math import attention

    mod, _ = block.modulation(vec)
    x_mod = (1 + mod.scale) * block.pre_norm(x) + mod.shift
    qkv, mlp = torch.split(block.linear1(x_mod), [3 * block.hidden_size, block.mlp_hidden_dim], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k, v)
    attn = attention(q, k, v, pe=pe, mask=attn_mask)
    attn = attn + ip_processor(sd, index, block.num_heads, q, image_emb, scale)
    output = block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))
    return x + mod.gate * output


def patched(model, sd: dict, pooled: torch.Tensor, tokens: int, scale: float):
    """A clone of a ComfyUI Flux ModelPatcher whose every block runs the transcription above."""
    dm = model.model.diffusion_model
    image_emb = mlp_proj(sd, pooled, tokens)
    n_double = len(dm.double_blocks)
    out = model.clone()
    for i, block in enumerate(dm.double_blocks):
        def run(args, extra, block=block, i=i):
            img, txt = double_block(block, sd, i, image_emb, scale, args["img"], args["txt"], args["vec"],
                                    args["pe"], args.get("attn_mask"))
            return {"img": img, "txt": txt}
        out.set_model_patch_replace(run, "dit", "double_block", i)
    for i, block in enumerate(dm.single_blocks):
        def run(args, extra, block=block, i=i):
            return {"img": single_block(block, sd, n_double + i, image_emb, scale, args["img"], args["vec"],
                                        args["pe"], args.get("attn_mask"))}
        out.set_model_patch_replace(run, "dit", "single_block", i)
    return out
