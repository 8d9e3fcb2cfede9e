"""Saving and loading image prompts as safetensors (never pickles: loading runs no code).

A loaded file is checked as strictly as a loaded adapter: the tokens go straight into
every attention layer, so a wrong width or count must fail here, naming the file,
and not deep inside sampling.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import safetensors.torch

from ..errors import IPAdapterError
from ..files.config import (
    ARCFACE,
    ENCODERS,
    FACE_EMBEDDING,
    FACE_EMBEDDING_DIM,
    FACE_KINDS,
    FACEID_PLUS,
    FAMILY_BY_CROSS_DIM,
    FAMILY_NAMES,
    FEATURES,
    FLUX,
    IMAGE_EMBEDS,
    INSTANTX,
    KOLORS,
    PENULTIMATE,
    SD3,
    POOLED,
    PORTRAIT_UNNORM,
    PROJECTIONS,
    SIGLIP,
    UNCOND_ENCODE_BLACK_IMAGE,
    UNCOND_PROJECT_ZEROS,
    UNCONDS,
    VIT_L,
    XLABS,
    AdapterConfig,
    ResamplerConfig,
)
from .embeds import ImagePrompt

EXTENSION = ".ipaembeds"
FORMAT = "ipadapter-embeds/1"
REMAKE = "Re-create the file with the IP-Adapter Save Embeds node."

# Allowed values of the config's text fields; the numeric fields are checked for type.
CHOICES = {"family": tuple(FAMILY_NAMES), "projection": PROJECTIONS, "encoder": (*ENCODERS, ARCFACE),
           "feature": (*FEATURES, FACE_EMBEDDING), "uncond": UNCONDS, "face": ("", *FACE_KINDS)}


def save_prompt(prompt: ImagePrompt, path) -> Path:
    """Write the tokens and the adapter config; weighting is not saved (re-apply IPAWeight)."""
    path = Path(path)
    meta = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(prompt.config)),
            "adapter": Path(prompt.adapter_path).name}
    tensors = {"positive": prompt.positive.contiguous().cpu(), "negative": prompt.negative.contiguous().cpu()}
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
    return path


def load_prompt(path) -> ImagePrompt:
    """Read a file written by save_prompt; refuse anything that is not exactly that."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise IPAdapterError(f"embeds file '{path}': not a readable safetensors file ({e}). "
                             "Save embeds with the IP-Adapter Save Embeds node.") from e
    if meta.get("format") != FORMAT or set(tensors) != {"positive", "negative"}:
        raise IPAdapterError(f"embeds file '{path}': expected format {FORMAT} with 'positive' and "
                             f"'negative' tensors; found format {meta.get('format')!r} and {sorted(tensors)}. "
                             "Save embeds with the IP-Adapter Save Embeds node.")
    config = parse_config(meta.get("config"), path)
    _check_tokens(tensors, config, path)
    return ImagePrompt(tensors["positive"], tensors["negative"], config, adapter_path="")


