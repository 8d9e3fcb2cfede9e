#!/usr/bin/env python3
"""Convert a ComfyUI_IPAdapter_plus workflow to this extension's nodes.

    python scripts/convert_workflow.py their_workflow.json converted.json
    python scripts/convert_workflow.py prompt_api.json converted_api.json --family sdxl

Both workflow formats are read (the editor's UI format and the API format) and written back in the
same format. Nodes of other packs, notes, groups and positions stay as they are. The report printed
is the one the editor shows: what each node became, what differs and what could not be converted.
``--family`` says SD1.5 or SDXL where the checkpoint names do not (only IPAdapter Mad Scientist's
layer_weights need it). Needs no ComfyUI and no torch. Exit status 0 when the file was written
(also when some nodes could not be converted), 1 on an unreadable input, 2 with ``--strict`` when
something was not converted. The editor's route has the same bounds (ip_adapter_core/convert/limits.py):
a file over MAX_BYTES is refused before it is read, a workflow over MAX_NODES nodes, or malformed, or
whose links loop, with the reason.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ip_adapter_core.convert import FAMILIES, ConversionError, convert  # noqa: E402
from ip_adapter_core.convert.limits import MAX_BYTES  # noqa: E402

log = logging.getLogger("ipadapter.convert")


def read_workflow(path: Path):
    """The file's JSON, refused before it is read when it is over MAX_BYTES."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConversionError(f"the file has {size:,} bytes; at most {MAX_BYTES:,} are converted "
                              "(ip_adapter_core/convert/limits.py MAX_BYTES)")
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)     # the file may have grown since stat
    if len(data) > MAX_BYTES:
        raise ConversionError(f"the file has more than {MAX_BYTES:,} bytes, the most that is converted")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:   # RecursionError: arrays nested a thousand deep
        raise ConversionError(f"not a JSON workflow: {exc}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="a workflow .json that uses ComfyUI_IPAdapter_plus nodes")
    p.add_argument("output", type=Path, help="where to write the converted workflow")
    p.add_argument("--family", choices=FAMILIES, default="auto",
                   help="sd15 or sdxl; auto reads it from the checkpoint and adapter names (default)")
    p.add_argument("--report", type=Path, help="also write the report as JSON to this file")
    p.add_argument("--strict", action="store_true", help="exit 2 if anything could not be converted")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    try:
        converted, report = convert(read_workflow(args.input), family=args.family)
    except (OSError, ConversionError) as exc:
        log.error("%s: %s", args.input, exc)
        return 1
    args.output.write_text(json.dumps(converted, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.report:
        args.report.write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n",
                               encoding="utf-8")
    print(report.text())
    print(f"Written: {args.output}")
    return 2 if args.strict and not report.complete else 0


if __name__ == "__main__":
    sys.exit(main())
