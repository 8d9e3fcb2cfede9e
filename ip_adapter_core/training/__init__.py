"""Training an IP-Adapter, host-free: the pieces every trainer (the ComfyUI nodes, the
accelerate script, the tests) shares, so none of them re-derives the method.

    adapter_init.py   a new adapter for a family / projection / UNet width, initialised as the
                      reference does (K'/V' = the layer's text K/V; Resampler latents randn/√dim)
    drop.py           the reference's drop rule: one uniform draw per sample, image / text / both
    noise.py          DDPM forward noising (SD's scaled-linear betas) and the ε-prediction MSE
    save.py           the flat .safetensors every loader reads (or the nested .bin), fp16 by default
    diffusers_unet.py decoupled attention processors for a diffusers UNet (the script's path)

Only the adapter learns: nothing here holds or changes UNet weights.
"""
