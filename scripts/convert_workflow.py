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
something was not converted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ip_adapter_core.convert import FAMILIES, ConversionError, convert  # noqa: E402


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
    try:
        workflow = json.loads(args.input.read_text(encoding="utf-8"))
        converted, report = convert(workflow, family=args.family)
    except (OSError, json.JSONDecodeError, ConversionError) as exc:
        print(f"{args.input}: {exc}", file=sys.stderr)
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
