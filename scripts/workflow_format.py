"""ComfyUI workflow files: the editor's UI format and the API format that ``POST /prompt`` runs.

The UI format (what the editor saves and people share) lists ``nodes`` with *positional*
``widgets_values`` and ``links`` between output and input slots. The API format is
``{node_id: {"class_type": ..., "inputs": {name: value or [source_id, output_index]}}}``.
The server does not convert one into the other; the editor does it in the browser. This module
does the same conversion from a node catalogue (the server's ``GET /object_info``), following
the editor's rules for which inputs are widgets and which extra widgets it adds:

- a widget is an input of type INT, FLOAT, STRING, BOOLEAN or a combo (a list of values or
  ``COMBO``) without ``forceInput``; widgets are stored in the node definition's input order
  (``input_order``: required, then optional);
- after a widget whose options say ``control_after_generate`` (for INT inputs also when the
  input is named ``seed`` or ``noise_seed`` and the option is absent), the editor stores one more
  value: the "control after generate" mode (fixed / increment / decrement / randomize);
- a node with an image/video upload combo gets an ``upload`` button widget after its required
  inputs, which stores one more value;
- a widget converted to an input and linked takes the link, not its stored value;
- ``PrimitiveNode`` feeds its value into the widgets it is linked to, ``Reroute`` passes links
  through, notes have no effect, muted nodes (mode 2) are left out, bypassed nodes (mode 4)
  pass the input of the same type through.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
VIRTUAL_NODES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
MUTED, BYPASSED = 2, 4
CONTROL = "control_after_generate"  # placeholder name of the editor's extra widget
UPLOAD = "upload"
log = logging.getLogger("ipadapter.workflow")


class WorkflowError(ValueError):
    """A workflow that cannot be converted or run, with a message naming the node at fault."""


def is_ui_format(workflow) -> bool:
    return isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow


def is_api_format(workflow) -> bool:
    return isinstance(workflow, dict) and bool(workflow) and all(
        isinstance(v, dict) and "class_type" in v for v in workflow.values())


def load(path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not (is_ui_format(data) or is_api_format(data)):
        raise WorkflowError(f"{path}: neither a UI-format workflow (nodes, links) nor an API-format "
                            "prompt ({id: {class_type, inputs}})")
    return data


def ordered_inputs(spec: dict) -> list[tuple[str, str, list]]:
    """(section, name, config) for every input of a node definition, in the editor's order."""
    inputs = spec.get("input", {})
    order = spec.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        entries = inputs.get(section) or {}
        names = order.get(section) or list(entries)
        out += [(section, name, entries[name]) for name in names if name in entries]
    return out


