"""Building the image prompt: references, CLIP vision encoding, projection to tokens, combining, tiles,
frames, and λ per layer (blocks) and over time (schedules). See docs/architecture.md."""
