"""The adapter's projection networks as torch modules (CLIP vision features -> image tokens of the UNet's
cross width): linear (4 tokens), the Resampler (plus), the MLP (full face); ``projection.build_projection`` makes
the one a config describes. Module and parameter names follow the original tencent-ailab/IP-Adapter code so the
official ``image_proj`` state dicts load strictly. Torch only: no file, no host.
"""