def fingerprint(path) -> str:
    """A hash of the file's bytes: changes whenever the content does (embeds files are a few MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _refuse(path, problem: str):
    raise IPAdapterError(f"embeds file '{path}': {problem} {REMAKE}")


def _check_tokens(tensors, config: AdapterConfig, path) -> None:
    lengths = {}
    # SD3.5's prompts carry the encoder's states (its tokens are made per step), the others their tokens
    width = config.feature_dim if config.timed else config.cross_dim
    for name in ("positive", "negative"):
        t = tensors[name]
        if t.ndim != 3 or t.shape[0] < 1 or t.shape[2] != width:
            _refuse(path, f"'{name}' must be shaped [frames, tokens, {width}] (frames 1, or one "
                          f"per frame; {width} the width its {config.name} adapter reads); found {list(t.shape)}.")
        if not t.is_floating_point():
            _refuse(path, f"'{name}' must hold floating-point tokens; found {t.dtype}.")
        lengths[name] = t.shape[1]
    if tensors["positive"].shape[0] != tensors["negative"].shape[0]:
        _refuse(path, f"'positive' holds {tensors['positive'].shape[0]} frames but 'negative' "
                      f"{tensors['negative'].shape[0]}; they must match.")
    tokens = lengths["positive"]
    if tokens != lengths["negative"]:
        _refuse(path, f"'positive' has {tokens} tokens but 'negative' has {lengths['negative']}; they must match.")
    if tokens <= 0 or (tokens % config.num_tokens and not config.timed):
        _refuse(path, f"holds {tokens} tokens; its adapter makes {config.num_tokens} per image, so the "
                      "count must be a positive multiple of that.")


def parse_config(text, path) -> AdapterConfig:
    """The AdapterConfig stored as JSON in a file's metadata: exactly its fields, right types."""
    try:
        raw = json.loads(text) if isinstance(text, str) else None
    except ValueError as e:
        _refuse(path, f"its 'config' metadata is not JSON ({e}).")
    if not isinstance(raw, dict):
        _refuse(path, f"expected a JSON object in the 'config' metadata; found {text!r:.80}.")
    # fields added after files were first written get their default (files of SD1.5 / SDXL adapters)
    raw = {**ADDED_FIELDS, **raw}
    values = _fields(raw, AdapterConfig, path, "config")
    for field, allowed in CHOICES.items():
        if values[field] not in allowed:
            _refuse(path, f"config field '{field}' must be one of {list(allowed)}; found {values[field]!r}.")
    values["layer_hidden"] = tuple(values["layer_hidden"])
    res = values["resampler"]
    if res is not None:
        res = ResamplerConfig(**_fields({**ADDED_RESAMPLER_FIELDS, **res}, ResamplerConfig, path, "config.resampler"))
    values["resampler"] = res
    config = AdapterConfig(**values)
    _check_consistent(config, path)
    return config


def _fields(raw: dict, cls, path, where: str) -> dict:
    """``raw`` with exactly the dataclass's fields, each of the kind FIELD_KINDS names."""
    names = [f.name for f in dataclasses.fields(cls)]
    missing, extra = [n for n in names if n not in raw], sorted(set(raw) - set(names))
    if missing or extra:
        _refuse(path, f"{where} must have exactly the fields {names}; missing {missing}, unknown {extra}.")
    for name in names:
        ok, kind = FIELD_KINDS[cls, name]
        if not ok(raw[name]):
            _refuse(path, f"{where} field '{name}' must be {kind}; found {raw[name]!r:.80}.")
    return dict(raw)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0  # JSON true is not a width


# Written out rather than read from the dataclass annotations: those are postponed
# (strings), and four kinds of field do not justify evaluating them.
_INT = (_positive_int, "a positive integer")
_NON_NEGATIVE = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer")
_STR = (lambda v: isinstance(v, str), "a string")
FIELD_KINDS = {  # (dataclass, field) -> (check, description)
    **{(AdapterConfig, n): _STR for n in ("family", "projection", "encoder", "feature", "uncond")},
    **{(AdapterConfig, n): _INT for n in ("num_tokens", "feature_dim", "cross_dim")},
    (AdapterConfig, "layer_hidden"): (lambda v: isinstance(v, list) and bool(v) and all(map(_positive_int, v)),
                                      "a non-empty list of positive integers"),
    (AdapterConfig, "resampler"): (lambda v: v is None or isinstance(v, dict), "null or an object"),
    (AdapterConfig, "face"): _STR,
    (AdapterConfig, "lora_rank"): (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                                   "a non-negative integer"),
    **{(ResamplerConfig, f.name): _INT for f in dataclasses.fields(ResamplerConfig)},
    (AdapterConfig, "flux_kind"): (lambda v: v in ("", XLABS, INSTANTX), f"'', '{XLABS}' or '{INSTANTX}'"),
    (AdapterConfig, "single_blocks"): _NON_NEGATIVE,
    (AdapterConfig, "base"): (lambda v: v in ("", KOLORS), f"'' or '{KOLORS}'"),
    (AdapterConfig, "text_proj"): _NON_NEGATIVE,
    (ResamplerConfig, "time_dim"): _NON_NEGATIVE,
}
# absent from files written before them: Flux's, Kolors' and SD3.5's fields
ADDED_FIELDS = {"flux_kind": "", "single_blocks": 0, "base": "", "text_proj": 0}
ADDED_RESAMPLER_FIELDS = {"time_dim": 0}


