"""The IP-Adapter engine, in rooms along the path of an image prompt (docs/architecture.md):

- ``files/``: reading and recognising files (safe formats, what an adapter file and a UNet are, layer
  tables, what each file in the model folders holds, loading, presets);
- ``prompt/``: building the image prompt (references, CLIP vision, tokens, combine, tiles, frames,
  λ per layer in blocks.py, λ over time in schedules.py);
- ``apply/``: applying it inside the model (the UNet patch, per-run state, attention maths, masks, the
  attention map);
- ``training/`` and ``convert/``; shared by all: ``networks/`` (the projection networks as torch modules),
  errors, input_bounds, host, package_info.

A module imports from its own room or an earlier one, never a later one (tests/test_architecture.py).
Modules that talk to ComfyUI import ``comfy`` inside their functions, so every module imports without it.
Nothing is re-exported here: import a module by its path.
"""
