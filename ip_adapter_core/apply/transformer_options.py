"""The keys this extension puts in ComfyUI's ``transformer_options`` and among a model's wrappers.

ComfyUI hands ``transformer_options`` to every attention patch (as ``extra_options``); the patch
finds what a sampling run resolved and what the attention map records there. One place for the
names, so a writer and a reader cannot drift apart and no module imports another for a string.
"""

RUN_KEY = "ipadapter_run"                # run_state.RunState of the sampling run in progress
RECORD_KEY = "ipadapter_attention_map"   # attention_map.Recorder, only in the runs it makes
WRAPPER_KEY = "ipadapter"                # our OUTER_SAMPLE wrapper among the model's wrappers
TRAIN_TOKENS_KEY = "ipadapter_train_tokens"  # training: the batch's image tokens [B, T, C] (training/comfy_train.py)
FLUX_CALL_KEY = "ipadapter_flux_call"    # flux_patch.FluxCall: the Flux model being run and its latent's shape
SD3_CALL_KEY = "ipadapter_sd3_call"      # sd3_patch.SD3Call: the MMDiT being run, its timestep and image tokens
