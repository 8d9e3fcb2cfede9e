"""diffusers UNet configs of the real SD1.5 and SDXL structures (widths scalable for speed)."""
from __future__ import annotations


def sd15_config(scale: int = 1) -> dict:
    """SD1.5's UNet; ``scale`` > 1 divides the channels (same blocks, same attn2 layers)."""
    ch = [c // scale for c in (320, 640, 1280, 1280)]
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=ch, cross_attention_dim=768, attention_head_dim=8,
                norm_num_groups=min(32, ch[0] // 2),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def sdxl_config(scale: int = 1) -> dict:
    """SDXL's UNet: head size 64 at full width (attention_head_dim counts heads here)."""
    ch = [c // scale for c in (320, 640, 1280)]
    return dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=ch, cross_attention_dim=2048, transformer_layers_per_block=[1, 2, 10],
                attention_head_dim=[c // 64 for c in (320, 640, 1280)], use_linear_projection=True,
                norm_num_groups=min(32, ch[0] // 2),
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
