#!/usr/bin/env python3
"""Train an IP-Adapter (SD1.5 / SDXL; linear, plus or full-face) with accelerate, on 1 GPU, many
GPUs or many nodes. Only the adapter learns: the UNet, VAE, text and image encoders are frozen,
the optimizer holds exactly the adapter's parameters, and checkpoints hold only the adapter, its
optimizer / LR-scheduler state and the RNG states (never the UNet).

    python scripts/train_ipadapter.py --pretrained MODEL_DIR --image-encoder CLIP_VISION_DIR \\
        --data DATA --variant plus --output-dir out --max-steps 100000 --checkpoint-every 2000
    accelerate launch --multi_gpu --num_processes 8 scripts/train_ipadapter.py ...   (same flags)

The method comes from the host-free core (ip_adapter_core/training): the adapter's
initialisation, decoupled attention on the diffusers UNet, DDPM noising, ε loss, the reference's
image / text / both drop rule and the file format. Data order and every sample's randomness
depend only on (--seed, the sample's position in the data stream), so the result does not depend
on the number of processes, and --resume-from continues a run exactly (scripts/train_data.py).
docs/training.md (Training at scale) has the data format and the checkpoint layout."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PKG = "ipadapter_ext"  # the name tests/package_alias.py gives the repo (its folder name has a '-')
VARIANTS = {"linear": "linear", "plus": "resampler", "full-face": "mlp"}
log = logging.getLogger("train_ipadapter")


def import_core():
    """The repo's host-free core as ``ipadapter_ext.ip_adapter_core``, without running the repo's
    ``__init__`` (it registers ComfyUI nodes) and without putting the repo root on sys.path."""
    if PKG not in sys.modules:
        pkg = types.ModuleType(PKG)
        pkg.__path__ = [str(REPO)]
        pkg.__file__ = str(REPO / "__init__.py")
        sys.modules[PKG] = pkg
    return importlib.import_module(f"{PKG}.ip_adapter_core")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", help="diffusers model folder: unet, vae, text_encoder(_2), tokenizer(_2), "
                     "scheduler")
    src.add_argument("--tiny-random", choices=("sd15", "sdxl"),
                     help="tiny random models of the real structure (tests, CI)")
    p.add_argument("--image-encoder", help="CLIP vision folder (ViT-H/14 or ViT-bigG/14); not with --tiny-random")
    p.add_argument("--data", required=True, help="folder of images with same-name .txt captions, or a JSONL file "
                   'of {"image": path relative to the file, "text": caption}')
    p.add_argument("--variant", choices=tuple(VARIANTS), help="new adapter: linear (4 tokens, default), "
                   "plus (Resampler, 16), full-face (MLP, 257); with --resume-adapter: taken from the file")
    p.add_argument("--num-tokens", type=int, help="image tokens of a new linear / plus adapter (default 4 / 16)")
    p.add_argument("--resume-adapter", help="an adapter file (.safetensors / .bin) to fine-tune")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resolution", type=int, help="training resolution (default 512 SD1.5, 1024 SDXL, 64 tiny)")
    p.add_argument("--train-batch-size", type=int, default=8, help="per process")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lr-warmup-steps", type=int, default=0, help="linear warm-up, then constant (reference: constant)")
    p.add_argument("--max-steps", type=int, required=True, help="optimizer steps in all (a resumed run counts on)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="write checkpoint-<step>/ every N steps and at the end")
    p.add_argument("--resume-from", help="a checkpoint-<step> folder, or 'latest' (the newest in --output-dir)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                   help="default: accelerate's config / launch flag")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-drop", type=float, default=0.05)
    p.add_argument("--text-drop", type=float, default=0.05)
    p.add_argument("--both-drop", type=float, default=0.05)
    p.add_argument("--save-dtype", choices=("fp16", "fp32"), default="fp16", help="of the adapter files")
    p.add_argument("--save-format", choices=("safetensors", "bin"), default="safetensors",
                   help="flat .safetensors (default) or the reference's nested .bin")
    p.add_argument("--save-every-rank", action="store_true", help="each rank also writes adapter-rank<r>.<format>")
    p.add_argument("--dataloader-workers", type=int, default=4)
    p.add_argument("--gradient-checkpointing", action="store_true", help="UNet activation checkpointing (less memory)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (also with torchrun: gloo)")
    args = p.parse_args(argv)
    if args.tiny_random and args.image_encoder:
        p.error("--image-encoder is not used with --tiny-random")
    if args.resume_adapter and args.num_tokens:
        p.error("--num-tokens: a resumed adapter keeps its own")
    return args


class AdapterOnly(torch.nn.Module):
    """What accelerate prepares, wraps in DDP and checkpoints: the adapter alone. The UNet (with
    the adapter's layers installed in its attn2) is held outside the module tree, so it is not
    in state_dict(), not broadcast, not synchronised and not saved."""

    def __init__(self, adapter, unet, predict_noise):
        super().__init__()
        self.adapter = adapter
        self.__dict__["_unet"], self.__dict__["_predict"] = unet, predict_noise

    def forward(self, noisy, timesteps, text_cond, features, added_cond_kwargs=None):
        return self._predict(self._unet, self.adapter, noisy, timesteps, text_cond, features, added_cond_kwargs)


def encode_text(models, captions, device):
    """SD1.5: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states
    concatenated, and encoder 2's projected pooled output."""
    conds, pooled = [], None
    sdxl = len(models["text_encoders"]) == 2
    for tok, enc in zip(models["tokenizers"], models["text_encoders"]):
        ids = tok(captions, max_length=tok.model_max_length, padding="max_length", truncation=True,
                  return_tensors="pt").input_ids.to(device)
        out = enc(ids, output_hidden_states=sdxl)
        conds.append(out.hidden_states[-2] if sdxl else out.last_hidden_state)
        pooled = getattr(out, "text_embeds", None)
    return torch.cat(conds, dim=-1), pooled


def encode_image(encoder, pixels, feature, image_embeds_name):
    if feature == image_embeds_name:
        return encoder(pixels).image_embeds
    return encoder(pixels, output_hidden_states=True).hidden_states[-2]


def build_adapter(args, unet, family, image_encoder):
    from ipadapter_ext.ip_adapter_core.files.adapter import load_adapter
    from ipadapter_ext.ip_adapter_core.files.config import encoder_by_widths
    from ipadapter_ext.ip_adapter_core.training import adapter_init

    channels = unet.config.block_out_channels[0]
    encoder = encoder_by_widths(image_encoder.config.hidden_size, image_encoder.config.projection_dim)
    if encoder is None:
        widths = f"{image_encoder.config.hidden_size}/{image_encoder.config.projection_dim}"
        raise SystemExit(f"--image-encoder: widths {widths} are neither ViT-H/14 (1280/1024) nor ViT-bigG/14 "
                         "(1664/1280)")
    if args.resume_adapter:
        model = load_adapter(args.resume_adapter, dtype=torch.float32).model
        cfg = model.config
        want = VARIANTS.get(args.variant, cfg.projection)
        if (cfg.family, cfg.model_channels, cfg.encoder, cfg.projection) != (family, channels, encoder, want):
            raise SystemExit(f"--resume-adapter is {cfg.name}; the models are {family}, {channels} base channels, "
                             f"{encoder}" + (f", --variant {args.variant}" if args.variant else ""))
        return model.train().requires_grad_(True)
    cfg = adapter_init.new_config(family, VARIANTS[args.variant or "linear"], encoder, channels, args.num_tokens)
    return adapter_init.new_adapter(cfg, adapter_init.diffusers_text_kv(unet), seed=args.seed)


def latest_checkpoint(output_dir: Path):
    found = sorted(output_dir.glob("checkpoint-*/train_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    if not found:
        raise SystemExit(f"--resume-from latest: no checkpoint-<step> folder in {output_dir}")
    return found[-1].parent


def main(argv=None):
    args = parse_args(argv)
    import_core()
    import train_data
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from ipadapter_ext.ip_adapter_core.files.config import IMAGE_EMBEDS
    from ipadapter_ext.ip_adapter_core.training import diffusers_unet, drop, noise, save

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    drop.check_rates(args.image_drop, args.text_drop, args.both_drop)
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = args.cpu or (world_env > 1 and not torch.cuda.is_available())
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=cpu)
    world, rank, device, main_proc = (accelerator.num_processes, accelerator.process_index, accelerator.device,
                                      accelerator.is_main_process)
    if world != world_env:
        raise SystemExit(f"WORLD_SIZE is {world_env} but accelerate runs {world} process(es); on CPUs pass --cpu")
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)

    resolution = args.resolution or (64 if args.tiny_random else None)
    models = (train_data.tiny_models(args.tiny_random, resolution) if args.tiny_random
              else train_data.pretrained_models(args.pretrained, args.image_encoder))
    unet, vae, image_encoder = models["unet"], models["vae"], models["image_encoder"]
    family = {768: "sd15", 2048: "sdxl"}.get(unet.config.cross_attention_dim)
    if family is None or (family == "sdxl") != (len(models["text_encoders"]) == 2):
        raise SystemExit(f"the UNet (cross_attention_dim {unet.config.cross_attention_dim}) is neither SD1.5 nor SDXL")
    resolution = resolution or (512 if family == "sd15" else 1024)
    frozen = [unet, vae, image_encoder, *models["text_encoders"]]
    for m in frozen:
        m.requires_grad_(False).eval()

    adapter = build_adapter(args, unet, family, image_encoder)
    cfg = adapter.config
    diffusers_unet.install_processors(unet, adapter)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    wd = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for m in (unet, image_encoder, *models["text_encoders"]):
        m.to(device) if wd == torch.float32 else m.to(device, wd)
    vae.to(device)  # float32: SDXL's VAE overflows in fp16 (the reference keeps it fp32)
    model = AdapterOnly(adapter, unet, diffusers_unet.predict_noise).to(device)

    optimizer = torch.optim.AdamW(adapter.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in adapter.parameters()}
    assert not [n for m in frozen for n, p in m.named_parameters() if p.requires_grad], "a frozen model would train"
    warmup = args.lr_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    # Only the adapter-only module and its optimizer are prepared; the scheduler is registered for
    # checkpointing, not prepared (a prepared one steps once per process: world-size dependent).
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    n_train = sum(p.numel() for p in adapter.parameters())
    if main_proc:
        log.info("adapter %s: %d trainable parameters (the optimizer's); frozen %d; %d process(es) on %s, "
                 "weights %s", cfg.name, n_train, sum(p.numel() for m in frozen for p in m.parameters()), world,
                 device, wd)

    step, samples = 0, 0
    if args.resume_from:
        ckpt = latest_checkpoint(out) if args.resume_from == "latest" else Path(args.resume_from)
        state = json.loads((ckpt / "train_state.json").read_text())
        if state["adapter"] != cfg.name:
            raise SystemExit(f"--resume-from {ckpt} trains {state['adapter']}; this run builds {cfg.name}")
        accelerator.load_state(str(ckpt))
        step, samples = state["step"], state["samples"]
        if main_proc:
            log.info("resumed %s at step %d (%d samples seen)", ckpt, step, samples)

    B, A = args.train_batch_size, args.gradient_accumulation_steps
    per_step = B * world * A
    items = train_data.load_items(args.data)
    dataset = train_data.StreamDataset(items, resolution, models["clip_processor"], args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=train_data.StreamBatches(samples, max(0, args.max_steps - step) * A, B, world, rank),
        collate_fn=train_data.collate, num_workers=args.dataloader_workers)
    betas = train_data.scheduler_betas(args.pretrained)
    acp = noise.alphas_cumprod(betas["steps"], betas["beta_start"], betas["beta_end"]).to(device)
    scale, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
    rates = (args.image_drop, args.text_drop, args.both_drop)
    with torch.no_grad():
        empty_cond, empty_pooled = encode_text(models, [""], device)
    zero_features = None
    save_dtype = torch.float16 if args.save_dtype == "fp16" else torch.float32

    def loss_of(batch):
        nonlocal zero_features
        gens = [train_data.sample_generator(args.seed, p) for p in batch["position"]]
        masks = [drop.draw(1, g, *rates) for g in gens]  # the per-sample draws, in a fixed order
        drop_image, drop_text = torch.cat([m[0] for m in masks]), torch.cat([m[1] for m in masks])
        t = torch.cat([noise.sample_timesteps(1, g, betas["steps"]) for g in gens]).to(device)
        with torch.no_grad():
            dist = vae.encode(batch["pixels"].to(device, torch.float32)).latent_dist
            shape = dist.mean.shape[1:]
            draw_vae = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
            eps = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, wd)
            latents = ((dist.mean + dist.std * draw_vae - shift) * scale).to(wd)
            noisy = noise.add_noise(latents, eps, t, acp)
            cond, pooled = encode_text(models, batch["text"], device)
            cond = drop.apply_drop(cond, empty_cond, drop_text)
            clip = batch["clip"].to(device, wd)
            if zero_features is None:  # the drop value: zeros (linear), else the zero image's features
                zero_features = (
                    torch.zeros(1, cfg.feature_dim, device=device, dtype=wd) if cfg.feature == IMAGE_EMBEDS
                    else encode_image(image_encoder, torch.zeros_like(clip[:1]), cfg.feature, IMAGE_EMBEDS))
            features = drop.apply_drop(encode_image(image_encoder, clip, cfg.feature, IMAGE_EMBEDS), zero_features,
                                       drop_image)
            added = None
            if family == "sdxl":
                added = {"text_embeds": drop.apply_drop(pooled, empty_pooled, drop_text),
                         "time_ids": batch["time_ids"].to(device, wd)}
        return noise.eps_loss(model(noisy, t, cond, features, added), eps)

    def write_adapter(path):
        save.save_adapter(adapter, path, dtype=save_dtype)

    def checkpoint(at):
        folder = out / f"checkpoint-{at}"
        accelerator.save_state(str(folder))  # adapter (model.safetensors), optimizer, scheduler, RNG, scaler
        if main_proc:
            write_adapter(folder / f"adapter-{at}.{args.save_format}")
            (folder / "train_state.json").write_text(json.dumps(
                {"step": at, "samples": samples, "adapter": cfg.name, "world_size": world, "per_step": per_step}))
        accelerator.wait_for_everyone()

    log_file = open(out / "loss.jsonl", "a", encoding="utf-8") if main_proc else None
    bar = tqdm(total=args.max_steps, initial=step, disable=not main_proc, desc="train", unit="step")
    batches, t0 = iter(loader), time.perf_counter()
    while step < args.max_steps:
        total = torch.zeros((), device=device)
        for micro in range(A):
            with accelerator.no_sync(model) if micro < A - 1 else nullcontext():
                loss = loss_of(next(batches))
                accelerator.backward(loss / A)
            total += loss.detach().float()
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step, samples = step + 1, samples + per_step
        mean_loss = accelerator.gather(total.reshape(1)).mean().item() / A
        if main_proc:
            log_file.write(json.dumps({"step": step, "loss": mean_loss, "lr": lr, "samples": samples,
                                       "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
        if args.checkpoint_every and (step % args.checkpoint_every == 0 or step == args.max_steps):
            checkpoint(step)
    bar.close()
    accelerator.wait_for_everyone()
    if main_proc:
        log_file.close()
        write_adapter(out / f"adapter.{args.save_format}")
        log.info("wrote %s (%s, %s)", out / f"adapter.{args.save_format}", cfg.name, args.save_dtype)
    if args.save_every_rank:
        write_adapter(out / f"adapter-rank{rank}.{args.save_format}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