def _check_consistent(config: AdapterConfig, path) -> None:
    """Fields that the loader derives from one another must still agree."""
    if config.family == FLUX:
        want = {XLABS: ("linear", VIT_L, IMAGE_EMBEDS, UNCOND_ENCODE_BLACK_IMAGE, 0),
                INSTANTX: ("mlp-tokens", SIGLIP, POOLED, UNCOND_PROJECT_ZEROS, 2 * len(config.layer_hidden) // 3)}
        have = (config.projection, config.encoder, config.feature, config.uncond, config.single_blocks)
        if want.get(config.flux_kind) != have or config.resampler is not None or config.face \
                or config.feature_dim != ENCODERS[config.encoder].get(config.feature):
            _refuse(path, f"config says family 'flux' but is not the config of an XLabs or InstantX Flux adapter "
                          f"({config}).")
        return
    if config.family == SD3:
        r = config.resampler
        if (config.projection, config.encoder, config.feature, config.uncond) != \
                ("time-resampler", SIGLIP, PENULTIMATE, UNCOND_PROJECT_ZEROS) or r is None or not r.time_dim \
                or config.feature_dim != ENCODERS[SIGLIP][PENULTIMATE] or config.face or config.base:
            _refuse(path, f"config says family 'sd3' but is not the config of InstantX's SD3.5 adapter ({config}).")
        return
    if config.timed or (config.resampler is not None and config.resampler.time_dim):
        _refuse(path, f"config has a time-conditioned projection, which only SD3.5 adapters have, but family "
                      f"{config.family!r}.")
    if config.text_proj and (config.base, config.face, config.text_proj, config.family) != \
            (KOLORS, FACEID_PLUS, 2048, "sdxl"):
        _refuse(path, f"config has a text projection, which only Kolors FaceID Plus has ({config}).")
    if config.flux_kind or config.single_blocks:
        _refuse(path, "config names a Flux adapter kind or single blocks, which only Flux adapters have, but family "
                      f"{config.family!r}.")
    if FAMILY_BY_CROSS_DIM.get(config.text_proj or config.cross_dim) != config.family:
        _refuse(path, f"config says family {config.family!r} but cross_dim {config.cross_dim}; "
                      f"expected {dict((f, d) for d, f in FAMILY_BY_CROSS_DIM.items())}.")
    if config.face:
        _check_face(config, path)
        return
    if config.encoder not in ENCODERS or config.feature not in ENCODERS[config.encoder]:
        _refuse(path, f"config says encoder {config.encoder!r} and feature {config.feature!r}, which only FaceID "
                      "adapters read, but its 'face' field is empty.")
    if config.feature_dim != ENCODERS[config.encoder][config.feature]:
        _refuse(path, f"config says {config.encoder} {config.feature} of width {config.feature_dim}; "
                      f"that encoder gives width {ENCODERS[config.encoder][config.feature]}.")
    if (config.resampler is None) != (config.projection != "resampler"):
        _refuse(path, f"config has projection {config.projection!r} and resampler "
                      f"{'null' if config.resampler is None else 'settings'}; a resampler config "
                      "belongs exactly to the 'resampler' projection.")


def _check_face(config: AdapterConfig, path) -> None:
    """A FaceID config: the face embedding, and a resampler exactly where the kind has one."""
    if (config.feature, config.feature_dim) != (FACE_EMBEDDING, FACE_EMBEDDING_DIM):
        _refuse(path, f"config is a FaceID one ({config.face}) but reads {config.feature} of width "
                      f"{config.feature_dim}; FaceID reads the {FACE_EMBEDDING_DIM}-wide {FACE_EMBEDDING}.")
    wants_resampler = config.face in (FACEID_PLUS, PORTRAIT_UNNORM)
    if (config.resampler is not None) != wants_resampler:
        _refuse(path, f"config of kind {config.face} has {'no ' if config.resampler is None else ''}resampler "
                      "settings; only FaceID Plus and portrait-unnorm have them.")
