#!/usr/bin/env python3
"""How a folder of workflow files converts: one line per file, then the totals.

    python scripts/convert_survey.py FOLDER [--markdown]

For every ``*.json`` under FOLDER (recursively): whether it has nodes of ComfyUI_IPAdapter_plus (either
generation) or of the Flux IP-Adapter packs, and if so whether it converts fully (none of their nodes left, nothing
lost), partially (some stay, or a setting is lost; the ids that stay are named), not at all, or is refused (a
malformed file, with the reason). This is how docs/converting.md's counts for public workflows were made; it reads
only JSON and needs neither ComfyUI nor torch.
"""
from __future__ import annotations

import argparse
import collections
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ip_adapter_core.convert import ConversionError, convert  # noqa: E402
from scripts.convert_workflow import read_workflow  # noqa: E402


def survey(path: Path) -> tuple[str, str]:
    """(status, detail) of one file: no nodes / fully / partially / not at all / refused."""
    try:
        _, report = convert(read_workflow(path))
    except ConversionError as exc:
        return "refused", str(exc)[:160]
    if not report.converted and not report.kept:
        return "no nodes of theirs", ""
    if not report.converted:
        return "not at all", ", ".join(sorted({k["type"] for k in report.kept}))
    if report.complete:
        return "fully", f"{len(report.converted)} node(s)"
    stays = sorted({k["type"] for k in report.kept})
    lost = sum(len(c["lost"]) for c in report.converted)
    parts = ([f"stay: {', '.join(stays)}"] if stays else []) + ([f"{lost} setting(s) not kept"] if lost else []) \
        + ([f"{len(report.dropped)} link(s) dropped"] if report.dropped else [])
    return "partially", "; ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--markdown", action="store_true", help="a Markdown table instead of plain lines")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.ERROR)
    counts = collections.Counter()
    rows = []
    for path in sorted(args.folder.rglob("*.json")):
        status, detail = survey(path)
        counts[status] += 1
        rows.append((str(path.relative_to(args.folder)), status, detail))
    for name, status, detail in rows:
        print(f"| `{name}` | {status} | {detail} |" if args.markdown else f"{status:18} {name}  {detail}")
    print("; ".join(f"{status}: {n}" for status, n in counts.most_common()), f"(of {len(rows)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