def is_widget(config) -> bool:
    kind = config[0]
    opts = config[1] if len(config) > 1 and isinstance(config[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput", False)


def widget_slots(spec: dict) -> list[str]:
    """Names of the values in a node's ``widgets_values``, in order; extra editor-only widgets
    appear as CONTROL or UPLOAD. The editor appends the upload button to the required inputs;
    with an ``input_order`` (which lacks it) it sorts it after every listed input."""
    slots, upload, required_end = [], False, None
    for section, name, config in ordered_inputs(spec):
        if section == "optional" and required_end is None:
            required_end = len(slots)
        if not is_widget(config):
            continue
        kind = "COMBO" if isinstance(config[0], list) else config[0]
        opts = config[1] if len(config) > 1 and isinstance(config[1], dict) else {}
        slots.append(name)
        control = opts.get("control_after_generate")
        if control is None and kind == "INT":
            control = name in SEED_NAMES
        if control and kind in ("INT", "FLOAT", "COMBO"):
            slots.append(CONTROL)
        upload = upload or (section == "required" and kind == "COMBO" and any(opts.get(o) for o in UPLOAD_OPTIONS))
    if upload:
        at = len(slots) if spec.get("input_order") or required_end is None else required_end
        slots.insert(at, UPLOAD)
    return slots


def _links(workflow: dict) -> dict:
    """link id -> (origin node id, origin slot); both the list and the object link forms."""
    out = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            out[link[0]] = (link[1], link[2])
    return out


def _default(spec: dict, name: str):
    for section in ("required", "optional"):
        config = (spec.get("input", {}).get(section) or {}).get(name)
        if config is not None:
            opts = config[1] if len(config) > 1 and isinstance(config[1], dict) else {}
            options = config[0] if isinstance(config[0], list) else opts.get("options") or [None]
            return opts.get("default", options[0] if options else None)
    return None


def ui_to_api(workflow: dict, object_info: dict, warn=log.warning) -> dict:
    """Convert a UI-format workflow to the API format, using the server's node catalogue.
    ``warn`` receives messages about widget values that do not fit the installed nodes."""
    if is_api_format(workflow):
        return workflow
    if not is_ui_format(workflow):
        raise WorkflowError("not a UI-format workflow (no 'nodes' and 'links')")
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported here: unpack them in the editor")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = _links(workflow)

    def source(link_id, seen=()):
        """[node id, slot] or ("value", v) for what feeds a link, through virtual/bypassed nodes."""
        if link_id in seen or link_id not in links:
            return None
        node_id, slot = links[link_id]
        node = nodes.get(node_id)
        if node is None:
            raise WorkflowError(f"link {link_id} comes from node {node_id}, which is not in the workflow")
        seen = seen + (link_id,)
        if node["type"] == "Reroute":
            ins = node.get("inputs") or []
            return source(ins[0].get("link"), seen) if ins else None
        if node["type"] == "PrimitiveNode":
            values = node.get("widgets_values") or [None]
            return ("value", values[0])
        if node.get("mode", 0) == MUTED:
            return None
        if node.get("mode", 0) == BYPASSED:
            kind = (node.get("outputs") or [{}] * (slot + 1))[slot].get("type")
            ins = node.get("inputs") or []
            same = [i for i in ins if i.get("type") == kind and i.get("link") is not None]
            pick = next((i for n, i in enumerate(ins) if n == slot and i in same), same[0] if same else None)
            return source(pick["link"], seen) if pick else None
        return [str(node_id), slot]

    api = {}
    for node_id in sorted(nodes, key=lambda i: (isinstance(i, str), i)):
        node = nodes[node_id]
        kind = node["type"]
        if kind in VIRTUAL_NODES or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        spec = object_info.get(kind)
        if spec is None:
            raise WorkflowError(f"node {node_id} is a '{kind}', which this ComfyUI does not have: install "
                                "the custom node that provides it (or check that this extension loaded)")
        inputs = {}
        values = node.get("widgets_values")
        slots = widget_slots(spec)
        if isinstance(values, dict):
            inputs.update({k: v for k, v in values.items() if k in slots})
        elif values is not None:
            if len(values) != len(slots):
                # The editor fills widgets positionally: extra values (display-only widgets) are
                # ignored, missing trailing ones keep their defaults. Say so: it often means the
                # node changed since the workflow was saved.
                warn(f"node {node_id} ({kind}) stores {len(values)} widget values, this ComfyUI's {kind} "
                     f"has {len(slots)} widgets ({', '.join(slots)}); "
                     + ("extra values ignored" if len(values) > len(slots) else "missing ones get defaults"))
            inputs.update({k: v for k, v in zip(slots, values) if k not in (CONTROL, UPLOAD)})
            for name in slots[len(values):]:
                default = _default(spec, name)
                if name not in (CONTROL, UPLOAD) and default is not None:
                    inputs[name] = default
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            name = (slot.get("widget") or {}).get("name", slot["name"])
            src = source(slot["link"])
            if src is None:
                inputs.pop(name, None)
            elif isinstance(src, tuple):
                inputs[name] = src[1]
            else:
                inputs[name] = src
        title = node.get("title") or spec.get("display_name") or kind
        api[str(node_id)] = {"inputs": inputs, "class_type": kind, "_meta": {"title": title}}
    _drop_dangling(api)
    return api


def _drop_dangling(api: dict) -> None:
    """Links to nodes that were left out (muted) disappear, as in the editor's export."""
    for node in api.values():
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in api:
                del node["inputs"][name]


def graph(api: dict) -> dict:
    """An API prompt reduced to what executes (class types and inputs), for comparisons."""
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def write(path, data) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
