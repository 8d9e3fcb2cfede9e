"""Reading and recognising files: safe formats, what an adapter file and a UNet are, the layer tables, what
each file in the model folders holds, adapters loaded as ComfyUI models, and presets. See docs/architecture.md."""
